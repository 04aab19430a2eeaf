"""Suite: shifted evaluation sets built once per study from a fixed seed, cached on disk, reused as they are."""

from __future__ import annotations

import dataclasses

import pytest

import torch

from harness import config, data as datamod, shifts, suite, target

from conftest import TINY
from test_target import _contrast5


def _setup(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    cfg = config.load(str(tmp_path / "tiny.toml"))
    return cfg, datamod.load(cfg.data, cfg.study.seed)


def _named(sets) -> dict:
    return {e.name: e for e in sets}


def _sev(e: suite.EvalSet, severity: int) -> torch.Tensor:
    return e.images[e.steps.index(severity)]


def test_built_once_then_read_back_identical(tmp_path):
    """The first build writes one cache file; the second reads it (cached=True) and every tensor is identical; no
    temporary file is left behind (written under another name, then renamed)."""
    cfg, data = _setup(tmp_path)
    a, info_a = suite.build(cfg.shifts, data, tmp_path / "cache")
    b, info_b = suite.build(cfg.shifts, data, tmp_path / "cache")
    assert (info_a["cached"], info_b["cached"]) == (False, True) and info_a["key"] == info_b["key"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"shifts-{info_a['key']}.safetensors"]
    assert info_a["n_sets"] == (len(cfg.shifts.selection) + len(cfg.shifts.test)) * len(cfg.shifts.severities)
    for part in ("selection", "test"):
        for e in getattr(a, part):
            assert all(torch.equal(x, _sev(_named(getattr(b, part))[e.name], s)) for s, x in e.at())
    ls_a, ls_b = _named(a.test)["label_shift"], _named(b.test)["label_shift"]
    assert all(torch.equal(x, y) for x, y in zip((ls_a.images[0], ls_a.labels), (ls_b.images[0], ls_b.labels)))


def test_sets_are_the_seeded_shift_of_a_stratified_subset(tmp_path):
    """Each shifted test set is shifts.apply on a class-balanced subset of eval_images test images, with the
    subset's labels; the severity is the one asked for (a different severity gives different images)."""
    cfg, data = _setup(tmp_path)
    sh = dataclasses.replace(cfg.shifts, eval_images=50)
    s, _ = suite.build(sh, data, None)
    y = s.clean_test.labels
    assert len(y) == 50 and torch.bincount(y).min() >= 50 // len(data["classes"]) - 1
    clean = s.clean_test.images
    for i, name in enumerate(sh.test):
        for sev in sh.severities:
            want = torch.floor(shifts.apply(name, clean, sev, sh.seed + 1000 * i + sev) * 255).to(torch.uint8)
            assert torch.equal(_sev(_named(s.test)[name], sev), want)  # held as uint8 by truncation (issue 26)
    noise = _named(s.test)["gaussian_noise"]
    assert not torch.equal(_sev(noise, 1), _sev(noise, 3))


def test_cache_key_follows_config_and_data(tmp_path):
    """A different severity list, seed or data key is a different cache entry; the same inputs the same key."""
    cfg, data = _setup(tmp_path)
    key = suite.cache_key(cfg.shifts, data["key"])
    assert suite.cache_key(cfg.shifts, data["key"]) == key
    assert suite.cache_key(dataclasses.replace(cfg.shifts, severities=[1, 2]), data["key"]) != key
    assert suite.cache_key(dataclasses.replace(cfg.shifts, seed=7), data["key"]) != key
    assert suite.cache_key(cfg.shifts, data["key"] + "x") != key


def test_cache_holds_index_keys_and_loads_back_every_field(tmp_path):
    """The cache file holds its tensors under index keys ("0", "1", ...) and describes each set in its header; what
    suite.save wrote, suite.load gives back equal field by field (names, families, kinds, severities, provenance,
    every tensor), in the built order, with the subset's labels one tensor shared by its sets as they were built."""
    from safetensors import safe_open

    cfg, data = _setup(tmp_path)
    d = dataclasses.replace(cfg.data, task="parity", holdout_classes=[9], target_shift=["fog:2"])
    domain = target.target_domain(d, datamod.load(d, cfg.study.seed), 0, None)
    write_c10c(tmp_path / "c10c", per=10, classes=2)
    sh = dataclasses.replace(cfg.shifts, test=["gaussian_noise", "contrast"], files=str(tmp_path / "c10c"))
    built, info = suite.build(sh, domain, tmp_path / "cache")
    path = tmp_path / "cache" / f"shifts-{info['key']}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys, header = set(f.keys()), f.metadata()
    assert keys == {str(i) for i in range(len(keys))}  # no name in a key: nothing to parse back
    assert "gaussian_noise" in header["meta"] and "c10c.frost" in header["meta"]
    loaded = suite.load(path)
    assert [e.name for e in loaded.test] == [e.name for e in built.test] == \
        ["gaussian_noise", "contrast", "c10c.frost", "c10c.gaussian_noise", "clean", "label_shift", "subpopulation"]
    for a, b in zip(built.selection + built.test, loaded.selection + loaded.test):
        assert (a.name, a.family, a.kind, a.severities, a.provenance) == (b.name, b.family, b.kind, b.severities,
                                                                           b.provenance)
        assert len(a.images) == len(b.images) and all(torch.equal(x, y) for x, y in zip(a.images, b.images))
        assert torch.equal(a.labels, b.labels) and (a.prior is None) == (b.prior is None)
        assert a.prior is None or torch.equal(a.prior, b.prior)
    for a, b in ((built.clean_selection, loaded.clean_selection), (built.clean_test, loaded.clean_test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert all(e.labels is loaded.clean_test.labels for e in loaded.test if e.paired)
    kinds = {e.name: (e.kind, e.family, e.paired) for e in loaded.test}
    assert kinds["label_shift"] == ("set", "label", False) and kinds["subpopulation"] == ("set", "subpopulation", False)
    assert kinds["clean"] == ("domain", "clean", False) and kinds["contrast"] == ("severity", "digital", True)
    assert kinds["c10c.frost"] == ("severity", "weather", False)
    assert _named(loaded.test)["label_shift"].provenance.prior == f"dirichlet(alpha={sh.label_alpha})"
    assert _named(loaded.test)["c10c.frost"].provenance.source == str(tmp_path / "c10c")
    assert info["n_sets"] == (1 + 2 + 2) * len(sh.severities)


def test_unknown_family_or_kind_is_an_error():
    """A set's family must be a registry shift's or one of suite.FAMILIES, and its kind the one that family has: an
    undeclared family is never taken for another (the old suite called every unknown set 'subpopulation')."""
    x, y = torch.zeros(4, 3, 2, 2), torch.zeros(4, dtype=torch.long)
    prov = suite.Provenance("test", 0)
    assert suite.EvalSet("s", "subpopulation", "set", (), (x,), y, prov).steps == (1,)
    with pytest.raises(ValueError, match="unknown evaluation-set family 'holdout'"):
        suite.EvalSet("s", "holdout", "set", (), (x,), y, prov)
    with pytest.raises(ValueError, match="unknown kind 'sets'"):
        suite.EvalSet("s", "subpopulation", "sets", (), (x,), y, prov)
    with pytest.raises(ValueError, match="family 'noise' is of kind 'severity', not 'set'"):
        suite.EvalSet("s", "noise", "set", (), (x,), y, prov)
    with pytest.raises(ValueError, match="2 image sets"):
        suite.EvalSet("s", "noise", "severity", (1,), (x, x), y, prov)
    with pytest.raises(ValueError, match="labels"):
        suite.EvalSet("s", "noise", "severity", (1,), (x[:3],), y, prov)
    assert set(suite.FAMILIES.values()) <= set(suite.KINDS)


# ------------------------------------------------------------------------------------------ a shifted target domain


def test_target_domain_suite_tests_on_clean_and_other_shifts(tmp_path):
    """With a target domain the clean test subset is an OOD test set ('clean', family clean), and the other test
    shifts act on the clean images, not on the target domain's."""
    cfg, data = _setup(tmp_path)
    d = dataclasses.replace(cfg.data, target_shift=["gaussian_noise:5"])
    domain = target.target_domain(d, data, 0, None)
    sh = dataclasses.replace(cfg.shifts, test=["contrast"], severities=[5])
    s, _ = suite.build(sh, domain, tmp_path / "cache")  # written to the cache and read back
    s, _ = suite.build(sh, domain, tmp_path / "cache")
    clean_set = _named(s.test)["clean"]
    clean_x, clean_y = clean_set.images[0], clean_set.labels
    assert clean_set.family == "clean" and torch.equal(clean_y, s.clean_test.labels)
    assert torch.equal(_sev(_named(s.test)["contrast"], 5), torch.floor(_contrast5(clean_x) * 255).to(torch.uint8))
    assert torch.equal(clean_x, s.clean_test.images)  # the subset the shifted sets are made from
    rows = data["test"][0].flatten(1)
    assert all((rows == img.flatten()).all(1).any() for img in clean_x)  # clean target-task test images


# ------------------------------------------------------------------------------- real corruption files (CIFAR-10-C)


def write_c10c(folder, names=("gaussian_noise", "frost"), per=4, classes=5, size=16):
    """A tiny CIFAR-10-C layout: <name>.npy of 5 severities x `per` uint8 HxWx3 images (severity-major; pixel value
    = 40 * severity + 10 * file index, so each set says where it came from) and labels.npy (5 repeats of one
    block)."""
    import numpy as np

    folder.mkdir()
    block = np.arange(per) % classes
    np.save(folder / "labels.npy", np.tile(block, 5).astype(np.uint8))
    for i, name in enumerate(names):
        arr = np.zeros((5 * per, size, size, 3), dtype=np.uint8)
        for s in range(5):
            arr[s * per:(s + 1) * per] = 40 * (s + 1) + 10 * i
        np.save(folder / f"{name}.npy", arr)
    return block


def test_corruption_files_are_read_with_their_labels(tmp_path):
    """shifts.files: each <name>.npy becomes the test shift c10c.<name>, each requested severity its block of the
    file (severity-major), with labels.npy's labels; eval_images picks a class-stratified subset, the same rows at
    every severity."""
    cfg, data = _setup(tmp_path)
    block = write_c10c(tmp_path / "c10c", per=10)
    sh = dataclasses.replace(cfg.shifts, test=[], files=str(tmp_path / "c10c"), severities=[1, 3, 5], eval_images=0)
    s, info = suite.build(sh, data, tmp_path / "cache")
    files = _named(e for e in s.test if e.provenance.source)
    assert set(files) == {"c10c.gaussian_noise", "c10c.frost"} and files["c10c.frost"].family == "weather"
    for i, name in enumerate(("gaussian_noise", "frost")):
        for sev in (1, 3, 5):
            x, y = _sev(files[f"c10c.{name}"], sev), files[f"c10c.{name}"].labels
            assert x.shape == (10, 3, 16, 16) and x.dtype == torch.uint8  # the file's bytes, held as they are
            assert torch.equal(x, torch.full_like(x, 40 * sev + 10 * i))
            assert torch.equal(y, torch.as_tensor(block, dtype=torch.long))
    assert info["n_sets"] == (len(cfg.shifts.selection)) * 3 + 2 * 3
    cached, _ = suite.build(sh, data, tmp_path / "cache")
    assert torch.equal(_sev(_named(cached.test)["c10c.frost"], 5), _sev(files["c10c.frost"], 5))
    half = dataclasses.replace(sh, eval_images=5)
    t, _ = suite.build(half, data, None)
    frost = _named(t.test)["c10c.frost"]
    assert frost.severities == (1, 3, 5) and len(frost.images) == 3
    y1 = y5 = frost.labels  # one label vector for every severity (read_files checks labels.npy agrees at each)
    assert len(y1) == 5 and torch.equal(y1, y5) and torch.bincount(y1, minlength=5).tolist() == [1] * 5


def test_corruption_files_are_evaluated_like_shifts(tmp_path):
    """test_metrics gives each file set per-severity accuracy against labels.npy's labels (not the test split's),
    averaged into files/acc_mean, never into ood_acc_mean or a family mean; with no clean counterpart of their images
    there is no clean subset and so no drop."""
    from harness import trial

    cfg, data = _setup(tmp_path)
    write_c10c(tmp_path / "c10c", per=10)
    sh = dataclasses.replace(cfg.shifts, test=[], files=str(tmp_path / "c10c"), severities=[2], eval_images=0)
    s, _ = suite.build(sh, data, None)

    class Oracle(torch.nn.Module):  # always class 0: right exactly where labels.npy says 0
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.zeros(len(x), dtype=torch.long), 5).float()

    final, curves, _ = trial.test_metrics(Oracle(), s, data, 8, torch.device("cpu"))
    # labels 0..4 twice: predicting class 0 everywhere is right on 2 of 10
    assert curves["c10c.frost"][2]["acc"] == pytest.approx(0.2) and curves["c10c.gaussian_noise"][2]["acc"] == pytest.approx(0.2)
    assert final["files/acc_mean"] == final["files/acc_worst"] == pytest.approx(0.2)
    assert not {"ood_acc_mean", "ood_acc_worst", "ood_acc/weather", "clean_subset_acc"} & set(final)


def test_corruption_files_config_is_checked(tmp_path):
    """A folder without labels.npy is bad input naming shifts.files."""
    import pytest as _pytest

    with _pytest.raises(config.ConfigError) as err:
        config.load(None, [f'shifts.files="{tmp_path}"'])
    assert err.value.key == "shifts.files"


def test_held_out_severity_shifts_are_the_clean_subset_row_for_row(tmp_path):
    """With a target domain, label shift, a subpopulation set and shifts.files all present, Suite.shifted (what
    ood_acc_mean, the family means, the drops and correct.json average) is exactly the configured test shifts, each
    severity shifts.apply of the clean test subset with its labels; the files are Suite.files; the label-shift,
    subpopulation and clean sets are neither. A paired set whose rows are not its subset's is refused."""
    cfg, data = _setup(tmp_path)
    d = dataclasses.replace(cfg.data, task="parity", holdout_classes=[9], target_shift=["gaussian_noise:5"])
    domain = target.target_domain(d, datamod.load(d, cfg.study.seed), 0, None)
    write_c10c(tmp_path / "c10c", per=10, classes=2)  # parity: 2 classes
    sh = dataclasses.replace(cfg.shifts, test=["contrast", "impulse_noise"], files=str(tmp_path / "c10c"),
                             eval_images=20)
    s, _ = suite.build(sh, domain, None)
    assert [e.name for e in s.shifted] == ["contrast", "impulse_noise"]
    assert [e.name for e in s.files] == ["c10c.frost", "c10c.gaussian_noise"]
    assert {e.name for e in s.test} - {e.name for e in s.shifted + s.files} == {"clean", "label_shift", "subpopulation"}
    for i, name in enumerate(sh.test):
        e = _named(s.test)[name]
        assert torch.equal(e.labels, s.clean_test.labels)
        for sev in sh.severities:
            want = shifts.apply(name, s.clean_test.images, sev, sh.seed + 1000 * i + sev)
            assert torch.equal(_sev(e, sev), torch.floor(want * 255).to(torch.uint8))  # uint8 at rest
    rows = domain["clean_test"][0].flatten(1)  # the clean subset is clean test images (not the target domain's)
    assert all((rows == img.flatten()).all(1).any() for img in s.clean_test.images)
    e = _named(s.test)["contrast"]
    swapped = dataclasses.replace(e, labels=e.labels.roll(1))
    assert not torch.equal(swapped.labels, e.labels)
    with pytest.raises(ValueError, match="contrast.*clean subset"):
        dataclasses.replace(s, test=tuple(swapped if x.name == "contrast" else x for x in s.test))

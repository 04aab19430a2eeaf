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
        for name, sev in a[part].items():
            assert all(torch.equal(x, b[part][name][s]) for s, x in sev.items())
    assert all(torch.equal(x, b["test_sets"]["label_shift"][i]) for i, x in enumerate(a["test_sets"]["label_shift"]))


def test_sets_are_the_seeded_shift_of_a_stratified_subset(tmp_path):
    """Each shifted test set is shifts.apply on a class-balanced subset of eval_images test images, with the
    subset's labels; the severity is the one asked for (a different severity gives different images)."""
    cfg, data = _setup(tmp_path)
    sh = dataclasses.replace(cfg.shifts, eval_images=50)
    s, _ = suite.build(sh, data, None)
    y = s["labels"]["test"]
    assert len(y) == 50 and torch.bincount(y).min() >= 50 // len(data["classes"]) - 1
    clean = s["clean"]["test"]
    for i, name in enumerate(sh.test):
        for sev in sh.severities:
            assert torch.equal(s["test"][name][sev], shifts.apply(name, clean, sev, sh.seed + 1000 * i + sev))
    assert not torch.equal(s["test"]["gaussian_noise"][1], s["test"]["gaussian_noise"][3])


def test_cache_key_follows_config_and_data(tmp_path):
    """A different severity list, seed or data key is a different cache entry; the same inputs the same key."""
    cfg, data = _setup(tmp_path)
    key = suite.cache_key(cfg.shifts, data["key"])
    assert suite.cache_key(cfg.shifts, data["key"]) == key
    assert suite.cache_key(dataclasses.replace(cfg.shifts, severities=[1, 2]), data["key"]) != key
    assert suite.cache_key(dataclasses.replace(cfg.shifts, seed=7), data["key"]) != key
    assert suite.cache_key(cfg.shifts, data["key"] + "x") != key


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
    clean_x, clean_y = s["test_sets"]["clean"]
    assert s["family"]["clean"] == "clean" and torch.equal(clean_y, s["labels"]["test"])
    assert torch.allclose(s["test"]["contrast"][5], _contrast5(clean_x), atol=1e-6)
    assert torch.equal(clean_x, s["clean"]["test"])  # the subset the shifted sets are made from
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
    assert set(s["files"]) == {"c10c.gaussian_noise", "c10c.frost"} and s["family"]["c10c.frost"] == "weather"
    for i, name in enumerate(("gaussian_noise", "frost")):
        for sev in (1, 3, 5):
            x, y = s["files"][f"c10c.{name}"][sev]
            assert x.shape == (10, 3, 16, 16) and x.dtype == torch.float32
            assert torch.allclose(x, torch.full_like(x, (40 * sev + 10 * i) / 255))
            assert torch.equal(y, torch.as_tensor(block, dtype=torch.long))
    assert info["n_sets"] == (len(cfg.shifts.selection)) * 3 + 2 * 3
    cached, _ = suite.build(sh, data, tmp_path / "cache")
    assert torch.equal(cached["files"]["c10c.frost"][5][0], s["files"]["c10c.frost"][5][0])
    half = dataclasses.replace(sh, eval_images=5)
    t, _ = suite.build(half, data, None)
    y1, y5 = t["files"]["c10c.frost"][1][1], t["files"]["c10c.frost"][5][1]
    assert len(y1) == 5 and torch.equal(y1, y5) and torch.bincount(y1, minlength=5).tolist() == [1] * 5


def test_corruption_files_are_evaluated_like_shifts(tmp_path):
    """test_metrics gives each file set per-severity accuracy against labels.npy's labels (not the test split's)."""
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
    assert final["ood_acc/weather"] == pytest.approx(0.2)


def test_corruption_files_config_is_checked(tmp_path):
    """A folder without labels.npy is bad input naming shifts.files."""
    import pytest as _pytest

    with _pytest.raises(config.ConfigError) as err:
        config.load(None, [f'shifts.files="{tmp_path}"'])
    assert err.value.key == "shifts.files"

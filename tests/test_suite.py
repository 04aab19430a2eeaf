"""Suite: shifted evaluation sets built once per study from a fixed seed, cached on disk, reused as they are."""

from __future__ import annotations

import dataclasses

import torch

from harness import config, data as datamod, shifts, suite

from conftest import TINY


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


def _contrast5(x):
    """CIFAR-10-C contrast at severity 5, written out: (x - per-image channel mean) * .15 + mean."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * 0.15 + mean).clamp(0, 1)


def test_target_shift_applies_to_train_val_and_test(tmp_path):
    """data.target_shift = "contrast:5": train, val and test images are the shifted images (stored as uint8 by
    truncation, as CIFAR-10-C's files), labels unchanged, the clean val/test kept; cached, and the same per seed."""
    cfg, data = _setup(tmp_path)
    d = dataclasses.replace(cfg.data, target_shift=["contrast:5"])
    out = suite.target_domain(d, data, 0, tmp_path / "cache")
    for split in ("train", "val", "test"):
        x, y = data[split]
        assert torch.allclose(out[split][0], torch.floor(_contrast5(x) * 255) / 255, atol=1.5 / 255)
        assert torch.equal(out[split][1], y)
    assert torch.equal(out["clean_test"][0], data["test"][0]) and torch.equal(out["clean_val"][0], data["val"][0])
    assert torch.equal(out["source_train"][0], data["source_train"][0])  # pretraining data is not the target's
    again = suite.target_domain(d, data, 0, tmp_path / "cache")
    assert [p.name.startswith("target-") for p in (tmp_path / "cache").glob("*.safetensors")] == [True]
    assert all(torch.equal(out[s][0], again[s][0]) for s in ("train", "val", "test")) and out["key"] != data["key"]
    noise = dataclasses.replace(cfg.data, target_shift=["gaussian_noise:3"])
    a, b, c = (suite.target_domain(noise, data, seed, None)["test"][0] for seed in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert suite.target_domain(cfg.data, data, 0, None) is data  # no target shift: nothing changes


def test_target_shift_mixture_deals_images_between_shifts(tmp_path):
    """A list of two target shifts: every test image is one of the two shifted versions, about half each."""
    cfg, data = _setup(tmp_path)
    d = dataclasses.replace(cfg.data, target_shift=["contrast:5", "brightness:5"])
    out = suite.target_domain(d, data, 0, None)["test"][0]
    x = data["test"][0]
    brightened = x * ((x.amax(1, keepdim=True) + 0.3).clamp(max=1) / x.amax(1, keepdim=True).clamp(min=1e-12))
    is_c = ((out - torch.floor(_contrast5(x) * 255) / 255).abs() < 1.5 / 255).flatten(1).all(1)
    is_b = ((out - torch.floor(brightened.clamp(0, 1) * 255) / 255).abs() < 1.5 / 255).flatten(1).all(1)
    assert (is_c | is_b).all() and abs(int(is_c.sum()) - len(x) / 2) <= 1


def test_target_domain_suite_tests_on_clean_and_other_shifts(tmp_path):
    """With a target domain the clean test subset is an OOD test set ('clean', family clean), and the other test
    shifts act on the clean images, not on the target domain's."""
    cfg, data = _setup(tmp_path)
    d = dataclasses.replace(cfg.data, target_shift=["gaussian_noise:5"])
    target = suite.target_domain(d, data, 0, None)
    sh = dataclasses.replace(cfg.shifts, test=["contrast"], severities=[5])
    s, _ = suite.build(sh, target, None)
    clean_x, clean_y = s["test_sets"]["clean"]
    assert s["family"]["clean"] == "clean" and torch.equal(clean_y, s["labels"]["test"])
    assert torch.allclose(s["test"]["contrast"][5], _contrast5(clean_x), atol=1e-6)
    assert torch.equal(clean_x, s["clean"]["test"])  # the subset the shifted sets are made from
    rows = data["test"][0].flatten(1)
    assert all((rows == img.flatten()).all(1).any() for img in clean_x)  # clean target-task test images


def test_target_shift_cannot_also_be_a_test_shift(tmp_path):
    """The refusal names data.target_shift (exit 2 at the CLI); malformed entries and unknown names too."""
    import pytest

    from harness import study

    with pytest.raises(config.ConfigError, match="cannot also be a test shift") as err:
        config.load(None, ['data.target_shift="gaussian_noise:5"', 'shifts.test=["gaussian_noise", "fog"]'])
    assert err.value.key == "data.target_shift"
    for bad in ('"gaussian_noise"', '"gaussian_noise:6"', '["fog:1", "fog:2"]'):
        with pytest.raises(config.ConfigError) as err:
            config.load(None, [f"data.target_shift={bad}"])
        assert err.value.key == "data.target_shift"
    with pytest.raises(config.ConfigError, match="unknown shift 'hail'") as err:
        study.preflight(config.load(None, ['data.target_shift="hail:2"']))
    assert err.value.key == "data.target_shift"
    assert config.load(None, ['data.target_shift="snow:2"']).data.target_shift == ["snow:2"]

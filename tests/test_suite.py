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

"""The study's shifted evaluation sets: materialized once (fixed seed), cached on disk, reused by every trial."""

from __future__ import annotations

import hashlib
import inspect
import time
from pathlib import Path

import torch
from harness import data as datamod, imageops, shifts, store
from harness.config import Data, Shifts, target_shifts

VERSION = 2


def cache_key(cfg: Shifts, data_key: str) -> str:
    # the shift code is part of the key: editing a corruption (or an image operation it uses) invalidates every
    # cached set built with it
    code = hashlib.sha256((inspect.getsource(shifts) + inspect.getsource(imageops)).encode()).hexdigest()[:12]
    return store.cache_key({"cfg": cfg.__dict__, "data": data_key, "code": code, "v": VERSION})


TARGET_SPLITS = ("train", "val", "test")
TARGET_VERSION = 1


def _shift_split(x: torch.Tensor, pairs: list[tuple[str, int]], seed: int) -> torch.Tensor:
    """One split in the target domain: with one shift every image gets it; with a mixture of m, a seeded permutation
    deals the images into m near-equal parts, part j getting shift j. Stored as uint8 by truncation, as np.uint8
    stores CIFAR-10-C's files, so the cache is a quarter of float32."""
    gen = torch.Generator().manual_seed(seed)
    parts = torch.randperm(len(x), generator=gen).tensor_split(len(pairs)) if len(pairs) > 1 else [torch.arange(len(x))]
    out = torch.empty(x.shape, dtype=torch.uint8)
    for j, ((name, severity), idx) in enumerate(zip(pairs, parts)):
        if len(idx):
            shifted = shifts.apply(name, x[idx], severity, seed + 101 * j)
            out[idx] = torch.floor(shifted * 255).clamp(0, 255).to(torch.uint8)
    return out


def target_domain(cfg: Data, data: dict, seed: int, cache_dir: Path | None) -> dict:
    """The study's target domain (data.target_shift): train, val and test images shifted by their registry shifts
    (deterministic per seed, cached), the clean val/test images kept as clean_val/clean_test for the OOD suite, and
    a data key that names the domain (so the suite's cache differs). No target shift: data unchanged."""
    pairs = target_shifts(cfg)
    if not pairs:
        return data
    code = hashlib.sha256(inspect.getsource(shifts).encode()).hexdigest()[:12]
    key = store.cache_key({"data": data["key"], "target": pairs, "seed": seed, "code": code, "v": TARGET_VERSION})
    path = cache_dir / f"target-{key}.safetensors" if cache_dir else None
    loaded = store.load_tensors(path) if path else None
    if loaded is not None:
        flat = loaded[0]
    else:
        # one seed per split, so train, val and test draw independent corruptions
        flat = {split: _shift_split(data[split][0], pairs, seed * 1000 + i) for i, split in enumerate(TARGET_SPLITS)}
        if path:
            store.save_tensors(flat, path)
    out = {**data, "key": f"{data['key']}-target-{key}", "target_shift": [f"{n}:{s}" for n, s in pairs]}
    for split in TARGET_SPLITS:
        out[f"clean_{split}"] = data[split]
        out[split] = (flat[split].float() / 255, data[split][1])
    return out


def _build(cfg: Shifts, data: dict) -> dict[str, torch.Tensor]:
    """Flat name -> tensor: 'selection/<shift>/<sev>' on val images, 'test/<shift>/<sev>' on test images (both
    on a fixed stratified subset of eval_images, whose labels are 'labels/<part>/y'),
    'sets/label_shift/x|y' (test resampled to Dirichlet(label_alpha) class priors), 'sets/subpopulation/x|y'
    (digits held out of fine-tuning, when data.holdout_classes is set). With a target domain (target_domain) the
    shifts act on the clean images, and the clean test subset is a test set of its own, 'sets/clean/x|y'."""
    out = {}
    for part, split, names in (("selection", "val", cfg.selection), ("test", "test", cfg.test)):
        x, y = data.get(f"clean_{split}", data[split])
        if cfg.eval_images and cfg.eval_images < len(y):
            keep = datamod.stratified_split(y, [cfg.eval_images / len(y), 1 - cfg.eval_images / len(y)],
                                            torch.Generator().manual_seed(cfg.seed))[0]
            x, y = x[keep], y[keep]
        out[f"labels/{part}/y"], out[f"clean/{part}/x"] = y.contiguous(), x.contiguous()
        if part == "test" and "clean_test" in data:  # the source domain's clean images: an OOD set of the study
            out["sets/clean/x"], out["sets/clean/y"] = x.contiguous(), y.contiguous()
        for i, name in enumerate(names):
            for s in cfg.severities:
                # one fixed seed per (shift, severity): the same set for every trial, every worker, every resume
                out[f"{part}/{name}/{s}"] = shifts.apply(name, x, s, cfg.seed + 1000 * i + s).contiguous()
    if cfg.label_alpha > 0:
        x, y = data["test"]
        gen = torch.Generator().manual_seed(cfg.seed)
        prior = shifts.dirichlet_prior(int(y.max()) + 1, cfg.label_alpha, gen)
        idx = shifts.resample_to_prior(y, prior, len(y), gen)
        out["sets/label_shift/x"], out["sets/label_shift/y"] = x[idx].contiguous(), y[idx].contiguous()
        out["sets/label_shift/prior"] = prior.float()
    if "subpop" in data:
        out["sets/subpopulation/x"], out["sets/subpopulation/y"] = data["subpop"][0].contiguous(), data["subpop"][1].contiguous()
    return out


def build(cfg: Shifts, data: dict, cache_dir: Path | None) -> tuple[dict, dict]:
    """(suite, info). suite = {"selection": {name: {sev: x}}, "test": {...}, "test_sets": {name: (x, y)},
    "family": {name: family}, "priors": {...}}; info has the key, build seconds and whether it was cached."""
    key = cache_key(cfg, data["key"])
    path = cache_dir / f"shifts-{key}.safetensors" if cache_dir else None
    t0 = time.perf_counter()
    loaded = store.load_tensors(path) if path else None
    cached = loaded is not None
    if cached:
        flat = loaded[0]
    else:
        flat = _build(cfg, data)
        if path:
            store.save_tensors(flat, path)
    suite = {"selection": {}, "test": {}, "test_sets": {}, "priors": {}, "labels": {}, "clean": {},
             "family": {n: shifts.FAMILY[n] for n in cfg.selection + cfg.test}}
    for k, v in flat.items():
        part, name, leaf = k.split("/")
        if part == "labels":
            suite["labels"][name] = v.long()
        elif part == "clean":
            suite["clean"][name] = v
        elif part == "sets":
            if leaf == "prior":
                suite["priors"][name] = v
            elif leaf == "x":
                suite["test_sets"][name] = (v, flat[f"sets/{name}/y"].long())
        else:
            suite[part].setdefault(name, {})[int(leaf)] = v
    suite["family"].update({n: {"label_shift": "label", "clean": "clean"}.get(n, "subpopulation")
                            for n in suite["test_sets"]})
    return suite, {"key": key, "seconds": time.perf_counter() - t0, "cached": cached,
                   "n_sets": sum(len(v) for v in suite["selection"].values()) + sum(len(v) for v in suite["test"].values())}


def to_device(suite: dict, device: torch.device) -> dict:
    mv = lambda d: {n: {s: x.to(device) for s, x in sev.items()} for n, sev in d.items()}
    return {**suite, "selection": mv(suite["selection"]), "test": mv(suite["test"]),
            "labels": {k: y.to(device) for k, y in suite["labels"].items()},
            "clean": {k: x.to(device) for k, x in suite["clean"].items()},
            "test_sets": {n: (x.to(device), y.to(device)) for n, (x, y) in suite["test_sets"].items()}}

"""The study's shifted evaluation sets: materialized once (fixed seed), cached on disk, reused by every trial."""

from __future__ import annotations

import hashlib
import inspect
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from harness import data as datamod, imageops, shifts, store
from harness.config import Data, Shifts, target_shifts

VERSION = 2


FILES_PREFIX = "c10c."  # test shifts read from shifts.files: c10c.<corruption> (no slash: it is a metric name part)


def cache_key(cfg: Shifts, data_key: str) -> str:
    # the shift code is part of the key: editing a corruption (any file of harness/shifts/, or an image operation it
    # uses) invalidates every cached set built with it
    code = hashlib.sha256((shifts.source() + inspect.getsource(imageops)).encode()).hexdigest()[:12]
    listing = "".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(_npy_files(cfg.files)))
    return store.cache_key({"cfg": cfg.__dict__, "data": data_key, "code": code, "v": VERSION}, listing)


def _npy_files(folder: str) -> list[Path]:
    return sorted(Path(folder).expanduser().glob("*.npy")) if folder else []


def read_files(cfg: Shifts, size: int, num_classes: int) -> dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """CIFAR-10-C's layout in cfg.files: {c10c.<corruption>: {severity: (images float [n, 3, size, size], labels)}}
    for shifts.severities, n = eval_images per severity (a stratified subset of the block's labels, seeded by
    shifts.seed, the same images at every severity; 0 = all). Files are memory-mapped and only the subset is read:
    one corruption is 150 MB, the 19 never sit in memory together."""
    folder = Path(cfg.files).expanduser()
    labels = torch.from_numpy(np.load(folder / "labels.npy").astype(np.int64))
    out = {}
    for path in _npy_files(cfg.files):
        if path.name == "labels.npy":
            continue
        images = np.load(path, mmap_mode="r")
        if images.ndim != 4 or images.shape[0] != len(labels) or len(labels) % 5 or images.shape[-1] != 3:
            raise ValueError(f"shifts.files: {path.name} has shape {images.shape}; expected (5 x N, H, W, 3) with "
                             f"5 x N = {len(labels)} labels")
        block = len(labels) // 5
        y = labels[:block]
        if int(labels.max()) >= num_classes or int(labels.min()) < 0:
            raise ValueError(f"shifts.files: labels.npy has classes up to {int(labels.max())}, the study {num_classes}")
        keep = torch.arange(block)
        if cfg.eval_images and cfg.eval_images < block:
            keep = datamod.stratified_split(y, [cfg.eval_images / block, 1 - cfg.eval_images / block],
                                            torch.Generator().manual_seed(cfg.seed))[0].sort().values
        sets = {}
        for s in cfg.severities:
            rows = (s - 1) * block + keep.numpy()
            if not torch.equal(labels[torch.from_numpy(rows)], y[keep]):
                raise ValueError(f"shifts.files: labels.npy is not 5 repeats of one block (severity {s} differs)")
            x = torch.from_numpy(np.ascontiguousarray(images[rows])).permute(0, 3, 1, 2).float() / 255
            if x.shape[-1] != size or x.shape[-2] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
            sets[s] = (x.contiguous(), y[keep].clone())
        out[FILES_PREFIX + path.stem] = sets
    return out


TARGET_SPLITS = ("train", "val", "test", "subpop")  # subpop (classes held out of fine-tuning) when the data has it
TARGET_VERSION = 2  # 2: the subpopulation set is in the target domain too


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
    """The study's target domain (data.target_shift): train, val and test images (and the subpopulation set, so that
    subpopulation shift is measured inside the target domain, not mixed with the return to clean images) shifted by
    their registry shifts (deterministic per seed, cached), the clean val/test images kept as clean_val/clean_test for
    the OOD suite, and a data key that names the domain (so the suite's cache differs). No target shift: data
    unchanged."""
    pairs = target_shifts(cfg)
    if not pairs:
        return data
    code = hashlib.sha256((shifts.source() + inspect.getsource(imageops)).encode()).hexdigest()[:12]
    key = store.cache_key({"data": data["key"], "target": pairs, "seed": seed, "code": code, "v": TARGET_VERSION})
    path = cache_dir / f"target-{key}.safetensors" if cache_dir else None
    loaded = store.load_tensors(path) if path else None
    if loaded is not None:
        flat = loaded[0]
    else:
        # one seed per split, so train, val and test draw independent corruptions
        flat = {split: _shift_split(data[split][0], pairs, seed * 1000 + i) for i, split in enumerate(TARGET_SPLITS)
                if split in data}
        if path:
            store.save_tensors(flat, path)
    out = {**data, "key": f"{data['key']}-target-{key}", "target_shift": [f"{n}:{s}" for n, s in pairs]}
    for split in (s for s in TARGET_SPLITS if s in data):
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
            out["sets/clean/x"], out["sets/clean/y"] = x.clone(), y.clone()  # safetensors stores no shared memory
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
    if cfg.files:
        size, k = data["test"][0].shape[-1], len(data.get("classes", [])) or int(data["test"][1].max()) + 1
        for name, sets in read_files(cfg, size, k).items():
            for s, (x, y) in sets.items():
                out[f"files/{name}/{s}/x"], out[f"files/{name}/{s}/y"] = x, y
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
    suite = {"selection": {}, "test": {}, "test_sets": {}, "priors": {}, "labels": {}, "clean": {}, "files": {},
             "family": {n: shifts.FAMILY[n] for n in cfg.selection + cfg.test}}
    for k, v in flat.items():
        if k.startswith("files/"):  # files/<name>/<severity>/x|y: own labels per set
            _, name, sev, leaf = k.split("/")
            if leaf == "x":
                suite["files"].setdefault(name, {})[int(sev)] = (v, flat[f"files/{name}/{sev}/y"].long())
            continue
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
    suite["family"].update({n: shifts.FAMILY.get(n[len(FILES_PREFIX):], "files") for n in suite["files"]})
    return suite, {"key": key, "seconds": time.perf_counter() - t0, "cached": cached,
                   "n_sets": sum(len(v) for v in suite["selection"].values()) + sum(len(v) for v in suite["test"].values())
                   + sum(len(v) for v in suite["files"].values())}


def to_device(suite: dict, device: torch.device) -> dict:
    mv = lambda d: {n: {s: x.to(device) for s, x in sev.items()} for n, sev in d.items()}
    return {**suite, "selection": mv(suite["selection"]), "test": mv(suite["test"]),
            "labels": {k: y.to(device) for k, y in suite["labels"].items()},
            "clean": {k: x.to(device) for k, x in suite["clean"].items()},
            "test_sets": {n: (x.to(device), y.to(device)) for n, (x, y) in suite["test_sets"].items()},
            "files": {n: {s: (x.to(device), y.to(device)) for s, (x, y) in sev.items()}
                      for n, sev in suite.get("files", {}).items()}}

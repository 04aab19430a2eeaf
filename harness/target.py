"""The study's target domain (data.target_shift): the target splits shifted before fine-tuning, cached; the clean ones kept."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import torch
from harness import config, data as datamod, imageops, shifts, store

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
            out[idx] = datamod.quantize(shifts.apply(name, datamod.pixels(x[idx]), severity, seed + 101 * j))
    return out


def target_domain(cfg: config.Data, data: dict, seed: int, cache_dir: Path | None) -> dict:
    """The study's target domain (data.target_shift): train, val and test images (and the subpopulation set, so that
    subpopulation shift is measured inside the target domain, not mixed with the return to clean images) shifted by
    their registry shifts (deterministic per seed, cached), the clean splits kept as clean_<split> (harness.suite
    makes the clean test subset the OOD set of family clean, logged as target/clean_acc), "target_shift" the domain
    as "name:severity" texts, and a data key that names the domain (so the suite's cache differs). No target shift:
    data unchanged."""
    pairs = config.target_shifts(cfg)  # the one parser of data.target_shift
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
        out[split] = (flat[split], data[split][1])  # uint8 at rest: a batch is made float on the device
    return out

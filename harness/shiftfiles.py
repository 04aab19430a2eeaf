"""shifts.files checked before anything is created: CIFAR-10-C's layout (<corruption>.npy of 5 x N images, H x W x 3,
and labels.npy of 5 repeats of N integer labels), with each array's shape, dtype, value range and labels read from
the files. Bad input (ConfigError naming shifts.files and the file) otherwise; suite.read_files reads through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from harness.config import ConfigError, Shifts, _short

SEVERITIES = 5  # CIFAR-10-C: severities 1..5, severity-major blocks of N images
CHUNK = 1024  # images a float file is scanned by: 1024 x 32 x 32 x 3 float32 is 12 MB


def _bad(path: Path, why: str) -> ConfigError:
    return ConfigError("shifts.files", f"{_short(str(path))}: {why}")


def _open(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # not a .npy file, truncated, an object array (pickled)
        raise _bad(path, f"is not a numeric .npy array numpy can read ({type(e).__name__}: {_short(str(e))})") from None


def labels(folder: Path, num_classes: int) -> torch.Tensor:
    """labels.npy as int64, checked: one dimension, an integer dtype (float labels would be truncated), 5 equal
    blocks, each label in 0..num_classes - 1."""
    path = folder / "labels.npy"
    y = _open(path, mmap=False)
    if y.ndim != 1 or not len(y) or len(y) % SEVERITIES:
        raise _bad(path, f"has shape {y.shape}; expected (5 x N,): N labels for each of the 5 severities")
    if y.dtype.kind not in "iu":
        raise _bad(path, f"has dtype {y.dtype}; expected integer class indices (e.g. int64): a cast of {y.dtype} "
                   f"labels would truncate them")
    if y.min() < 0 or y.max() >= num_classes:
        raise _bad(path, f"holds labels in [{y.min()}, {y.max()}]; the study has {num_classes} classes "
                   f"(0..{num_classes - 1})")
    blocks = y.reshape(SEVERITIES, -1)
    differs = [s + 1 for s in range(1, SEVERITIES) if not np.array_equal(blocks[s], blocks[0])]
    if differs:
        raise _bad(path, f"is not 5 repeats of one block of {blocks.shape[1]} labels (severity {differs[0]} differs)")
    return torch.from_numpy(y.astype(np.int64))


def _check_images(path: Path, images: np.ndarray, n: int) -> None:
    if images.ndim != 4 or images.shape[0] != n or images.shape[-1] != 3 or 0 in images.shape:
        raise _bad(path, f"has shape {images.shape}; expected (5 x N, H, W, 3) with 5 x N = {n} (labels.npy)")
    if images.dtype == np.uint8:
        return
    if images.dtype.kind != "f":
        raise _bad(path, f"has dtype {images.dtype}; expected uint8 (0..255, as CIFAR-10-C) or float in [0, 1]")
    low, high, finite = np.inf, -np.inf, True
    for start in range(0, len(images), CHUNK):
        chunk = np.asarray(images[start:start + CHUNK], dtype=np.float64)
        finite = finite and bool(np.isfinite(chunk).all())
        low, high = min(low, float(np.nanmin(chunk))), max(high, float(np.nanmax(chunk)))
    if not finite or low < 0 or high > 1:
        raise _bad(path, f"holds float values in [{low:.4g}, {high:.4g}]{'' if finite else ' and NaN or inf'}; "
                   f"float images must be in [0, 1] (uint8 ones in 0..255)")


def check(cfg: Shifts, num_classes: int) -> tuple[torch.Tensor, list[Path]]:
    """Every file of shifts.files, read as headers (memory-mapped) and, for float arrays, scanned for their range;
    returns the labels and the corruption files."""
    if not cfg.files:
        return torch.zeros(0, dtype=torch.long), []
    folder = Path(cfg.files).expanduser()
    y = labels(folder, num_classes)
    files = [p for p in sorted(folder.glob("*.npy")) if p.name != "labels.npy"]
    for path in files:
        _check_images(path, _open(path, mmap=True), len(y))
    return y, files


def pixels(images: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """The rows of a checked corruption file as float [n, 3, H, W] in [0, 1]: uint8 divided by 255, float as it is."""
    x = torch.from_numpy(np.ascontiguousarray(images[rows])).permute(0, 3, 1, 2)
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()

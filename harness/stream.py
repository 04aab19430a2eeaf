"""Streaming from disk when an ImageFolder study's images outgrow the memory budget (data.memory_budget, issue 26).

The images are decoded and resized once, at the study's size, into one uint8 .npy per split ([N, 3, S, S], written
under a temporary name and renamed, so a crash never leaves a half file that looks whole), in the cache folder
stream-<data key>/. A split is then a Streamed set: its rows are read from the memory-mapped file, and training and
prediction (train.batches, train.predict, hence the probe's features) read their batches through a torch DataLoader
with worker processes, pinned on CUDA and copied non_blocking by train.to_device_batch; a fit keeps its
workers for all its epochs (Reader) and ends them with its last batch. The batch order and the
batches are those of the in-memory path, so both give the same metrics (tests/test_stream.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

WORKERS = min(4, os.cpu_count() or 1)  # reader processes: decoding is done, a worker only copies rows out of the file
VERSION = 1


@functools.lru_cache(maxsize=64)
def _open(path: str) -> np.ndarray:
    """The split's file, memory-mapped read-only, once per process (each DataLoader worker maps its own)."""
    return np.load(path, mmap_mode="r")


@dataclasses.dataclass(frozen=True)
class Streamed:
    """A split's images on disk (uint8 [N, 3, S, S] in a .npy): indexed like a tensor (rows come back as a uint8
    tensor in memory), and read a batch at a time by `batches`."""
    path: str
    shape: tuple
    dtype = torch.uint8
    device = torch.device("cpu")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        arr = _open(self.path)
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        if isinstance(index, np.ndarray) and index.ndim == 1 and len(index) > 1:
            order = np.argsort(index, kind="stable")  # ascending reads: the file is read forwards, then reordered
            rows = np.empty((len(index), *arr.shape[1:]), arr.dtype)
            rows[order] = arr[index[order]]
            return torch.from_numpy(rows)
        return torch.from_numpy(np.array(arr[index]))

    def batches(self, chunks: list, device: torch.device):
        """The rows of each chunk of indices, in order, read by WORKERS processes (a DataLoader over the chunks),
        pinned when the device is a GPU (train.to_device_batch copies them non_blocking)."""
        loader = torch.utils.data.DataLoader(_Chunks(self, list(chunks)), batch_size=None, shuffle=False,
                                             num_workers=min(WORKERS, len(chunks)), pin_memory=device.type == "cuda")
        return iter(loader)

    def reader(self, device: torch.device, n_batches: int):
        """A context manager: a Reader of this set (`reading`), whose workers end when it exits."""
        return reading(self, device, n_batches)

    def nbytes(self) -> int:
        return int(np.prod(self.shape))


@dataclasses.dataclass
class _Order(torch.utils.data.Sampler):
    """A Reader's sampler: the chunks of row indices of the pass being read, set before each pass (a DataLoader
    takes a new iterator of its sampler at each iter(), in the main process; the workers only get the chunks)."""
    chunks: list = dataclasses.field(default_factory=list)

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


@dataclasses.dataclass
class _Rows(torch.utils.data.Dataset):
    """A Reader's items: the rows of a chunk of indices (a sampler item), read from the file in the worker."""
    images: Streamed

    def __getitem__(self, chunk) -> torch.Tensor:
        return self.images[chunk]


@dataclasses.dataclass
class Reader:
    """A Streamed set read through one DataLoader whose worker processes serve every pass until the Reader is closed
    (persistent_workers): a fit's epochs reuse them instead of starting WORKERS processes an epoch, as a DataLoader
    iterated once per epoch does. That costs more than the 0.07 s to a fresh loader's first batch: a 6-epoch fit of
    resnet8 at 64 px over 360 images (2 workers, 2 cores) took 1.92 s an epoch against 2.26 with a loader an epoch,
    0.32 s of CPU saved an epoch (forking and ending two copies of a ~1 GB process), the same losses. Looks like the
    set to train.batches (len, device, batches)."""
    images: Streamed
    loader: torch.utils.data.DataLoader
    order: _Order
    device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, chunks, device: torch.device):
        """The rows of each chunk of indices, in order (as Streamed.batches), read by the Reader's workers."""
        self.order.chunks = [c.cpu().numpy() if isinstance(c, torch.Tensor) else c for c in chunks]
        return iter(self.loader)

    def close(self) -> None:
        """Ends the workers now (joined): torch has no public call for this; a persistent iterator otherwise ends
        them only when it is garbage collected."""
        it, self.loader._iterator = self.loader._iterator, None
        if it is not None:
            it._shutdown_workers()


@contextlib.contextmanager
def reading(images: Streamed, device: torch.device, n_batches: int):
    """A Reader of `images` for passes of n_batches batches (its worker count: at most one per batch), pinned when
    the device is a GPU; its workers are ended on the way out, an exception's or a closed generator's included."""
    order = _Order()
    loader = torch.utils.data.DataLoader(_Rows(images), sampler=order, batch_size=None,
                                         num_workers=min(WORKERS, max(1, n_batches)), persistent_workers=True,
                                         pin_memory=device.type == "cuda")
    reader = Reader(images, loader, order)
    try:
        yield reader
    finally:
        reader.close()


@dataclasses.dataclass
class _Chunks(torch.utils.data.Dataset):
    """A DataLoader's items: one batch each (a chunk of row indices), read from the file in the worker."""
    images: Streamed
    chunks: list

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[self.chunks[i]]


def digest(x: Streamed) -> hashlib._Hash:
    """sha256 of the file's image bytes, read in 64 MiB pieces (records.digest's, without the whole split in memory)."""
    h, arr = hashlib.sha256(), _open(x.path)
    step = max(1, (64 << 20) // max(1, int(np.prod(arr.shape[1:]))))
    for i in range(0, len(arr), step):
        h.update(np.ascontiguousarray(arr[i:i + step]).tobytes())
    return h


def build(plan: dict, classes: list[str], size: int, folder: Path, decode) -> dict:
    """The study's splits from plan ({split: (paths, labels)}, data.imagefolder_plan) as Streamed sets in `folder`,
    decoding each image with decode(path, size) -> uint8 [3, size, size] into the memory-mapped file, one at a time.
    Files already there (a study resumed, another worker) are used as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "meta.json"
    out = {}
    for split, (paths, labels) in plan.items():
        final = folder / f"{split}_x.npy"
        if not final.exists():
            tmp = folder / f".{split}_x.{os.getpid()}.tmp.npy"
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), 3, size, size))
            try:
                for i, p in enumerate(paths):
                    arr[i] = decode(p, size).numpy()
                arr.flush()
                del arr
                os.replace(tmp, final)  # atomic: a reader sees the whole file or none
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        out[split] = (Streamed(str(final), (len(paths), 3, size, size)), labels.long())
    if not meta_path.exists():
        tmp = folder / f".meta.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"classes": classes, "size": size, "v": VERSION}))
        os.replace(tmp, meta_path)
    return out

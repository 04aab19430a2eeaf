"""Image folders as files: the listing (links followed, each file once, loops refused), the split sizes each class
gets, and the decoding of one file into uint8 RGB with its real range. Everything wrong with a file is bad input
(ConfigError naming data.path and the file), raised in the preflight, before any store exists."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from harness.config import ConfigError, NotFound, _short

# The most pixels one image may have (width x height), read from its header before decoding: a 100-megapixel
# photo is 300 MB of RGB to decode, a 1 KB PNG may claim 30000 x 30000 (a decompression bomb, 2.7 GB). PIL's own
# limit (Image.MAX_IMAGE_PIXELS, 89.5 MP warns, 179 MP raises) is set to this while a file is read.
PIXEL_BUDGET = 100_000_000

# torchvision's IMG_EXTENSIONS (what ImageFolder reads), copied: importing torchvision costs ~1 s per listing
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True)
class Listing:
    """An image folder: class names (sorted folder names) and, per split folder, (file, class index) pairs in order;
    `stamp` is the content address of the files the links lead to (paths, sizes, mtimes)."""
    classes: list[str]
    samples: dict[str, list[tuple[Path, int]]]
    stamp: str


def _bad(path, why: str) -> ConfigError:
    return ConfigError("data.path", f"{_short(str(path))}: {why}")


def _class_files(top: Path) -> list[Path]:
    """The image files under one class folder, links followed; a file reached through two links (or twice through a
    folder linked twice) is listed once, at its first path in sorted order. A folder link that leads back to a
    folder above it (`self -> .`) is a loop: bad input naming the link."""
    out, seen, stack = [], set(), [(top, (os.path.realpath(top),))]
    while stack:
        folder, chain = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)  # popped back in sorted order
        except OSError as e:
            raise _bad(folder, f"cannot be listed ({e.strerror or e})") from None
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir():  # follows links, as torchvision's ImageFolder does
                real = os.path.realpath(path)
                if real in chain:
                    raise _bad(path, f"is a link back to {_short(real)}, a folder that contains it: a link loop "
                               f"(its images would be read again and again); remove the link")
                subfolders.append((path, chain + (real,)))
            elif path.suffix.lower() in EXTENSIONS:
                if entry.is_symlink() and not path.exists():
                    raise _bad(path, "is a link to nothing (a dangling symlink); remove it or restore its target")
                real = os.path.realpath(path)
                if real not in seen:
                    seen.add(real)
                    out.append(path)
        stack.extend(subfolders)
    return sorted(out)


def listing(splits: dict[str, Path]) -> Listing:
    """The files of each split folder (data.folder_splits); the same class folders in each, at least one image in
    each class folder, and no file (after links) in two classes or two splits: an image labelled twice, or one in
    both train and test, is never what was meant."""
    classes, samples, owner, stamp = None, {}, {}, []
    for split, folder in splits.items():
        try:
            found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        except OSError as e:
            raise NotFound("data.path", f"{_short(str(folder))} cannot be listed ({e.strerror or e})") from None
        if not found:
            raise NotFound("data.path", f"no class folder in {_short(str(folder))}; give one folder of images per class")
        if classes is not None and found != classes:
            raise ConfigError("data.path", f"class folders differ between the split folders: {_short(classes)} "
                              f"versus {_short(found)} in {_short(str(folder))}")
        classes, samples[split] = found, []
        for label, name in enumerate(found):
            files = _class_files(folder / name)
            if not files:
                raise NotFound("data.path", f"{_short(str(folder / name))} has no image file (extensions: "
                               f"{', '.join(EXTENSIONS)})")
            for path in files:
                real = os.path.realpath(path)
                if real in owner and owner[real][0] != (split, label):
                    raise _bad(path, f"is the same file as {_short(str(owner[real][1]))} (links to {_short(real)}): "
                               f"one image in two classes or two splits; keep one")
                owner[real] = ((split, label), path)
                st = os.stat(real)
                stamp.append(f"{split}/{path.relative_to(folder)}>{real}:{st.st_size}:{st.st_mtime_ns}")
                samples[split].append((path, label))
    return Listing(classes, samples, "\n".join(stamp))


def split_bounds(n: int, fractions: list[float]) -> np.ndarray:
    """Where each fraction of n shuffled indices of one class starts and ends (data.stratified_split's rule)."""
    bounds = np.cumsum([0] + [round(f * n) for f in fractions[:-1]] + [n])
    return np.minimum(bounds, n)


def check_class_sizes(listing: Listing, parts: dict[str, tuple[list[float], tuple[str, ...]]], where: Path) -> None:
    """Every class must land in every split: a class with 1 image split 0.7/0.1/0.2 is absent from val and test, and
    its accuracy is then never measured. `parts`: split folder -> (its fractions, the names of the splits cut)."""
    for folder, (fractions, names) in parts.items():
        counts = torch.bincount(torch.tensor([y for _, y in listing.samples[folder]]), minlength=len(listing.classes))
        for label, n in enumerate(counts.tolist()):
            sizes = np.diff(split_bounds(n, fractions)).tolist()
            if min(sizes) < 1:
                got = " / ".join(f"{k} {name}" for k, name in zip(sizes, names))
                raise ConfigError("data.path", f"class {_short(listing.classes[label])} has {n} image(s) in "
                                  f"{_short(str(where))}; split by fractions {[round(f, 4) for f in fractions]} it gets "
                                  f"{got}: every class needs at least one image in each split (add images, or lower "
                                  f"data.val_fraction / data.test_fraction)")


@contextlib.contextmanager
def _pil_budget():
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = PIXEL_BUDGET
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the budget is an error, not a warning
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _rgb(img, path):
    """An opened, loaded PIL image as 8-bit RGB with its real range. 16-bit integer images (modes I;16*, and I as
    PIL opens 16-bit PNG/TIFF) are scaled by 65535 / 255 = 257, the full 16-bit range, so 65535 is white; values
    outside 0..65535 are refused. Float images (mode F) must hold [0, 1] and are scaled by 255; any other range is
    refused (no guess between 0..1, 0..255 and 0..65535). PIL's own convert("RGB") clips both at 255."""
    from PIL import Image

    if img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise _bad(path, f"integer image (mode {img.mode}) with values in [{arr.min()}, {arr.max()}]; expected "
                       f"16-bit values 0..65535 (scaled by 257 to 0..255)")
        return Image.fromarray(np.rint(arr / 257).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)
        if arr.size and not (finite.all() and arr.min() >= 0 and arr.max() <= 1):
            seen = (f"values in [{arr[finite].min():.4g}, {arr[finite].max():.4g}]" if finite.any() else "no finite value")
            raise _bad(path, f"float image (mode F) with {seen}{'' if finite.all() else ' and NaN or inf'}; expected "
                       f"[0, 1] (scaled by 255); save it as 8-bit, or rescale it to [0, 1]")
        return Image.fromarray(np.rint(arr * 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def decode(path: Path, size: int) -> torch.Tensor:
    """One image file -> uint8 [3, size, size]: resize the short side, centre crop. Bad input naming the file when
    it cannot be decoded, is truncated, exceeds PIXEL_BUDGET or has a range _rgb refuses."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    try:
        with _pil_budget(), Image.open(path) as img:
            if img.width * img.height > PIXEL_BUDGET:
                raise _bad(path, f"{img.width} x {img.height} pixels exceeds the budget of {PIXEL_BUDGET:,} pixels an "
                           f"image (a decompression bomb, or a photo to downscale first)")
            img.draft("RGB", (size, size))  # JPEG: let the decoder downscale by 2-8x (never below size): ~3x faster
            img.load()  # decoded here: a truncated file fails now, not inside a conversion
            t = TF.pil_to_tensor(_rgb(img, path))
    except ConfigError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bad(path, f"exceeds the budget of {PIXEL_BUDGET:,} pixels an image ({_short(str(e))})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:  # PIL: unidentified, truncated, broken
        raise _bad(path, f"cannot be decoded as an image ({type(e).__name__}: {_short(str(e))}); remove or "
                   f"replace it") from None
    t = TF.resize(t, size, antialias=True)
    return TF.center_crop(t, [size, size])

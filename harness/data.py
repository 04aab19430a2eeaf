"""Datasets as tensors: a source split for pretraining and target train/val/test splits, built once and cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from harness import imagefiles, store, stream
from harness.config import ConfigError, Data, NotFound, _short

# Every split is a pair (images [N, 3, H, W], labels int64 [N]). Images are held at rest as uint8 (value v is the
# pixel v / 255) when they came from 8-bit pixels (image files, torchvision's sets, shifted sets), and as float32 in
# [0, 1] only when no smaller type holds them exactly (the digits' tinted pixels): pixels() makes a batch float on
# the training device, so a 224 px study holds 1 byte a value, not 4. Models normalize inside, so shifts act on plain
# [0, 1] pixels exactly as CIFAR-10-C defines them.
SPLITS = ("source_train", "source_val", "train", "val", "test", "subpop")
CACHE_VERSION = 4  # bump when the construction below changes, so stale caches are not reused


def cache_key(cfg: Data, seed: int) -> str:
    listing = ""
    if cfg.source == "imagefolder" and cfg.path:
        # the files the folder's links lead to (paths, sizes, mtimes) are part of its content address: an image added
        # behind a symlinked class folder makes a new key
        listing = imagefiles.listing(folder_splits(_root(cfg))).stamp
    # the target shift is applied later (suite.target_domain, with its own cache): the clean splits and the
    # pretraining built on them are shared by every target domain
    # memory_budget picks where the images live (memory or a disk cache), not which images: not in the key
    clean = {k: v for k, v in cfg.__dict__.items() if k not in ("target_shift", "memory_budget")}
    return store.cache_key({"cfg": clean, "seed": seed, "v": CACHE_VERSION}, listing)


# An imagefolder dataset decoded by check() (the preflight) for load() to take, by cache key: decoded once, and
# every bad file found before a store exists
_DECODED: dict[str, tuple[dict, dict]] = {}


def load(cfg: Data, seed: int, cache_dir: Path | None = None, log=print) -> dict:
    """All splits on the CPU, from the cache when present; `classes` names the target labels. An imagefolder study
    says whether its images are held in memory or streamed from disk (harness.stream), and why (data_path)."""
    key = cache_key(cfg, seed)
    if cfg.source == "imagefolder":
        streamed, why = data_path(cfg, seed, cache_dir)
        log(f"data: {why}")
        if streamed:
            plan, classes = imagefolder_plan(cfg, seed)
            splits = stream.build(plan, classes, cfg.image_size, cache_dir / f"stream-{key}", imagefiles.decode)
            return {"key": key, "classes": classes, "source_classes": [], **splits}
    path = cache_dir / f"data-{key}.safetensors" if cache_dir else None
    cached = store.load_tensors(path) if path else None
    if cached is not None and cached[1] is not None:
        tensors, meta = cached
    else:
        tensors, meta = _DECODED.pop(key, None) or BUILDERS[cfg.source](cfg, seed)
        if path:
            store.save_tensors(tensors, path, meta=meta)
    out = {"key": key, **meta}
    for split in SPLITS:
        if f"{split}_x" in tensors:
            x = tensors[f"{split}_x"]
            out[split] = (x if x.dtype == torch.uint8 else x.float(), tensors[f"{split}_y"].long())
    return out


def data_path(cfg: Data, seed: int, cache_dir: Path | None, available: int | None = None) -> tuple[bool, str]:
    """(stream, why): an imagefolder study streams from disk when its uint8 images (every split, at the study's size)
    take more than data.memory_budget of the RAM available now, and there is a cache folder to stream from."""
    import psutil

    plan, _ = imagefolder_plan(cfg, seed)
    n = sum(len(paths) for paths, _ in plan.values())
    need = n * 3 * cfg.image_size ** 2
    available = psutil.virtual_memory().available if available is None else available
    budget = cfg.memory_budget * available
    what = (f"{need / 2**20:.1f} MiB of uint8 images ({n} x 3 x {cfg.image_size} x {cfg.image_size}) "
            f"{'exceed' if need > budget else 'fit'} data.memory_budget = {cfg.memory_budget:g} of the "
            f"{available / 2**30:.1f} GiB available ({budget / 2**20:.1f} MiB)")
    if need <= budget:
        return False, f"in memory: {what}"
    if cache_dir is None:
        raise ConfigError("data.memory_budget", f"{what}, and there is no cache folder to stream them from")
    return True, f"streaming from disk: {what}; decoded once to {cache_dir / ('stream-' + cache_key(cfg, seed))}"


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Images as float in [0, 1] where they are (a batch on the training device): uint8 v -> v / 255 (the exact op
    load() applied at rest before issue 26: the same floats), float as it is."""
    return x.float() / 255 if x.dtype == torch.uint8 else x


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] images -> uint8 by truncation, floor(255 x), as make_cifar_c stores CIFAR-10-C (np.uint8 of the
    float pixels in [0, 255]): a shifted set at rest. Each pixel moves by less than 1/255 (down); uint8 stays."""
    return x if x.dtype == torch.uint8 else torch.floor(x * 255).clamp(0, 255).to(torch.uint8)


# What the data takes in memory while it is built, in bytes per pixel of one image channel at data.image_size:
# digits are built as float32 and a broadcast makes two more full copies (3 x 4); the others are decoded as uint8 and
# indexed into splits (a second uint8 copy), and stay uint8 (1 + 1)
BYTES_PER_VALUE = {"digits": 12}
BYTES_PER_VALUE_DEFAULT = 2
MEMORY_MARGIN = 0.8  # of the memory available now: the rest for the model, the shift suite and the interpreter
TV_SIZES = {"mnist": (70_000, 10), "fashionmnist": (70_000, 10), "cifar10": (60_000, 10), "cifar100": (60_000, 100),
            "svhn": (99_289, 10)}  # images (train + test) and classes of torchvision's sets


def _root(cfg: Data) -> Path:
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise NotFound("data.path", f"{_short(str(root))} is not a folder")
    return root


def n_classes(cfg: Data, listing: imagefiles.Listing | None = None) -> int:
    """The number of target classes, without building the data (shifts.files's labels are checked against it)."""
    if cfg.source == "digits":
        return 2 if cfg.task == "parity" else len(cfg.target_classes)
    if cfg.source == "imagefolder":
        return len((listing or imagefiles.listing(folder_splits(_root(cfg)))).classes)
    return TV_SIZES[cfg.source][1]


def check_memory(cfg: Data, n_images: int, available: int | None = None) -> None:
    """data.image_size against the memory available now, before anything is allocated: 1797 digits at 1024 x 1024
    would ask for 68 GB at once. Bad input with the numbers."""
    import psutil

    need = n_images * 3 * cfg.image_size ** 2 * BYTES_PER_VALUE.get(cfg.source, BYTES_PER_VALUE_DEFAULT)
    available = psutil.virtual_memory().available if available is None else available
    if need > MEMORY_MARGIN * available:
        raise ConfigError("data.image_size", f"{cfg.image_size} needs about {need / 2**30:.1f} GiB to build "
                          f"{n_images} images of 3 x {cfg.image_size} x {cfg.image_size}, over "
                          f"{MEMORY_MARGIN:.0%} of the {available / 2**30:.1f} GiB available; lower data.image_size "
                          f"(at most ~{int((MEMORY_MARGIN * available / (need / cfg.image_size ** 2)) ** 0.5)} here)")


def check(cfg: Data, seed: int, cache_dir: Path | None = None) -> None:
    """Raise now what load() would raise about data.path and its files, so bad data is bad input (exit 2) before a
    store or cache is created: an image folder is listed (links followed, loops refused), its class sizes checked
    and every image decoded (kept for load(), so decoded once). The memory the data needs is checked first."""
    listing = None
    if cfg.source == "imagefolder":
        listing = imagefiles.listing(folder_splits(_root(cfg)))
    n = (len(digits()[1]) if cfg.source == "digits" else
         sum(map(len, listing.samples.values())) if listing else TV_SIZES[cfg.source][0])
    key = cache_key(cfg, seed)
    if listing is not None:
        if len(listing.classes) < 2:  # one class trains to loss 0 and accuracy 1.0: a study that measures nothing
            raise ConfigError("data.path", f"{_short(str(_root(cfg)))} has {len(listing.classes)} class folder "
                              f"({_short(', '.join(listing.classes))}); a classifier needs at least 2")
        if data_path(cfg, seed, cache_dir)[0]:
            return  # streamed: decoded to disk by load(), one image at a time (a bad file stops it there)
    check_memory(cfg, n)
    if cfg.source == "digits" or (cache_dir and (cache_dir / f"data-{key}.safetensors").exists()):
        return
    if cfg.source == "imagefolder":
        _DECODED.clear()  # one dataset waits at a time
        _DECODED[key] = _imagefolder(cfg, seed)
        return
    if not cfg.download:
        _torchvision_sets(cfg)  # reads the files it finds (torchvision has no cheaper public check)


def to_device(data: dict, device: torch.device, budget: float = 0.5) -> dict:
    """Data that fits lives on the training device as tensors: no loader, no host-to-device copy per batch.
    On CUDA, images that would take more than `budget` of the free GPU memory (the model, activations and the
    shift suite need the rest) stay on the CPU, pinned, and train/predict copy each batch with non_blocking=True;
    labels always move (4 bytes an image)."""
    # clean_<split>: a target domain's clean splits; a streamed split (harness.stream) stays on disk, its labels move
    keys = [k for k in data if (k in SPLITS or k.startswith("clean_")) and isinstance(data[k][0], torch.Tensor)]
    nbytes = sum(data[k][0].nelement() * data[k][0].element_size() for k in keys)
    resident = device.type != "cuda" or nbytes <= budget * torch.cuda.mem_get_info(device)[0]
    images = (lambda x: x.to(device)) if resident else (lambda x: x.pin_memory())
    return {k: (images(v[0]), v[1].to(device)) if k in keys else (v[0], v[1].to(device)) if k in SPLITS else v
            for k, v in data.items()}


def host(data: dict, placed: dict) -> dict:
    """The splits on the CPU once to_device has placed them: the pinned images where they stayed on the host (pinning
    copies; the pageable original is dropped), so the host holds one copy of the images, not two."""
    return {k: (placed[k][0], v[1]) if isinstance(v, tuple) and k in placed and placed[k][0].device.type == "cpu"
            else v for k, v in data.items()}


def stratified_split(labels: torch.Tensor, fractions: list[float], gen: torch.Generator) -> list[torch.Tensor]:
    """Indices for each fraction, taken per class so every split keeps the class balance."""
    parts = [[] for _ in fractions]
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        bounds = imagefiles.split_bounds(len(idx), fractions)  # the rule the preflight's class-size check reads
        for i in range(len(fractions)):
            parts[i].append(idx[bounds[i]:bounds[i + 1]])
    return [torch.cat(p).sort().values for p in parts]


def per_class(labels: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """The first n (shuffled) indices of each class: few-shot target sets."""
    keep = []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().squeeze(1)
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
    return torch.cat(keep).sort().values


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's bundled digits (1797 x 1 x 8 x 8 in [0, 1], labels), no download. Read from the CSV that
    load_digits() reads, located without importing sklearn.datasets (4.6 s of imports on 2 cores, for 12 ms of data)."""
    import importlib.util

    path = Path(importlib.util.find_spec("sklearn").origin).parent / "datasets" / "data" / "digits.csv.gz"
    arr = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return torch.from_numpy(arr[:, :-1]).view(-1, 1, 8, 8) / 16.0, torch.from_numpy(arr[:, -1]).long()


def _digits(cfg: Data, seed: int):
    x, y = digits()
    gen = torch.Generator().manual_seed(seed)
    # Upsample 8x8 -> 32x32 so CIFAR-scale corruptions make sense, then tint each digit with a random bright
    # foreground on a random dark background: colour makes saturate/brightness/contrast shifts meaningful.
    x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    fg = 0.55 + 0.45 * torch.rand(len(x), 3, 1, 1, generator=gen)
    bg = 0.25 * torch.rand(len(x), 3, 1, 1, generator=gen)
    x = bg + (fg - bg) * x

    tensors = {}
    seen = [c for c in cfg.target_classes if c not in cfg.holdout_classes]
    for name, classes, fractions in (
        ("source", cfg.source_classes, [0.8, 0.2]),
        ("target", seen, [1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction]),
    ):
        mask = torch.isin(y, torch.tensor(classes))
        xs, ys = x[mask], _labels(y[mask], classes if name == "source" else cfg.target_classes, cfg, name)
        parts = stratified_split(y[mask], fractions, gen)  # stratified by digit, also for parity labels
        names = ["source_train", "source_val"] if name == "source" else ["train", "val", "test"]
        for split, idx in zip(names, parts):
            tensors[f"{split}_x"], tensors[f"{split}_y"] = xs[idx].contiguous(), ys[idx].contiguous()
    if cfg.holdout_classes:
        # subpopulation shift: digits never seen in fine-tuning, labelled by the same superclass (parity)
        mask = torch.isin(y, torch.tensor(cfg.holdout_classes))
        tensors["subpop_x"], tensors["subpop_y"] = x[mask].contiguous(), _labels(y[mask], cfg.target_classes, cfg, "target")
    _few_shot(tensors, cfg, gen)
    classes = ["even", "odd"] if cfg.task == "parity" else [str(c) for c in cfg.target_classes]
    meta = {"classes": classes, "source_classes": [str(c) for c in cfg.source_classes]}
    return tensors, meta


def _labels(digits: torch.Tensor, classes: list[int], cfg: Data, part: str) -> torch.Tensor:
    if part == "target" and cfg.task == "parity":
        return digits % 2
    return torch.tensor([classes.index(int(v)) for v in digits], dtype=torch.long)


def _few_shot(tensors: dict, cfg: Data, gen: torch.Generator) -> None:
    if cfg.labels_per_class:
        keep = per_class(tensors["train_y"], cfg.labels_per_class, gen)
        tensors["train_x"], tensors["train_y"] = tensors["train_x"][keep].contiguous(), tensors["train_y"][keep].contiguous()


def _resize_uint8(paths: list, size: int) -> torch.Tensor:
    """Image files -> uint8 [N, 3, size, size] (imagefiles.decode: resized, centre-cropped, 16-bit and float images
    with their real range; bad files are bad input naming them). One image is decoded at a time, so memory holds the
    small result, never the full-size photos."""
    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, path in enumerate(paths):
        out[i] = imagefiles.decode(path, size)
    return out


def folder_splits(root: Path) -> dict[str, Path]:
    """Which folder holds which split: train/ + val/ + test/ as they are; train/ with val/ or test/ alone: that one
    is the test split (val then comes out of train/); train/ alone or no split folders: {"all": folder}, split by
    fractions. Anything else (val/ or test/ without train/) is an error: a split folder must never become a class."""
    present = [n for n in ("train", "val", "test") if (root / n).is_dir()]
    if not present:
        return {"all": root}
    if "train" not in present:
        raise ConfigError("data.path", f"{root} has {' and '.join(n + '/' for n in present)} but no train/; give "
                          f"train/ (with val/ and/or test/ beside it, the same class folders in each) or one folder "
                          f"per class")
    if present == ["train"]:
        return {"all": root / "train"}
    if len(present) == 3:
        return {"train": root / "train", "val": root / "val", "test": root / "test"}
    return {"train": root / "train", "test": root / present[1]}


def imagefolder_plan(cfg: Data, seed: int) -> tuple[dict, list[str]]:
    """({split: (image paths, labels)}, classes): which file goes to which split, in order, from the labels alone
    (nothing decoded), so that the in-memory and the streamed study (harness.stream) hold the same images."""
    root = _root(cfg)
    gen = torch.Generator().manual_seed(seed)
    splits = folder_splits(root)
    listing = imagefiles.listing(splits)  # links followed, each file once, loops and shared files refused
    fr = [1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction]
    cut = {"all": (fr, ("train", "val", "test"))} if "all" in splits else \
        {} if "val" in splits else {"train": ([1 - cfg.val_fraction, cfg.val_fraction], ("train", "val"))}
    imagefiles.check_class_sizes(listing, cut, root)  # before decoding: a class absent from a split is bad input
    plan = {split: ([p for p, _ in samples], torch.tensor([y for _, y in samples]))
            for split, samples in listing.samples.items()}
    pick = lambda part, idx: ([part[0][i] for i in idx.tolist()], part[1][idx])  # noqa: E731
    if "all" in plan:
        part = plan.pop("all")
        plan = {split: pick(part, idx) for split, idx in zip(("train", "val", "test"), stratified_split(part[1], fr, gen))}
    elif "val" not in plan:
        tr, va = stratified_split(plan["train"][1], [1 - cfg.val_fraction, cfg.val_fraction], gen)
        plan.update(train=pick(plan["train"], tr), val=pick(plan["train"], va))
    if cfg.labels_per_class:  # as _few_shot, from the same generator
        plan["train"] = pick(plan["train"], per_class(plan["train"][1], cfg.labels_per_class, gen))
    return plan, listing.classes


def _imagefolder(cfg: Data, seed: int):
    plan, classes = imagefolder_plan(cfg, seed)
    tensors = {f"{split}_{k}": v for split, (paths, y) in plan.items()
               for k, v in (("x", _resize_uint8(paths, cfg.image_size)), ("y", y.contiguous()))}
    return tensors, {"classes": classes, "source_classes": []}


def _torchvision_sets(cfg: Data):
    """(train, test) torchvision datasets from data.path, downloaded there only when data.download is true."""
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10,
           "cifar100": tvd.CIFAR100, "svhn": tvd.SVHN}[cfg.source]
    kw = (lambda train: {"split": "train" if train else "test"}) if cfg.source == "svhn" else (lambda train: {"train": train})
    try:
        return tuple(cls(str(Path(cfg.path).expanduser()), download=cfg.download, **kw(t)) for t in (True, False))
    except RuntimeError as e:  # torchvision says "Dataset not found or corrupted"
        raise NotFound("data.path", f"{cfg.source} not found under {cfg.path} ({e}); put the files there "
                       f"or set data.download = true") from None


def _torchvision(cfg: Data, seed: int):
    train, test = _torchvision_sets(cfg)
    gen = torch.Generator().manual_seed(seed)

    def tensors_of(ds):
        raw = ds.data if hasattr(ds, "data") else None
        x = torch.as_tensor(np.asarray(raw))
        if x.ndim == 3:  # N H W grayscale
            x = x.unsqueeze(1).expand(-1, 3, -1, -1)
        elif x.shape[-1] == 3:  # N H W C
            x = x.permute(0, 3, 1, 2)
        if x.shape[-1] != cfg.image_size:  # resized once, in chunks: never the whole set as float32
            x = torch.cat([F.interpolate(c.float(), size=(cfg.image_size,) * 2, mode="bilinear", antialias=True)
                           .round().clamp(0, 255).to(torch.uint8) for c in x.split(1024)])
        y = torch.as_tensor(np.asarray(getattr(ds, "targets", getattr(ds, "labels", None))))
        return x.contiguous(), y.long()

    x, y = tensors_of(train)
    tr, va = stratified_split(y, [1 - cfg.val_fraction, cfg.val_fraction], gen)
    tx, ty = tensors_of(test)
    tensors = {"train_x": x[tr], "train_y": y[tr], "val_x": x[va], "val_y": y[va], "test_x": tx, "test_y": ty}
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    _few_shot(tensors, cfg, gen)
    classes = [str(c) for c in getattr(train, "classes", sorted(set(y.tolist())))]
    return tensors, {"classes": classes, "source_classes": []}


TV_DATASETS = ("mnist", "fashionmnist", "cifar10", "cifar100", "svhn")  # torchvision's (_torchvision_sets)
# data.source -> builder(cfg, seed) -> (tensors, meta); config.validate checks data.source against its keys
BUILDERS = {"digits": _digits, "imagefolder": _imagefolder, **{name: _torchvision for name in TV_DATASETS}}

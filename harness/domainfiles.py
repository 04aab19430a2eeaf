"""Real domains (shifts.domains): a folder laid out as <domain>/<class>/<image>, DomainBed's and WILDS' layout, each
domain a held-out test set domain.<name>. Checked in the preflight, before any store exists: the domain names (a
metric name part), the class folders of every domain (the study's classes, in its order), every image of the subset
evaluated decoded. With data.path naming one domain of the folder (data.source = "imagefolder"), that domain is the
study's target and the others are evaluated (leave-one-domain-out, as DomainBed)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from harness import imagefiles
from harness.config import Config, ConfigError, Data, Shifts, _short

# a domain's name is part of metric names (shift/domain.<name>/acc): MLflow allows letters, digits, _ - . / and space;
# no slash (it separates the parts) and no space (a shell-quoted command line would need quotes)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
PREFIX = "domain."  # the evaluation set of domain <name> is domain.<name>

# decoded in the preflight for the suite builder to take (keyed as _key): decoded once, every bad file found first
_DECODED: dict[tuple, list] = {}


def _bad(why: str) -> ConfigError:
    return ConfigError("shifts.domains", why)


def root(cfg: Shifts) -> Path:
    return Path(cfg.domains).expanduser()


def domains(cfg: Shifts) -> list[str]:
    """The domain folders of shifts.domains, sorted; bad input when there is none or a name cannot name a metric."""
    top = root(cfg)
    try:
        names = sorted(e.name for e in os.scandir(top) if e.is_dir())
    except OSError as e:
        raise _bad(f"{_short(str(top))} cannot be listed ({e.strerror or e})") from None
    if not names:
        raise _bad(f"no domain folder in {_short(str(top))}; expected <domain>/<class>/<image>")
    for name in names:
        if not NAME.fullmatch(name):
            raise _bad(f"domain folder {_short(name)} in {_short(str(top))}: a domain name becomes a metric name "
                       f"(shift/domain.<name>/acc), so it must be 1-100 letters, digits, '_', '-' or '.', starting "
                       f"with a letter or digit; rename the folder")
    return names


def target_of(data: Data, cfg: Shifts) -> str:
    """The domain data.path names (leave-one-domain-out): "" when shifts.domains is off, the data is not an image
    folder, or data.path lies outside shifts.domains. data.path inside the folder but not one domain (a class folder,
    the folder itself) is bad input."""
    if not cfg.domains or data.source != "imagefolder" or not data.path:
        return ""
    top, path = os.path.realpath(root(cfg)), os.path.realpath(Path(data.path).expanduser())
    if path != top and not path.startswith(top + os.sep):
        return ""
    rel = os.path.relpath(path, top)
    if rel == "." or os.sep in rel:
        raise ConfigError("data.path", f"{_short(data.path)} lies inside shifts.domains ({_short(cfg.domains)}) but is "
                          f"not one of its domains; give the folder of one domain, <domains>/<name> (its classes are "
                          f"the study's, the other domains are evaluated)")
    return rel


def study_classes(data: Data) -> list[str]:
    """The study's class names in label order, without building the data (harness.data's builders name them so)."""
    from harness import data as datamod

    if data.source == "digits":
        return ["even", "odd"] if data.task == "parity" else [str(c) for c in data.target_classes]
    if data.source == "imagefolder":
        return imagefiles.listing(datamod.folder_splits(datamod._root(data))).classes
    return [str(c) for c in datamod._torchvision_sets(data)[0].classes]


def _listing(folder: Path) -> imagefiles.Listing:
    """imagefiles.listing of one domain folder (links followed, each file once, loops refused), its errors keyed
    shifts.domains."""
    try:
        return imagefiles.listing({"all": folder})
    except ConfigError as e:
        raise _bad(str(e).split(": ", 1)[1]) from None


def check_classes(name: str, found: list[str], classes: list[str]) -> None:
    """A domain's class folders (sorted) must be the study's classes in its order: the label of an image is the
    position of its folder, so a missing, extra or reordered class would score every image of a class as another."""
    if found == classes:
        return
    extra = [c for c in found if c not in classes]
    missing = [c for c in classes if c not in found]
    if extra:
        why = f"class folder {_short(extra[0])} is not one of the study's classes"
    elif missing:
        why = f"class {_short(missing[0])} of the study has no folder"
    else:
        i = next(i for i, (a, b) in enumerate(zip(found, classes)) if a != b)
        why = (f"class {_short(found[i])} is at position {i} in sorted folder order, the study's class there is "
               f"{_short(classes[i])} (labels are positions: rename the folders so their sorted order is the study's)")
    raise _bad(f"domain {_short(name)}: {why}; the study's classes, in order: {_short(classes)}; the domain's: "
               f"{_short(found)}")


def rows(labels: torch.Tensor, cfg: Shifts) -> torch.Tensor:
    """The images of one domain evaluated: eval_images of them, class-stratified, seeded by shifts.seed (0 = all)."""
    from harness import data as datamod

    if cfg.eval_images and cfg.eval_images < len(labels):
        frac = cfg.eval_images / len(labels)
        return datamod.stratified_split(labels, [frac, 1 - frac], torch.Generator().manual_seed(cfg.seed))[0]
    return torch.arange(len(labels))


def listings(cfg: Shifts, classes: list[str], exclude: str = "") -> dict[str, imagefiles.Listing]:
    """Every evaluated domain's listing (all but `exclude`, the study's target), classes checked."""
    names = domains(cfg)
    if exclude and exclude not in names:
        raise _bad(f"the target domain {_short(exclude)} (data.path) is not a domain of {_short(cfg.domains)}")
    out = {}
    for name in (n for n in names if n != exclude):
        lst = _listing(root(cfg) / name)
        check_classes(name, lst.classes, classes)
        out[name] = lst
    if not out:
        raise _bad(f"{_short(cfg.domains)} has no domain besides the target {_short(exclude)}; leave-one-domain-out "
                   f"needs at least two")
    return out


def stamp(cfg: Shifts) -> str:
    """The content address of the domain folder (paths, sizes, mtimes), for the suite's cache key."""
    if not cfg.domains:
        return ""
    return "\n".join(f"{n}|{imagefiles.listing({'all': root(cfg) / n}).stamp}" for n in domains(cfg))


def _key(cfg: Shifts, size: int, classes: list[str], exclude: str) -> tuple:
    return (str(root(cfg)), stamp(cfg), size, cfg.eval_images, cfg.seed, tuple(classes), exclude)


def _decode(cfg: Shifts, size: int, classes: list[str], exclude: str) -> list:
    out = []
    for name, lst in listings(cfg, classes, exclude).items():
        y = torch.tensor([label for _, label in lst.samples["all"]], dtype=torch.long)
        keep = rows(y, cfg)
        x = torch.empty(len(keep), 3, size, size, dtype=torch.uint8)
        for i, r in enumerate(keep.tolist()):
            try:
                x[i] = imagefiles.decode(lst.samples["all"][r][0], size)
            except ConfigError as e:
                raise _bad(f"domain {_short(name)}: {str(e).split(': ', 1)[1]}") from None
        out.append((name, x, y[keep].clone(), str(root(cfg) / name)))
    return out


def preflight(cfg: Config) -> None:
    """Bad input before anything exists: the folder, the names, every evaluated domain's classes against the study's,
    and the images evaluated decoded (kept for read)."""
    if not cfg.shifts.domains:
        return
    exclude = target_of(cfg.data, cfg.shifts)
    classes = study_classes(cfg.data)
    key = _key(cfg.shifts, cfg.data.image_size, classes, exclude)
    _DECODED.clear()  # one study's domains wait at a time
    _DECODED[key] = _decode(cfg.shifts, cfg.data.image_size, classes, exclude)


def read(cfg: Shifts, size: int, classes: list[str], exclude: str = "") -> list[tuple]:
    """(name, images uint8 [n, 3, size, size] (held as decoded, converted per batch like every set: issue 26), labels,
    folder) of every evaluated domain: eval_images per domain (stratified, seeded), decoded as data.path's images are
    (short side resized, centre crop)."""
    key = _key(cfg, size, classes, exclude)
    decoded = _DECODED.pop(key, None) or _decode(cfg, size, classes, exclude)
    return [(name, x, y, src) for name, x, y, src in decoded]

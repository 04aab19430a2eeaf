"""A study's evaluation sets (EvalSet), built once per study from fixed seeds, cached on disk, reused by every trial."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from harness import data as datamod, domainfiles, imageops, shiftfiles, shifts, store
from harness.config import Shifts

VERSION = 4  # 3: tensors under index keys, each set described in the file's header (EvalSet); no name parsed back
# 4: shifted sets held as uint8 (issue 26)

FILES_PREFIX = "c10c."  # test shifts read from shifts.files: c10c.<corruption> (no slash: it is a metric name part)

# severity: one image set per severity, the same rows and labels at each (logged at step = severity); set: one image
# set drawn from the study's data (label shift, subpopulation); domain: the images of another domain, one set
# (both logged at step 1)
KINDS = ("severity", "set", "domain")
# The families of the sets that are not registry shifts (a registry shift's family is shifts.FAMILY's), each with
# the kind its sets are: a set of no declared family is an error. ood_acc/<family> averages only a family's held-out
# severity shifts (Suite.shifted); a set of family label, subpopulation or clean has its own metric (schema.SET_ACC)
FAMILIES = {
    "label": "set",  # the test split resampled to a Dirichlet class prior (label shift, Lipton et al. 2018)
    "subpopulation": "set",  # classes held out of fine-tuning (data.holdout_classes)
    "clean": "domain",  # a shifted target domain's clean test images (harness.target): the domain the study left
    "files": "severity",  # a shifts.files corruption the registry does not know
    "domain": "domain",  # a real domain of shifts.domains (harness.domainfiles): domain.<name>, its own images
}


def kind_of(family: str) -> str:
    """The kind a family's sets are: severity for the registry's families, else FAMILIES' entry."""
    if family in FAMILIES:
        return FAMILIES[family]
    if family in shifts.FAMILY.values():
        return "severity"
    raise ValueError(f"unknown evaluation-set family {family!r}: neither a shift family "
                     f"({', '.join(sorted(set(shifts.FAMILY.values())))}) nor one of harness.suite.FAMILIES "
                     f"({', '.join(FAMILIES)})")


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Where a set's images come from."""
    split: str  # the study's split they are drawn from (val, test, subpop); "" when read from a folder
    seed: int  # shifts.seed: the stratified subset, each shift's draws and the label-shift prior come from it
    source: str = ""  # the folder they were read from (shifts.files); "" for the study's own data
    prior: str = ""  # label shift: the distribution its class prior was drawn from, "dirichlet(alpha=...)"


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One evaluation set: logged as shift/<name>/<metric> (step = severity, 1 for a set or domain); a held-out
    severity shift (Suite.shifted) is averaged into ood_acc_mean and ood_acc/<family>, any other set is not."""
    name: str
    family: str
    kind: str  # one of KINDS, the one its family has (kind_of)
    severities: tuple[int, ...]  # a severity set's severities, in config order; () for a set or domain
    images: tuple[torch.Tensor, ...]  # [n, 3, H, W] uint8 (v / 255) or float in [0, 1] (harness.data), one per severity
    labels: torch.Tensor  # int64 [n]: the same rows at every severity
    provenance: Provenance
    prior: torch.Tensor | None = None  # label shift: the class prior its labels were resampled to

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"evaluation set {self.name!r}: unknown kind {self.kind!r}; one of {', '.join(KINDS)}")
        if kind_of(self.family) != self.kind:
            raise ValueError(f"evaluation set {self.name!r}: family {self.family!r} is of kind {kind_of(self.family)!r}, "
                             f"not {self.kind!r}")
        if (self.kind == "severity") != bool(self.severities) or len(self.images) != len(self.steps):
            raise ValueError(f"evaluation set {self.name!r}: {len(self.images)} image sets for severities "
                             f"{self.severities} (a {self.kind} has one per severity)")
        if any(len(x) != len(self.labels) for x in self.images):
            raise ValueError(f"evaluation set {self.name!r}: {[len(x) for x in self.images]} images, "
                             f"{len(self.labels)} labels")

    @property
    def steps(self) -> tuple[int, ...]:
        """The steps its metrics are logged at: the severities, or 1 for a set or domain."""
        return self.severities or (1,)

    @property
    def paired(self) -> bool:
        """Its images are its role's clean subset shifted, row for row (a severity set of the study's own data), so
        per-image comparisons with the clean subset hold: correct.json, the clean error of its relative CE, the
        example grid."""
        return self.kind == "severity" and not self.provenance.source

    def at(self):
        """(step, images) for each severity (one pair for a set or domain)."""
        return zip(self.steps, self.images)


@dataclasses.dataclass(frozen=True)
class Subset:
    """A role's clean images, a fixed stratified subset of its split (shifts.eval_images), which its paired sets shift."""
    images: torch.Tensor
    labels: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Suite:
    """A study's evaluation sets by role: selection may steer model selection, test never does."""
    selection: tuple[EvalSet, ...]  # shifts of the validation subset: all that model selection reads
    test: tuple[EvalSet, ...]  # held out, in evaluation order: the test shifts, shifts.files, then the sets
    clean_selection: Subset
    clean_test: Subset

    @property
    def shifted(self) -> tuple[EvalSet, ...]:
        """The held-out severity shifts: the test sets that are clean_test shifted row for row (EvalSet.paired), the
        one population of ood_acc_mean, ood_acc_worst, the OOD means, ood_acc/<family>, correct.json and the drops
        against clean_test. Not the label-shift, subpopulation or clean sets, nor shifts.files (their own images)."""
        return tuple(e for e in self.test if e.paired)

    @property
    def domains(self) -> tuple[EvalSet, ...]:
        """The real domains of shifts.domains (domain.<name>): their own images, their own family (domains/acc_mean),
        never in ood_acc_mean."""
        return tuple(e for e in self.test if e.family == "domain")

    @property
    def files(self) -> tuple[EvalSet, ...]:
        """The test sets read from shifts.files: severity sets on their own images (files/acc_mean)."""
        return tuple(e for e in self.test if e.kind == "severity" and not e.paired)

    def __post_init__(self):
        names = [e.name for e in self.selection + self.test]
        if len(set(names)) != len(names):  # metrics are keyed by name: a second set would overwrite the first
            raise ValueError(f"evaluation sets named twice: {sorted({n for n in names if names.count(n) > 1})}")
        # a paired set's rows are its clean subset's rows, shifted: the drops and correct.json compare them image by
        # image, so a set whose labels differ from its subset's would compare other images
        for sets, clean in ((self.selection, self.clean_selection), (self.test, self.clean_test)):
            for e in sets:
                if e.paired and not torch.equal(e.labels, clean.labels):
                    raise ValueError(f"evaluation set {e.name!r}: its labels are not its clean subset's, row for row")


def cache_key(cfg: Shifts, data_key: str, exclude: str = "") -> str:
    # the shift code is part of the key: editing a corruption (any file of harness/shifts/, or an image operation it
    # uses) invalidates every cached set built with it
    code = hashlib.sha256((shifts.source() + inspect.getsource(imageops)).encode()).hexdigest()[:12]
    listing = "".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(_npy_files(cfg.files)))
    listing += domainfiles.stamp(cfg)  # an image added to a domain makes a new key
    own = {k: v for k, v in cfg.__dict__.items() if k != "domains" or v}  # no domains: the key it had before them
    key = {"cfg": own, "data": data_key, "code": code, "v": VERSION}
    return store.cache_key({**key, "exclude": exclude} if exclude else key, listing)


def _npy_files(folder: str) -> list[Path]:
    return sorted(Path(folder).expanduser().glob("*.npy")) if folder else []


def file_rows(cfg: Shifts, y: torch.Tensor) -> torch.Tensor:
    """The rows of one block of labels y that shifts.files sets hold (sorted): eval_images of them, class-stratified
    and seeded by shifts.seed (all when 0). The clean test split's same rows are the files' clean images when the
    files were made from it in order, as CIFAR-10-C was (trial.files_clean_acc checks the labels)."""
    if cfg.eval_images and cfg.eval_images < len(y):
        return datamod.stratified_split(y, [cfg.eval_images / len(y), 1 - cfg.eval_images / len(y)],
                                        torch.Generator().manual_seed(cfg.seed))[0].sort().values
    return torch.arange(len(y))


def read_files(cfg: Shifts, size: int, num_classes: int) -> list[EvalSet]:
    """CIFAR-10-C's layout in cfg.files: a severity set c10c.<corruption> per file at shifts.severities (images float
    [n, 3, size, size]), n = eval_images per severity (a stratified subset of the block's labels, seeded by
    shifts.seed, the same images at every severity; 0 = all). Files are memory-mapped and only the subset is read:
    one corruption is 150 MB, the 19 never sit in memory together."""
    folder = Path(cfg.files).expanduser()
    labels, files = shiftfiles.check(cfg, num_classes)  # shape, dtype, range, labels (checked first in the preflight)
    out = []
    for path in files:
        images = np.load(path, mmap_mode="r")
        block = len(labels) // 5
        y = labels[:block]
        keep = file_rows(cfg, y)
        sets = []
        for s in cfg.severities:
            rows = (s - 1) * block + keep.numpy()
            x = shiftfiles.pixels(images, rows)  # uint8 / 255, float [0, 1] as it is
            if x.shape[-1] != size or x.shape[-2] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
                if images.dtype == np.uint8:  # resized 8-bit pixels back to 8 bits, rounded as data._torchvision does
                    x = (x * 255).round().to(torch.uint8)
            elif images.dtype == np.uint8:  # the file's own bytes, held as they are (exact)
                x = torch.from_numpy(np.ascontiguousarray(images[rows])).permute(0, 3, 1, 2)
            sets.append(x.contiguous())
        out.append(EvalSet(FILES_PREFIX + path.stem, shifts.FAMILY.get(path.stem, "files"), "severity",
                           tuple(cfg.severities), tuple(sets), y[keep].clone(),
                           Provenance("", cfg.seed, source=str(folder))))
    return out


def _subset(cfg: Shifts, x: torch.Tensor, y: torch.Tensor) -> Subset:
    if not isinstance(x, torch.Tensor):  # a streamed split (harness.stream): its rows read into memory
        x = x[slice(None)] if not cfg.eval_images or cfg.eval_images >= len(y) else x
    if cfg.eval_images and cfg.eval_images < len(y):
        keep = datamod.stratified_split(y, [cfg.eval_images / len(y), 1 - cfg.eval_images / len(y)],
                                        torch.Generator().manual_seed(cfg.seed))[0]
        x, y = x[keep], y[keep]
    return Subset(x.contiguous(), y.contiguous())


def _shifted(cfg: Shifts, names: list[str], clean: Subset, split: str) -> list[EvalSet]:
    # one fixed seed per (shift, severity): the same set for every trial, every worker, every resume
    # held as uint8 (datamod.quantize: floor, as make_cifar_c stores CIFAR-10-C), a quarter of float32's bytes: each
    # pixel is under 1/255 below the float the shift computed (tests/test_uint8.py bounds what that does to metrics)
    x = datamod.pixels(clean.images)
    return [EvalSet(name, shifts.FAMILY[name], "severity", tuple(cfg.severities),
                    tuple(at_rest(shifts.apply(name, x, s, cfg.seed + 1000 * i + s)).contiguous()
                          for s in cfg.severities), clean.labels, Provenance(split, cfg.seed))
            for i, name in enumerate(names)]


at_rest = datamod.quantize  # how a shifted set is held (a module attribute: a test swaps in the float identity)


def _label_shift(cfg: Shifts, data: dict) -> EvalSet:
    """The test split resampled to class priors drawn from Dirichlet(label_alpha)."""
    x, y = data["test"]
    gen = torch.Generator().manual_seed(cfg.seed)
    prior = shifts.dirichlet_prior(int(y.max()) + 1, cfg.label_alpha, gen)
    idx = shifts.resample_to_prior(y, prior, len(y), gen)
    return EvalSet("label_shift", "label", "set", (), (x[idx].contiguous(),), y[idx].contiguous(),
                   Provenance("test", cfg.seed, prior=f"dirichlet(alpha={cfg.label_alpha})"), prior=prior.float())


def read_domains(cfg: Shifts, size: int, classes: list[str], exclude: str = "") -> list[EvalSet]:
    """shifts.domains: one set domain.<name> per evaluated domain (all but `exclude`, the target), eval_images of its
    images (stratified by class, seeded by shifts.seed; 0 = all) at data.image_size."""
    return [EvalSet(domainfiles.PREFIX + name, "domain", "domain", (), (x.contiguous(),), y,
                    Provenance("", cfg.seed, source=src))
            for name, x, y, src in domainfiles.read(cfg, size, classes, exclude)]


def _build(cfg: Shifts, data: dict, exclude: str = "") -> Suite:
    """The selection shifts on a fixed stratified subset of eval_images validation images, the test shifts on one of
    test images; label shift, shifts.files and the subpopulation set (digits held out of fine-tuning, when
    data.holdout_classes is set). With a target domain (harness.target) the shifts act on the clean images, and the
    clean test subset is a test set of its own, clean. Built in the order of the sets' seeds and calls."""
    clean_sel = _subset(cfg, *data.get("clean_val", data["val"]))
    selection = _shifted(cfg, cfg.selection, clean_sel, "val")
    clean_test = _subset(cfg, *data.get("clean_test", data["test"]))
    sets = []
    if "clean_test" in data:  # the source domain's clean images: an OOD set of the study
        sets.append(EvalSet("clean", "clean", "domain", (), (clean_test.images.clone(),), clean_test.labels.clone(),
                            Provenance("test", cfg.seed)))  # safetensors stores no shared memory
    test = _shifted(cfg, cfg.test, clean_test, "test")
    if cfg.label_alpha > 0:
        sets.append(_label_shift(cfg, data))
    if cfg.files:
        size, k = data["test"][0].shape[-1], len(data.get("classes", [])) or int(data["test"][1].max()) + 1
        test += read_files(cfg, size, k)
    if cfg.domains:
        sets += read_domains(cfg, data["test"][0].shape[-1], list(data["classes"]), exclude)
    if "subpop" in data:
        x, y = data["subpop"]
        sets.append(EvalSet("subpopulation", "subpopulation", "set", (), (x.contiguous(),), y.contiguous(),
                            Provenance("subpop", cfg.seed)))
    return Suite(tuple(selection), tuple(test + sets), clean_sel, clean_test)


def save(suite: Suite, path: Path) -> None:
    """One safetensors file: every tensor under an index key ("0", "1", ...; one several sets share, a subset's
    labels, once) and in its header the index, each set's fields with the keys of its tensors."""
    tensors, keys = {}, {}

    def ref(t):
        if t is not None and id(t) not in keys:
            keys[id(t)] = str(len(keys))
            tensors[keys[id(t)]] = t
        return None if t is None else keys[id(t)]

    def entry(e: EvalSet) -> dict:
        return {"name": e.name, "family": e.family, "kind": e.kind, "severities": list(e.severities),
                "images": [ref(x) for x in e.images], "labels": ref(e.labels), "prior": ref(e.prior),
                "provenance": dataclasses.asdict(e.provenance)}

    index = {"version": VERSION,
             "clean": {role: {"images": ref(c.images), "labels": ref(c.labels)}
                       for role, c in (("selection", suite.clean_selection), ("test", suite.clean_test))},
             "selection": [entry(e) for e in suite.selection], "test": [entry(e) for e in suite.test]}
    store.save_tensors(tensors, path, meta=index, inline=True)


def load(path: Path) -> Suite | None:
    """The suite save wrote to path, or None when there is none (or one of another VERSION)."""
    loaded = store.load_tensors(path)
    if loaded is None or not loaded[1] or loaded[1].get("version") != VERSION:
        return None
    tensors, index = loaded

    def get(k: str | None) -> torch.Tensor | None:
        return None if k is None else tensors[k]

    def evalset(d: dict) -> EvalSet:
        return EvalSet(d["name"], d["family"], d["kind"], tuple(d["severities"]), tuple(map(get, d["images"])),
                       get(d["labels"]), Provenance(**d["provenance"]), get(d["prior"]))

    clean = {role: Subset(get(d["images"]), get(d["labels"])) for role, d in index["clean"].items()}
    return Suite(tuple(map(evalset, index["selection"])), tuple(map(evalset, index["test"])), clean["selection"],
                 clean["test"])


def build(cfg: Shifts, data: dict, cache_dir: Path | None, exclude: str = "") -> tuple[Suite, dict]:
    """(suite, info); info has the key, build seconds, whether it was cached, n_sets (the severity sets' count) and
    constants, which reference's severity constants the shifts took at the data's size (shifts.constant_set).
    `exclude`: the real domain that is the study's target (domainfiles.target_of), not evaluated."""
    key = cache_key(cfg, data["key"], exclude)
    path = cache_dir / f"shifts-{key}.safetensors" if cache_dir else None
    t0 = time.perf_counter()
    suite = load(path) if path else None
    cached = suite is not None
    if not cached:
        suite = _build(cfg, data, exclude)
        if path:
            save(suite, path)
    n_sets = sum(len(e.severities) for e in suite.selection + suite.test)
    return suite, {"key": key, "seconds": time.perf_counter() - t0, "cached": cached, "n_sets": n_sets,
                   "constants": shifts.constant_set(data["test"][0].shape[-1])}


def to_device(suite: Suite, device: torch.device) -> Suite:
    """Images and labels on the device (a tensor several sets share moves once); the label-shift prior stays."""
    moved = {}

    def mv(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in moved:
            moved[id(t)] = t.to(device)
        return moved[id(t)]

    def ev(e: EvalSet) -> EvalSet:
        return dataclasses.replace(e, images=tuple(map(mv, e.images)), labels=mv(e.labels))

    return Suite(tuple(map(ev, suite.selection)), tuple(map(ev, suite.test)),
                 Subset(mv(suite.clean_selection.images), mv(suite.clean_selection.labels)),
                 Subset(mv(suite.clean_test.images), mv(suite.clean_test.labels)))

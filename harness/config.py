"""Study configuration: frozen dataclasses loaded from TOML, `--set` overrides, validation that names the key."""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from harness import strategies

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "studies" / "default.toml"

SAMPLERS = ("tpe", "random", "qmc")
PRUNERS = ("median", "hyperband", "none")
OBJECTIVES = ("val_acc", "ood_val_acc", "multi")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant", "step")
DEVICES = ("auto", "cpu", "cuda")
STREAM_OBJECTIVES = ("penalized", "multi")
# The registries' own facts (data sources, models' fixed input sizes, augmentations, stream kinds) live with them;
# the checks import those modules inside themselves, as they import config.


class ConfigError(ValueError):
    """A malformed config or argument; `key` names the offending key (exit code 2)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class NotFound(ConfigError, FileNotFoundError):
    """A ConfigError about a file or folder that is not there; still a FileNotFoundError to whoever catches one."""


@dataclass(frozen=True)
class Study:
    name: str = "default"
    n_trials: int = 12  # target number of finished (completed or pruned) trials
    sampler: str = "tpe"
    pruner: str = "median"
    objective: str = "val_acc"
    seed: int = 0
    prune_warmup: int = 2  # epochs always run before pruning may act, counted from the unfreeze epoch too
    storage: str = ""  # Optuna storage URL; "" = sqlite file mlruns/optuna.db
    tracking_uri: str = ""  # MLflow tracking URI; "" = sqlite:///mlruns/mlflow.db
    device: str = "auto"
    workers: int = 1
    # torch CPU threads of each trial-running process; 0 = the cores this process may use divided among the workers
    # (harness.cores.thread_budget), as Ray Tune's CPUs per trial
    threads_per_worker: int = 0
    timeout: float = 0.0  # seconds; 0 = no limit
    report: bool = True
    # the selected trial's model is logged (pytorch flavour) and registered under this name with alias champion;
    # "" = the study name, "none" = not logged
    registered_model: str = ""
    system_metrics: float = 10.0  # seconds between system-metric samples of a trial (+ one at its end); 0 = off
    # the lr sweep every baseline with an lr gets (full FT, LP-FT), enqueued before the search; [] = 3 log-spaced
    # values inside search.lr (the centres of three equal log bins)
    baseline_lrs: list[float] = field(default_factory=list)
    replicates: int = 1  # training seeds of the selected configuration and of each baseline family's best (1 = none added)


@dataclass(frozen=True)
class Data:
    source: str = "digits"
    path: str = ""  # root of an imagefolder or torchvision dataset
    download: bool = False  # torchvision datasets: only download when asked to
    image_size: int = 32  # 8x8 digits are upsampled to 32x32 so the CIFAR-10-C constants apply unchanged
    labels_per_class: int = 0  # target training labels per class; 0 = all
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    source_classes: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # digits: pretraining task
    target_classes: list[int] = field(default_factory=lambda: [5, 6, 7, 8, 9])  # digits: fine-tuning task
    # digits: "classes" = one label per target digit; "parity" = odd/even (BREEDS-style superclasses), where
    # holdout_classes never appear in fine-tuning and form the subpopulation-shift test set
    task: str = "classes"
    holdout_classes: list[int] = field(default_factory=list)
    # a shifted target domain: "name:severity" (a string, or a list of them for a mixture) applied to the target
    # train/val/test images before fine-tuning (harness.target.target_domain); [] = the clean target task
    target_shift: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Model:
    name: str = "resnet8"
    weights: str = "pretrain"  # "pretrain" | "none" | torchvision weights name | checkpoint path


@dataclass(frozen=True)
class Pretrain:
    epochs: int = 15
    lr: float = 0.05
    batch_size: int = 64


@dataclass(frozen=True)
class Train:
    epochs: int = 6
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    eval_batch_size: int = 64  # resnet8 on 2 CPU cores: 4400 img/s at 64, 2900-3300 at 128-256 (cache); GPUs want more
    compile: bool = False  # torch.compile each trial's model: pays off on a GPU for trials of minutes, not seconds
    # MiB of frozen-prefix outputs a worker keeps across its trials (harness.prefix); 0 = off. The default study's
    # largest prefixes (k = 1, 2: 16 x 32 x 32 floats, 64 KiB an image) take 45 MiB over its 537 training and 179
    # validation images, and 160 MiB more over the 2560 test and shifted images of a trial that never unfreezes:
    # every k of the default study fits in ~520 MiB
    cache_mb: int = 1024
    # "flip_crop": every training batch flipped left-right and shifted by up to 4 px (train.flip_crop), seeded per
    # trial; the training split's prefix is then recomputed every epoch (its images change), evaluation still cached
    augment: str = "none"


@dataclass(frozen=True)
class Search:
    lr: list[float] = field(default_factory=lambda: [1e-3, 0.3])  # log scale
    freeze_layers: list[int] = field(default_factory=lambda: [0, 4])
    unfreeze_epoch: list[int] = field(default_factory=lambda: [1, 6])  # e >= train.epochs means never
    # which groups train (harness.strategies.STRATEGIES): prefix (freeze_layers + unfreeze_epoch), surgical (one group,
    # tune_group, plus the head if tune_head), gradual (ULMFiT, one more group every gradual_every epochs). More than
    # one: a categorical `strategy` the sampler sees, each strategy's parameters sampled only for it
    strategy: list[str] = field(default_factory=lambda: ["prefix"])
    tune_head: list[bool] = field(default_factory=lambda: [True, False])  # surgical: choices for tune_head
    gradual_every: list[int] = field(default_factory=lambda: [1, 2])  # gradual: bounds, epochs between unfreezings
    # enqueue, after the baselines, one surgical trial per group (that group alone, head frozen) at the baselines'
    # lr: Lee et al.'s sweep of which block to tune (needs "surgical" in strategy and false in tune_head)
    surgical_sweep: bool = False


@dataclass(frozen=True)
class Shifts:
    selection: list[str] = field(default_factory=lambda: ["gaussian_blur", "speckle_noise", "saturate"])
    test: list[str] = field(default_factory=lambda: ["gaussian_noise", "defocus_blur", "contrast", "rotate"])
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    label_alpha: float = 1.0  # Dirichlet concentration of the label-shifted test set; 0 = no label shift
    seed: int = 1234  # fixed: shifted sets are materialized once per study
    # images per shifted set: a fixed stratified subset of the split (0 = all). 100 x 5 severities = 500 images
    # per shift keeps evaluation near a quarter of a trial on 2 CPU cores; the clean test set is always whole.
    eval_images: int = 100
    # a folder in CIFAR-10-C's layout (<corruption>.npy: 5 severities x N uint8 HxWx3 images, severity-major, and
    # labels.npy): each file is a test shift "c10c.<corruption>" at shifts.severities, eval_images per severity;
    # "" = none. Alongside the simulated shifts, or instead of them with test = []
    files: str = ""


@dataclass(frozen=True)
class Stream:
    """`python -m harness.sustain`: a drifting stream of T periods and the re-fine-tuning policies replayed on it."""
    kind: str = "severity"  # severity | rotation | prior | recurring (see harness.sustain.STREAMS)
    shift: str = "contrast"  # corruption of the severity ramp; shift A of the recurring stream ("none" = clean)
    shift_b: str = "rotate"  # shift B of the recurring stream ("none" = clean)
    severity: int = 5  # top of the ramps (0 at period 0 up to this at the last); level of the recurring shifts
    phase: int = 2  # recurring: periods per phase, A A B B A A ...
    alpha: float = 0.3  # prior drift: Dirichlet concentration of the final class prior (priors start uniform)
    periods: int = 10  # T
    labelled: int = 50  # labelled images per period, drawn from the stream pool (a held-out part of the train split)
    eval_size: int = 150  # evaluation images per period, from the target test split
    pool_fraction: float = 0.5  # share of the train split held out (per class) as the stream pool; the rest trains
    # the deployed model, so no update or accuracy-monitor reference ever sees an image it was fine-tuned on
    seeds: list[int] = field(default_factory=list)  # replicate seeds (stream, head init, batch order); [] = study.seed
    policies: list[str] = field(default_factory=lambda: ["never", "every", "accuracy", "embedding"])
    k: int = 3  # every: update at periods k-1, 2k-1, ... (0-based), floor(T / k) updates
    drop: float = 10.0  # accuracy trigger: labelled-accuracy drop since the last update, points
    window: int = 1  # accuracy trigger: most recent labelled periods averaged
    auc: float = 0.55  # embedding trigger: domain-classifier ROC AUC above this fires (Evidently's default)
    mmd: float = 0.015  # mmd trigger: unbiased MMD^2 (RBF, median heuristic) above this fires (Evidently)
    lr: float = 0.01  # update fine-tune
    freeze_layers: int = 0  # update fine-tune: first k layer groups frozen
    epochs: int = 5  # update fine-tune: epochs over the period's batch plus replay
    replay: int = 2  # previous periods' labelled batches added to each update
    # register every policy run's models as versions of "<study>-<policy>-seed<s>" (deployed = version 1, one per
    # update, alias production on the current one); off by default: it costs about a second per version on CPU
    register_models: bool = False
    init_lr: float = 0.03  # the deployed model: pretrained, fully fine-tuned for train.epochs on the clean train split
    # minus the stream pool
    search: bool = False  # true: an Optuna study searches the policy instead of replaying `policies`
    objective: str = "penalized"  # penalized: mean acc - cost * update share; multi: (mean acc, update share), the
    # update share = update_examples / (T * labelled * (1 + replay) * epochs), 1 when every period updates
    cost: float = 0.1  # lambda of the penalized objective
    search_policies: list[str] = field(default_factory=lambda: ["every", "accuracy", "embedding"])
    search_k: list[int] = field(default_factory=lambda: [1, 5])
    search_drop: list[float] = field(default_factory=lambda: [2.0, 20.0])
    search_auc: list[float] = field(default_factory=lambda: [0.52, 0.8])
    search_mmd: list[float] = field(default_factory=lambda: [0.005, 0.1])  # log scale
    search_lr: list[float] = field(default_factory=lambda: [1e-3, 0.1])  # log scale
    search_freeze_layers: list[int] = field(default_factory=lambda: [0, 4])


@dataclass(frozen=True)
class Config:
    study: Study = field(default_factory=Study)
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    pretrain: Pretrain = field(default_factory=Pretrain)
    train: Train = field(default_factory=Train)
    search: Search = field(default_factory=Search)
    shifts: Shifts = field(default_factory=Shifts)
    stream: Stream = field(default_factory=Stream)


# section name -> its dataclass, in file order
SECTIONS = {f.name: f.default_factory().__class__ for f in dataclasses.fields(Config)}


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


# TOML integers are 64-bit, but Python reads any number of digits: a key's value must fit what torch, numpy and the
# stores accept (seeds: numpy's 0..2^32-1, checked in _check_study)
INT_LIMIT = 2**63


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


def _coerce(key: str, value, tp):
    """Check one value against a field type; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected {_a(_type_name(tp))}, got {_short(value)}")
        (item,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return _coerce(key, float(value), float)
        except OverflowError:  # an integer of 400 digits: no float holds it
            raise ConfigError(key, f"expected a finite number, got {_short(value)} (beyond a float's ~1.8e308)") from None
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(key, f"expected {_a(_type_name(tp))}, got {_short(value)}")
    if tp is int and not -INT_LIMIT < value < INT_LIMIT:
        raise ConfigError(key, f"expected an integer of at most 64 bits (|value| < 2^63), got {_short(value)}")
    if tp is float and not math.isfinite(value):  # TOML has nan and inf; no key of ours means anything with them
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    return value


def _short(value) -> str:
    """repr(value), cut in the middle when long (a 400-digit number), so a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:28]}...{text[-12:]} ({len(text)} characters)"


def _section(name: str, values: dict):
    if name == "data" and isinstance(values.get("target_shift"), str):  # one shift may be written without a list
        values = {**values, "target_shift": [values["target_shift"]]}
    cls = SECTIONS[name]
    hints = typing.get_type_hints(cls)
    allowed = list(hints)
    for key in values:
        if key not in hints:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ConfigError(f"{name}.{key}", f"unknown key{hint}; allowed keys in [{name}]: {', '.join(allowed)}")
    return cls(**{k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()})


def parse_override(text: str) -> tuple[str, str, object]:
    """'section.key=value' -> (section, key, value); the value is read as TOML, else as a bare string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError("--set", f"expected SECTION.KEY=VALUE, got {text!r}")
    path, raw = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare strings such as model.name=resnet18 need no quotes
    return section, key, value


def from_dict(raw: dict) -> Config:
    for name, values in raw.items():
        if name not in SECTIONS:
            raise ConfigError(name, f"unknown section; allowed sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(name, "expected a table of keys")
    cfg = Config(**{name: _section(name, values) for name, values in raw.items()})
    validate(cfg)
    return cfg


def load(path: str | Path | None = None, overrides: list[str] = (), **flags) -> Config:
    """Read a TOML study file, apply `--set` overrides then CLI flags (section.key -> value), validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if path.is_dir():
        raise ConfigError("--config", f"{path} is a folder; give the study's TOML file (e.g. studies/default.toml)")
    if not path.is_file():
        raise ConfigError("--config", f"file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("--config", f"{path} is not valid UTF-8 TOML: {e}") from None

    def table(section):
        if section not in SECTIONS:
            raise ConfigError(section, f"unknown section; allowed sections: {', '.join(SECTIONS)}")
        if not isinstance(raw.setdefault(section, {}), dict):
            raise ConfigError(section, "expected a table of keys")
        return raw[section]

    for text in overrides:
        section, key, value = parse_override(text)
        table(section)[key] = value
    for dotted, value in flags.items():
        if value is not None:
            section, key = dotted.split(".")
            table(section)[key] = value
    return from_dict(raw)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML (logged with every study; loads back to the same Config)."""
    def fmt(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    lines = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {fmt(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def _choice(key, value, allowed):
    if value not in allowed:
        raise ConfigError(key, f"{value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _bounds(key, pair, low_min=None):
    if len(pair) != 2:
        raise ConfigError(key, f"expected [low, high], got {pair!r}")
    low, high = pair
    if low > high:
        raise ConfigError(key, f"reversed bounds [{low}, {high}]: low must be <= high")
    if low_min is not None and low < low_min:
        raise ConfigError(key, f"low bound {low} must be >= {low_min}")


def _positive(key, value, allow_zero=False):
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_study(cfg: Config) -> None:
    """The [study] section(s): choices, ranges and cross-key rules."""
    s = cfg.study
    if not s.name or any(c in s.name for c in "/\\\0") or len(s.name) > 200:
        raise ConfigError("study.name", f"must be 1-200 characters without slashes, got {s.name!r}")
    _positive("study.n_trials", s.n_trials)
    _choice("study.sampler", s.sampler, SAMPLERS)
    _choice("study.pruner", s.pruner, PRUNERS)
    _choice("study.objective", s.objective, OBJECTIVES)
    _positive("study.prune_warmup", s.prune_warmup, allow_zero=True)
    _choice("study.device", s.device, DEVICES)
    _positive("study.workers", s.workers)
    if s.threads_per_worker < 0:
        raise ConfigError("study.threads_per_worker", f"must be 0 (the cores divided among the workers) or a number "
                          f"of threads >= 1, got {s.threads_per_worker}")
    _positive("study.timeout", s.timeout, allow_zero=True)
    if not 0 <= s.seed < 2**32:  # numpy's and the samplers' seed range
        raise ConfigError("study.seed", f"must be in 0..{2**32 - 1} (numpy's seed range), got {_short(s.seed)}")
    _positive("study.system_metrics", s.system_metrics, allow_zero=True)
    if len(s.registered_model) > 200 or any(c in s.registered_model for c in "/\\\0:@"):
        raise ConfigError("study.registered_model", f"must be at most 200 characters without / \\ : @, "
                          f"got {s.registered_model!r}")
    _positive("study.replicates", s.replicates)
    if any(not (math.isfinite(v) and v > 0) for v in s.baseline_lrs):
        raise ConfigError("study.baseline_lrs", f"every lr must be finite and > 0, got {s.baseline_lrs}")


def _check_data(cfg: Config) -> None:
    """The [data] section(s): choices, ranges and cross-key rules."""
    from harness import data as datamod  # the source registry; imported here because data imports config

    d = cfg.data
    _choice("data.source", d.source, tuple(datamod.BUILDERS))
    if d.source != "digits" and not d.path:
        raise ConfigError("data.path", f"required for data.source = {d.source!r} (the dataset's root folder)")
    if d.path and d.source != "digits" and not d.download and not Path(d.path).exists():
        raise ConfigError("data.path", f"path does not exist: {d.path}")
    if not 8 <= d.image_size <= 1024:
        raise ConfigError("data.image_size", f"must be in [8, 1024], got {d.image_size}")
    _positive("data.labels_per_class", d.labels_per_class, allow_zero=True)
    for key in ("val_fraction", "test_fraction"):
        if not 0 < getattr(d, key) < 1:
            raise ConfigError(f"data.{key}", f"must be in (0, 1), got {getattr(d, key)}")
    if d.val_fraction + d.test_fraction >= 1:
        raise ConfigError("data.test_fraction", "val_fraction + test_fraction must be < 1")
    if d.source == "digits":
        for key in ("source_classes", "target_classes"):
            classes = getattr(d, key)
            if len(classes) < 2 or len(set(classes)) != len(classes) or not all(0 <= c <= 9 for c in classes):
                raise ConfigError(f"data.{key}", f"needs >= 2 distinct digits in 0..9, got {classes}")
        if set(d.source_classes) & set(d.target_classes):
            raise ConfigError("data.target_classes", "must not overlap data.source_classes")
    _choice("data.task", d.task, ("classes", "parity"))
    if d.task == "classes" and d.holdout_classes:
        raise ConfigError("data.holdout_classes", "only used with data.task = 'parity' (subpopulation shift)")
    if d.task == "parity":
        if d.source != "digits":
            raise ConfigError("data.task", "'parity' is defined on digits (data.source = 'digits')")
        if not set(d.holdout_classes) <= set(d.target_classes):
            raise ConfigError("data.holdout_classes", f"must be among data.target_classes {d.target_classes}")
        seen = set(d.target_classes) - set(d.holdout_classes)
        if {c % 2 for c in seen} != {0, 1}:
            raise ConfigError("data.holdout_classes", f"fine-tuning digits {sorted(seen)} must include odd and even ones")


def target_shifts(d: Data, known=None) -> list[tuple[str, int]]:
    """data.target_shift as (shift name, severity) pairs: the one parser of the key, for config validation (the form,
    no shift twice), preflight (`known`: the shift registry, which this module cannot import) and the builder
    (harness.target). ConfigError naming data.target_shift otherwise."""
    out = []
    for text in d.target_shift:
        name, _, sev = text.partition(":")
        if not name or not sev.strip().isdigit() or not 1 <= int(sev) <= 5:
            raise ConfigError("data.target_shift", f"expected \"name:severity\" with severity 1..5, got {text!r}")
        out.append((name.strip(), int(sev)))
    if len({n for n, _ in out}) != len(out):
        raise ConfigError("data.target_shift", f"lists a shift twice: {d.target_shift}")
    for name, _ in out if known is not None else ():
        if name not in known:
            raise ConfigError("data.target_shift", f"unknown shift {name!r}; allowed: {', '.join(known)}")
    return out


def _check_model(cfg: Config) -> None:
    """The [model, pretrain, train] section(s): choices, ranges and cross-key rules."""
    from harness import train  # augmentations, with the training loop
    from harness.models import FIXED_IMAGE_SIZE  # with the model registry

    d, m, p, t = cfg.data, cfg.model, cfg.pretrain, cfg.train
    if not m.name:
        raise ConfigError("model.name", "must not be empty")
    if m.name in FIXED_IMAGE_SIZE and d.image_size != FIXED_IMAGE_SIZE[m.name]:
        raise ConfigError("data.image_size", f"model {m.name} needs data.image_size = {FIXED_IMAGE_SIZE[m.name]}, "
                          f"got {d.image_size}")
    if m.weights == "pretrain" and d.source != "digits":
        raise ConfigError("model.weights", "'pretrain' (source-task pretraining) needs data.source = 'digits'")
    for key in ("epochs", "lr", "batch_size"):
        _positive(f"pretrain.{key}", getattr(p, key))
    _positive("train.epochs", t.epochs)
    _positive("train.batch_size", t.batch_size)
    _positive("train.eval_batch_size", t.eval_batch_size)
    _choice("train.optimizer", t.optimizer, OPTIMIZERS)
    _choice("train.schedule", t.schedule, SCHEDULES)
    _positive("train.cache_mb", t.cache_mb, allow_zero=True)
    _choice("train.augment", t.augment, train.AUGMENTS)
    if not 0 <= t.momentum < 1:
        raise ConfigError("train.momentum", f"must be in [0, 1), got {t.momentum}")
    _positive("train.weight_decay", t.weight_decay, allow_zero=True)


def _check_search(cfg: Config) -> None:
    """The [search] section(s): choices, ranges and cross-key rules."""
    q = cfg.search
    _bounds("search.lr", q.lr)
    if q.lr[0] <= 0:
        raise ConfigError("search.lr", f"bounds must be > 0 (log scale), got {q.lr}")
    _bounds("search.freeze_layers", q.freeze_layers, low_min=0)
    _bounds("search.unfreeze_epoch", q.unfreeze_epoch, low_min=1)
    known = strategies.searched()
    if not q.strategy or len(set(q.strategy)) != len(q.strategy):
        raise ConfigError("search.strategy", f"needs distinct strategies among {', '.join(known)}, got {q.strategy}")
    for name in q.strategy:
        _choice("search.strategy", name, known)
    if not q.tune_head or len(set(q.tune_head)) != len(q.tune_head):
        raise ConfigError("search.tune_head", f"needs distinct booleans (true, false or both), got {q.tune_head}")
    _bounds("search.gradual_every", q.gradual_every, low_min=1)
    if q.surgical_sweep and ("surgical" not in q.strategy or False not in q.tune_head):
        raise ConfigError("search.surgical_sweep", "needs \"surgical\" in search.strategy and false in search.tune_head")


def _check_shifts(cfg: Config) -> None:
    """The [shifts] section(s): choices, ranges and cross-key rules."""
    s, sh = cfg.study, cfg.shifts
    for key in ("selection", "test"):
        if len(set(getattr(sh, key))) != len(getattr(sh, key)):
            raise ConfigError(f"shifts.{key}", "lists a shift twice")
    both = sorted(set(sh.selection) & set(sh.test))
    if both:
        raise ConfigError("shifts.test", f"selection and test shifts must be disjoint; both list {', '.join(both)}")
    if not sh.severities or not all(1 <= v <= 5 for v in sh.severities) or len(set(sh.severities)) != len(sh.severities):
        raise ConfigError("shifts.severities", f"must be distinct integers in 1..5, got {sh.severities}")
    _positive("shifts.label_alpha", sh.label_alpha, allow_zero=True)
    _positive("shifts.eval_images", sh.eval_images, allow_zero=True)
    if sh.files and not (Path(sh.files).expanduser() / "labels.npy").is_file():
        raise ConfigError("shifts.files", f"{sh.files} has no labels.npy (expected CIFAR-10-C's layout: "
                          "<corruption>.npy files of 5 x N images and labels.npy)")
    domain = {n for n, _ in target_shifts(cfg.data)}
    for key in ("test", "selection"):  # the target domain is in-distribution for the study, never an OOD set
        both = sorted(domain & set(getattr(sh, key)))
        if both:
            raise ConfigError("data.target_shift", f"{', '.join(both)} is the target domain and cannot also be a "
                              f"{'test' if key == 'test' else 'selection'} shift (shifts.{key}); remove it there")
    if s.objective in ("ood_val_acc", "multi") and not sh.selection:
        raise ConfigError("study.objective", f"{s.objective!r} needs at least one shift in shifts.selection")


def _check_stream(cfg: Config) -> None:
    """The [stream] section(s): choices, ranges and cross-key rules."""
    from harness.sustain import streams  # the stream registry STREAMS

    st = cfg.stream
    _choice("stream.kind", st.kind, tuple(streams.STREAMS))
    _choice("stream.objective", st.objective, STREAM_OBJECTIVES)
    for key in ("policies", "search_policies"):
        names = getattr(st, key)
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"stream.{key}", f"needs distinct policy names, got {names}")
    if not 1 <= st.severity <= 5:
        raise ConfigError("stream.severity", f"must be in 1..5, got {st.severity}")
    if st.periods < 2:
        raise ConfigError("stream.periods", f"must be >= 2 (backward transfer needs T - 1 > 0), got {st.periods}")
    for key in ("phase", "labelled", "eval_size", "k", "window", "epochs", "lr", "init_lr", "alpha"):
        _positive(f"stream.{key}", getattr(st, key))
    for key in ("replay", "freeze_layers", "drop", "mmd", "cost"):
        _positive(f"stream.{key}", getattr(st, key), allow_zero=True)
    if not 0 < st.pool_fraction < 1:
        raise ConfigError("stream.pool_fraction", f"must be in (0, 1), got {st.pool_fraction}")
    if not 0.5 <= st.auc < 1:
        raise ConfigError("stream.auc", f"must be in [0.5, 1), got {st.auc}")
    if len(set(st.seeds)) != len(st.seeds) or any(not 0 <= v < 2**32 for v in st.seeds):
        raise ConfigError("stream.seeds", f"must be distinct integers in 0..{2**32 - 1}, got {_short(st.seeds)}")
    _bounds("stream.search_k", st.search_k, low_min=1)
    _bounds("stream.search_drop", st.search_drop, low_min=0)
    _bounds("stream.search_auc", st.search_auc, low_min=0.5)
    _bounds("stream.search_freeze_layers", st.search_freeze_layers, low_min=0)
    for key in ("search_mmd", "search_lr"):  # log scale
        _bounds(f"stream.{key}", getattr(st, key))
        if getattr(st, key)[0] <= 0:
            raise ConfigError(f"stream.{key}", f"bounds must be > 0 (log scale), got {getattr(st, key)}")


# one checker per section, in the order of the file: the first offending key is the one named
CHECKS = (_check_study, _check_data, _check_model, _check_search, _check_shifts, _check_stream)


def validate(cfg: Config) -> None:
    """Checks that need no file system or model; names the first offending key."""
    for check in CHECKS:
        check(cfg)
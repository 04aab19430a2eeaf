"""Validation of a loaded config: one check per section, in file order, naming the first offending key (exit 2).
Checks that need a registry's facts import its module inside themselves (config is the top layer)."""

from __future__ import annotations

import math
import re
from pathlib import Path

from harness import strategies
from harness.config.errors import ConfigError, _short
from harness.config.sections import (DEVICES, OBJECTIVES, OPTIMIZERS, PRUNERS, SAMPLERS, SCHEDULES, STREAM_OBJECTIVES,
                                     Config, Data)


def _choice(key, value, allowed):
    if value not in allowed:
        raise ConfigError(key, f"{_short(value)} is not allowed; choose one of: {', '.join(allowed)}")


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


NAME_BYTES = 200  # a study name is an MLflow experiment, an Optuna study and a report folder: ext4 allows 255 bytes


def _check_name(name: str) -> None:
    """study.name: 1..NAME_BYTES bytes of UTF-8 (a 70-emoji name is 280 bytes: over a file name's 255), and nothing
    that climbs out of, or hides in, the folders named after it: no '.' or '..', no slash, backslash, NUL or other
    control character, no leading '-' (read as a flag by the commands printed with it)."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: argv bytes that were not UTF-8
        raise ConfigError("study.name", f"is not valid UTF-8 text, got {_short(name)}") from None
    why = ("must not be empty" if not name else
           f"is {size} bytes of UTF-8; at most {NAME_BYTES}" if size > NAME_BYTES else
           "must not be '.' or '..' (a folder of its own parent)" if name in (".", "..") else
           "must not contain '/', '\\', NUL or another control character" if any(
               c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in name) else
           "must not start with '-' (a command line would read it as a flag)" if name.startswith("-") else "")
    if why:
        raise ConfigError("study.name", f"{why}, got {_short(name)}")


def _check_study(cfg: Config) -> None:
    """The [study] section(s): choices, ranges and cross-key rules."""
    s = cfg.study
    _check_name(s.name)
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
                          f"got {_short(s.registered_model)}")
    _positive("study.replicates", s.replicates)
    _positive("study.finalists", s.finalists)
    _positive("study.keep_weights", s.keep_weights, allow_zero=True)
    _positive("study.keep_weights_mb", s.keep_weights_mb, allow_zero=True)
    _positive("study.budget_seeds", s.budget_seeds)
    if any(not isinstance(b, int) or b < 0 for b in s.label_budgets) or len(set(s.label_budgets)) != len(s.label_budgets):
        raise ConfigError("study.label_budgets", f"must be distinct labels per class, each an integer >= 0 (0 = all), "
                          f"got {_short(s.label_budgets)}")
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
    if not 0 < d.memory_budget <= 1:  # NaN fails this too
        raise ConfigError("data.memory_budget", f"must be a share of the available RAM in (0, 1] (0.5 = half), got "
                          f"{d.memory_budget}")
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
        # ASCII digits only: str.isdigit() accepts '²', which int() then refuses (a traceback)
        if not name or not re.fullmatch(r"[0-9]{1,2}", sev.strip()) or not 1 <= int(sev) <= 5:
            raise ConfigError("data.target_shift", f"expected \"name:severity\" with severity 1..5, got {_short(text)}")
        out.append((name.strip(), int(sev)))
    if len({n for n, _ in out}) != len(out):
        raise ConfigError("data.target_shift", f"lists a shift twice: {d.target_shift}")
    for name, _ in out if known is not None else ():
        if name not in known:
            raise ConfigError("data.target_shift", f"unknown shift {_short(name)}; allowed: {', '.join(known)}")
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
    _choice("train.bn", t.bn, strategies.BN_MODES)
    _choice("train.select_epoch", t.select_epoch, strategies.SELECT_EPOCHS)


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
    _choice("search.extend_baseline_grid", q.extend_baseline_grid, ("within", "widen", "off"))  # baseline_grid.MODES
    _positive("search.baseline_extensions", q.baseline_extensions, allow_zero=True)
    if q.surgical_sweep and ("surgical" not in q.strategy or (False not in q.tune_head and not q.surgical_groups)):
        raise ConfigError("search.surgical_sweep", "needs \"surgical\" in search.strategy and false in search.tune_head "
                          "(or search.surgical_groups)")
    if len(set(q.bn)) != len(q.bn):
        raise ConfigError("search.bn", f"lists a mode twice: {q.bn}; allowed: {', '.join(strategies.BN_MODES)}")
    for mode in q.bn:
        _choice("search.bn", mode, strategies.BN_MODES)
    # the parts' names are checked against the model's groups where the model is built (harness.launch.check)
    for choice in q.surgical_groups:
        parts = str(choice).split("+") if isinstance(choice, str) else [""]
        if not all(x.strip() for x in parts):
            raise ConfigError("search.surgical_groups", f"{choice!r}: a choice is a group name or names joined by '+' "
                              "(e.g. \"stem+layer1\", \"head\")")
    for choice in q.bn_contrast:
        _choice("search.bn_contrast", choice, q.surgical_groups)
    if q.bn_contrast and (len(q.bn) < 2 or cfg.train.bn not in q.bn):
        raise ConfigError("search.bn_contrast", f"needs search.bn to list train.bn ({cfg.train.bn}) and another mode, "
                          f"got {q.bn}")
    if len(set(q.surgical_groups)) != len(q.surgical_groups):
        raise ConfigError("search.surgical_groups", f"lists a choice twice: {q.surgical_groups}")


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
        raise ConfigError("shifts.files", f"{_short(sh.files)} has no labels.npy (expected CIFAR-10-C's layout: "
                          "<corruption>.npy files of 5 x N images and labels.npy)")
    if sh.domains and not Path(sh.domains).expanduser().is_dir():
        raise ConfigError("shifts.domains", f"{_short(sh.domains)} is not a folder (expected <domain>/<class>/<image>, "
                          "as DomainBed and WILDS lay out their domains)")
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
    for key in ("phase", "labelled", "eval_size", "k", "window", "epochs", "lr", "init_lr", "alpha", "init_epochs",
                "init_patience"):
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

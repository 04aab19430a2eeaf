"""The fine-tuning strategy registry STRATEGIES (one entry per way of fine-tuning) and the baseline families."""

# Pure Python on purpose: config validates search.strategy against it and the report reads it, and neither may import
# torch (the report's CLI is checked to run without it); a hook that needs torch imports it inside.

from __future__ import annotations

import dataclasses
from typing import Callable


# ------------------------------------------------------------------------------------------------------ params

@dataclasses.dataclass(frozen=True)
class Param:
    """A param a strategy's runs log: what it means (schema.TRIAL_PARAMS) and, when an entry lists it among its axes,
    how the report's hyperparameter plots and fANOVA importances read it."""
    meaning: str
    kind: str = "int"  # an axis's fANOVA distribution, int or float (a float's also spans its search_space.json bounds)
    log: bool = False  # a log axis (fANOVA's scale is linear where an absent value is <= 0)
    absent: float | None = None  # fANOVA's value for a trial without it (one space for every trial); None: left out
    when: str = ""  # read only where this other param is > 0 (else absent, and not drawn)
    never: bool = False  # an epoch where >= train.epochs means never: the plot's last tick says so
    drawn: str = ""  # the trials its plot shows, in words, when not every trial
    note: str = ""  # what the importance table says about it


PARAMS = {
    "lr": Param("peak learning rate", "float", log=True),
    "strategy": Param("which groups train: prefix | surgical | gradual, on every trial and replicate run (the "
                      "baselines: prefix; a run that logs none, from before, is prefix)", "str"),
    "freeze_layers": Param("leading layer groups frozen until unfreeze_epoch (number of groups = linear probe)",
                           absent=0),
    "unfreeze_epoch": Param("epoch from which every group trains (>= train.epochs: never; 0 when nothing is frozen)",
                            absent=0, when="freeze_layers", never=True, drawn="trials with frozen groups",
                            note="unfreeze_epoch is conditional (sampled only when freeze_layers > 0); trials "
                                 "without frozen groups enter as 0, the value MLflow logs for them."),
    "tune_group": Param("surgical: the one group (index from the input, 0 = first) that trains", absent=-1,
                        drawn="surgical trials", note="tune_group: trials that are not surgical enter as -1."),
    "tune_head": Param("surgical: whether the head trains with it (True/False)", "bool"),
    "gradual_every": Param("gradual: epochs between two unfreezings, head first, then the groups from the top down",
                           absent=0, drawn="gradual trials", note="gradual_every: trials that are not gradual enter "
                                                                  "as 0."),
    "tune_set": Param("surgical with search.surgical_groups: the choice that trains, a group or a union a+b (head: the "
                      "head alone)", "str", drawn="surgical trials"),
    "bn": Param("BatchNorm while fine-tuning: train (the trained groups' statistics move) or eval (every BN keeps its "
                "running statistics; Lee et al. 2023)", "str"),
    "probe_c": Param("linear probe and LP-FT: the logistic regression's C (inverse L2 strength) chosen on validation",
                     "float"),
}


# ------------------------------------------------------------------------------------------------------ the entry

@dataclasses.dataclass(frozen=True)
class Fit:
    """What a training hook sees: the model being fine-tuned, its groups, the recipe, and `state`, the hooks' own dict
    for this fit (empty at its start; L2-SP would keep theta_0 there on its first call, before the first step)."""
    model: object
    groups: dict
    recipe: object
    state: dict


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One way of fine-tuning. `p` is a run's params: Optuna's (typed) or MLflow's (strings: the words cast them). Its
    words: run (the run's description, records.strategy), text and unfreeze (the report's two columns), label (its row
    in the report's per-strategy table), short (a figure legend's suffix), cells (the console summary's two columns)."""
    suggest: Callable  # (optuna trial, search section, n_groups) -> its own params, sampled in this order after lr
    space: Callable  # (search section, n_groups) -> its own params' ranges, for search_space.json
    recipe: Callable  # p -> its train.Recipe fields besides strategy (its training settings)
    frozen: Callable  # (recipe, epoch, n_groups) -> what set_frozen gets at that epoch: its freezing schedule
    first_prune: Callable  # (prune_warmup, p, epochs, n_groups) -> epochs it runs before it may be pruned
    words: Callable  # (p, epochs) -> its words wherever it is shown: {run, text, unfreeze, label, short, cells}
    params: tuple  # the params its runs log (PARAMS names, strategy always)
    axes: tuple  # what the report's hyperparameter plots and importances read (PARAMS names)
    lr: bool = True  # it has a learning rate (the linear probe's head is a logistic regression: none)
    trains: bool = True  # fine-tunes through train.fit (the linear probe: no epochs, one step-0 record)
    probe_head: bool = False  # starts from the converged linear probe's head (harness.probe)
    searched: bool = True  # search.strategy may list it (the probe's entries are enqueued baselines only)
    # Training hooks (train.fit); None keeps the plain loop, bit for bit. Under the frozen-prefix cache a batch is the
    # cached outputs of the frozen groups, and a hook must not change a frozen group's weights (the cache serves them).
    loss: Callable | None = None  # (fit, xb, yb, logits) -> a scalar tensor added to the batch's loss (train.LOSSES)
    param_groups: Callable | None = None  # (fit) -> the optimizer's groups: {"params", optional "lr_scale" (a factor
    #                                        on the scheduled lr) and "weight_decay"}, every parameter once
    after_epoch: Callable | None = None  # (fit, epoch) -> None, after the epoch's last step


def _int(v):
    """A param as an int, from Optuna (2) or MLflow ("2"); None stays None."""
    return None if v is None else int(float(v))


# prefix: the first freeze_layers groups frozen until unfreeze_epoch (full fine-tuning: nothing frozen)

def _prefix_suggest(trial, q, n_groups: int) -> dict:
    k = trial.suggest_int("freeze_layers", q.freeze_layers[0], q.freeze_layers[1])
    e = trial.suggest_int("unfreeze_epoch", q.unfreeze_epoch[0], q.unfreeze_epoch[1]) if k > 0 else 0
    return {"freeze_layers": min(k, n_groups), "unfreeze_epoch": e}


def _prefix_space(q, n_groups: int) -> dict:
    return {"freeze_layers": q.freeze_layers, "unfreeze_epoch": q.unfreeze_epoch,
            "unfreeze_epoch_condition": "only when freeze_layers > 0; >= train.epochs means never"}


def _prefix_recipe(p: dict) -> dict:
    return {"freeze_layers": p["freeze_layers"], "unfreeze_epoch": p.get("unfreeze_epoch", 0)}


def _prefix_frozen(r, epoch: int, n_groups: int):
    return r.freeze_layers if epoch < r.unfreeze_epoch else 0  # an int k: the first k groups


def prune_from(warmup: int, k: int, e: int, epochs: int) -> int:
    """How many epochs a prefix trial runs before it may be pruned: prune_warmup, and for a trial that unfreezes at
    epoch e, e + 1 (one epoch with every group training): a frozen model looks worse early and must not be killed for
    it. The linear probe (never unfrozen) only waits the warm-up."""
    return max(warmup, e + 1 if 0 < k and e < epochs else 0)


def _prefix_first_prune(warmup: int, p: dict, epochs: int, n_groups: int) -> int:
    return prune_from(warmup, p["freeze_layers"], p.get("unfreeze_epoch", 0), epochs)


def _prefix_words(p: dict, epochs) -> dict:
    k, e = _int(p.get("freeze_layers")), _int(p.get("unfreeze_epoch"))
    never = e is None or (epochs is not None and e >= epochs)
    if not k:
        text, unfreeze, short, when = "train everything", "-", "(full)", "-"
    else:
        groups = f"freeze {k} group{'s' if k != 1 else ''}"
        text = f"{groups}, never unfreeze" if never else f"{groups}, unfreeze at epoch {e}"
        unfreeze, short = ("never", f"(freeze {k}, never)") if never else (f"epoch {e}", f"(freeze {k}, unfreeze@{e})")
        when = "never" if never else str(e)
    words = {"run": text, "text": text, "unfreeze": unfreeze, "label": "prefix", "short": short,
             "cells": (str(k or 0), when)}
    if k is None:  # no freeze_layers logged: the report leaves its cells blank rather than guess
        words.update(text="", unfreeze="", short="")
    return words


# surgical (Lee et al. 2023): exactly one group, tune_group, trains, plus the head if tune_head; or, with
# search.surgical_groups, the choice tune_set: a group or a union of groups ("stem+layer1"), "head" the head alone

def choice_groups(choice: str, names) -> tuple[int, ...]:
    """The indices into the model's groups `names` (head last) of a surgical choice "a+b+..."; a ValueError naming the
    groups when a part is not one of them or is repeated."""
    parts, names = [x.strip() for x in str(choice).split("+")], list(names)
    bad = [x for x in parts if x not in names]
    if bad or len(set(parts)) != len(parts):
        raise ValueError(f"{choice!r}: each part must be one of the model's groups ({', '.join(names)}), once, joined "
                         f"by '+'" + (f"; unknown: {', '.join(bad)}" if bad else ""))
    return tuple(sorted(names.index(x) for x in parts))


def _surgical_suggest(trial, q, n_groups: int) -> dict:
    if q.surgical_groups:
        return {"tune_set": trial.suggest_categorical("tune_set", q.surgical_groups)}
    return {"tune_group": trial.suggest_int("tune_group", 0, n_groups - 1),
            "tune_head": trial.suggest_categorical("tune_head", q.tune_head)}


def _surgical_recipe(p: dict) -> dict:
    if p.get("tune_set"):  # the names: resolved into group indices against the model (recipe_settings, names)
        return {"tune_set": p["tune_set"]}
    return {"tune_group": p["tune_group"], "tune_head": bool(p["tune_head"])}


def _surgical_frozen(r, epoch: int, n_groups: int):
    """Every group but those that train: tune_set's indices (resolved by recipe_settings), else tune_group and the head
    if tune_head; a set of indices (head = n_groups)."""
    if r.tune_set:
        if isinstance(r.tune_set, str) or not all(0 <= i <= n_groups for i in r.tune_set):
            raise ValueError(f"tune_set must be group indices in [0, {n_groups}], got {r.tune_set!r}")
        return frozenset(i for i in range(n_groups + 1) if i not in r.tune_set)
    if not 0 <= r.tune_group < n_groups:
        raise ValueError(f"tune_group must be in [0, {n_groups - 1}], got {r.tune_group}")
    return frozenset(i for i in range(n_groups + 1) if i != r.tune_group and (i < n_groups or not r.tune_head))


def _surgical_words(p: dict, epochs) -> dict:
    if p.get("tune_set"):
        c = str(p["tune_set"])
        return {"run": f"tune only {c}", "text": f"tune {c} only", "unfreeze": "-", "label": f"surgical: {c}",
                "short": "", "cells": ("surgic", c[:6])}
    g, head = _int(p.get("tune_group")), str(p.get("tune_head")).lower() in ("true", "1", "1.0")
    return {"run": f"tune only group {g}" + (" and the head" if head else ""),
            "text": f"tune group {g} only" + (" and the head" if head else " (head frozen)"),
            "unfreeze": "-", "label": f"surgical: group {g}", "short": "", "cells": ("surgic", f"g{g}")}


# gradual (ULMFiT): the head trains from epoch 0 and one more group joins every gradual_every epochs, top down

def _gradual_frozen(r, epoch: int, n_groups: int):
    """The first n_groups - epoch // gradual_every groups frozen."""
    if r.gradual_every < 1:
        raise ValueError(f"gradual_every must be >= 1, got {r.gradual_every}")
    return max(0, n_groups - epoch // r.gradual_every)


def _gradual_first_prune(warmup: int, p: dict, epochs: int, n_groups: int) -> int:
    """One epoch after its last unfreezing (n_groups * gradual_every), if that comes before the end."""
    last = n_groups * p["gradual_every"]
    return max(warmup, last + 1 if last < epochs else 0)


def _gradual_words(p: dict, epochs) -> dict:
    n = _int(p.get("gradual_every"))
    return {"run": f"unfreeze one group every {n} epochs, head first",
            "text": f"gradual unfreezing, head first, one group every {n} epoch{'s' if n != 1 else ''}",
            "unfreeze": f"every {n}", "label": "gradual", "short": "", "cells": ("gradua", f"/{n}ep")}


# the baselines' own entries (Kumar et al. 2022): prefix trials whose head starts as the converged linear probe

def _probe_words(p: dict, epochs) -> dict:
    return {**_prefix_words(p, epochs), "unfreeze": "never",
            "run": "logistic-regression head on the frozen body's features, C chosen on validation",
            "text": f"logistic regression on frozen features, C {p.get('probe_c', '?')}"}


def _lp_ft_words(p: dict, epochs) -> dict:
    return {**_prefix_words(p, epochs), "unfreeze": "-", "run": "train everything from the linear probe's head",
            "text": "train everything from the linear-probe head"}


PREFIX_AXES = ("lr", "freeze_layers", "unfreeze_epoch")
PREFIX = Strategy(_prefix_suggest, _prefix_space, _prefix_recipe, _prefix_frozen, _prefix_first_prune, _prefix_words,
                  ("lr", "strategy", "freeze_layers", "unfreeze_epoch"), PREFIX_AXES)

# Adding a strategy: its functions and an entry here, its hooks if it has any; harness/config/ only for a new search key.
STRATEGIES = {
    "prefix": PREFIX,
    "surgical": Strategy(
        _surgical_suggest,
        # tune_set's choices ([]: not sampled, tune_group and tune_head are; else they are not)
        lambda q, n: {"tune_group": [0, n - 1], "tune_head": q.tune_head, "tune_set": q.surgical_groups},
        _surgical_recipe, _surgical_frozen,
        lambda warmup, p, epochs, n: warmup,  # the same groups train throughout: the warm-up only
        _surgical_words, ("lr", "strategy", "tune_group", "tune_head", "tune_set"), ("lr", "tune_group")),
    "gradual": Strategy(
        lambda trial, q, n: {"gradual_every": trial.suggest_int("gradual_every", q.gradual_every[0],
                                                                q.gradual_every[1])},
        lambda q, n: {"gradual_every": q.gradual_every}, lambda p: {"gradual_every": p["gradual_every"]},
        _gradual_frozen, _gradual_first_prune, _gradual_words, ("lr", "strategy", "gradual_every"),
        ("lr", "gradual_every")),
    # every group frozen, never unfrozen; the head a logistic regression on the frozen features, C on validation
    "linear_probe": dataclasses.replace(PREFIX, words=_probe_words, axes=("freeze_layers", "unfreeze_epoch"),
                                        params=("strategy", "freeze_layers", "unfreeze_epoch", "probe_c"),
                                        lr=False, trains=False, probe_head=True, searched=False),
    # LP-FT: every group fine-tuned from the probe's head
    "lp_ft": dataclasses.replace(PREFIX, words=_lp_ft_words, params=PREFIX.params + ("probe_c",), probe_head=True,
                                 searched=False),
}


@dataclasses.dataclass(frozen=True)
class Baseline:
    """An enqueued baseline family (tag harness.baseline)."""
    strategy: str  # the STRATEGIES entry that trains it
    label: str  # how the report names it
    params: Callable  # (lr, n_groups, epochs) -> the params it is enqueued with (lr None when its entry has none)
    lr_factor: float = 1.0  # its lr grid is full FT's times this (harness.baseline_grid)


BASELINES = {
    "full_ft": Baseline("prefix", "full FT", lambda lr, n, epochs: {"lr": lr, "freeze_layers": 0}),
    "linear_probe": Baseline("linear_probe", "linear probe",
                             lambda lr, n, epochs: {"freeze_layers": n, "unfreeze_epoch": epochs}),
    # unfreeze_epoch 0 (never sampled when nothing is frozen) so that Optuna's skip_if_exists, which compares the
    # enqueued params, tells LP-FT from full FT at the same lr
    # a decade below full FT's grid: Kumar et al. 2022 fine-tune LP-FT at a smaller lr (the probe's head already fits,
    # and a small lr keeps the pretrained features; issue 22 found LP-FT's best at the lowest point of a shared grid)
    "lp_ft": Baseline("lp_ft", "LP-FT", lambda lr, n, epochs: {"lr": lr, "freeze_layers": 0, "unfreeze_epoch": 0},
                      lr_factor=0.1),
}


# ------------------------------------------------------------------------------------------------------ look-ups

def get(name: str) -> Strategy:
    """The entry of that name. An unknown name is an error naming the known ones, never a default."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def which(p: dict, baseline: str = "") -> str:
    """The name of the entry that trains a run: its baseline family's (full FT: prefix), else its strategy param;
    prefix where it logs none (a prefix-only study's runs, before every run logged it)."""
    if not baseline:
        return p.get("strategy", "prefix")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; known: {', '.join(BASELINES)}")
    return BASELINES[baseline].strategy


def of(p: dict, baseline: str = "") -> Strategy:
    return get(which(p, baseline))


def searched() -> list[str]:
    """The names search.strategy may list."""
    return [name for name, s in STRATEGIES.items() if s.searched]


def recipe_settings(p: dict, baseline: str = "", names=None) -> dict:
    """A run's params as train.Recipe fields: the strategy and its own settings, and bn where the run has one. names:
    the model's groups (head last), which a surgical choice's names resolve against into indices."""
    name = which(p, baseline)
    out = {"strategy": name, **get(name).recipe(p), **({"bn": p["bn"]} if p.get("bn") else {})}
    if isinstance(out.get("tune_set"), str):
        if names is None:
            raise ValueError(f"tune_set {out['tune_set']!r} needs the model's group names")
        out["tune_set"] = choice_groups(out["tune_set"], names)
    return out


BN_MODES = ("train", "eval")  # train.bn, search.bn (config) and train.Recipe.bn
SELECT_EPOCHS = ("last", "best_val")  # train.select_epoch


def bn_words(p: dict) -> str:
    """The suffix a run's words get for its BatchNorm mode: ", BN eval" / ", BN train"; "" where it logs none."""
    return f", BN {p['bn']}" if p.get("bn") else ""


def first_prune(warmup: int, p: dict, epochs: int, n_groups: int, baseline: str = "") -> int:
    """How many epochs a trial runs before it may be pruned, by its strategy."""
    return of(p, baseline).first_prune(warmup, p, epochs, n_groups)


def search_space(q, n_groups: int) -> dict:
    """search_space.json's strategy part: search.strategy, each searchable entry's ranges, which params are whose."""
    out = {"strategy": q.strategy}
    for name in searched():
        out.update(STRATEGIES[name].space(q, n_groups))
    own = {name: [k for k in STRATEGIES[name].params if k not in ("lr", "strategy")] for name in searched()}
    return {**out, "strategy_condition": "; ".join(f"{name}: {', '.join(ks)}" for name, ks in own.items())}


def axes(names) -> list[str]:
    """The hyperparameters the report plots and weighs for trials of these entries: their axes in registry order."""
    present = {n for n in names if get(n)}
    out = []
    for name, s in STRATEGIES.items():
        if name in present:
            out += [a for a in s.axes if a not in out]
    return out

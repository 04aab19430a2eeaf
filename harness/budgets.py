"""Label budgets as a study dimension (issue 25): after the full-budget search, the baselines and the selected
configuration again at each of study.label_budgets labels per class, as child runs tagged with the budget.

Per budget b (labels per class; 0 = the whole train split), in two rounds of post-search units (harness.units: each
runs exactly once across processes, and a re-run plans only the keys it lacks, so a finished (budget, trial, seed)
never runs again):
  1. every baseline trial of the search (full FT's and LP-FT's lr sweeps with their extensions, the converged
     probe) on the first budget seed, a family of one trial (the probe) and the selected trial on every budget seed;
  2. each swept family's best at b (budget_curves.family_bests: validation on the first seed, the selection rule's
     tie order) on the other seeds. The best lr moves with the labels (fewer labels, fewer steps per epoch), so it is
     chosen again at each budget, on validation only.
Seeds are study.seed + 1 ... + study.budget_seeds, all fresh: the selected trial's numbers at b = 0 do not reuse its
search-time run, which won a maximum on validation (its winner's curse). Seed s trains with s (head init, batch
order) on the subset drawn with s (subset): per class, a permutation of the class's training images from generator
seed s, its first b. The subsets of one seed are nested across budgets (the 10-label set holds the 5-label set) and
hold exactly b images of every class; another seed draws another subset, so a budget's seed interval covers which
images were labelled as well as the training randomness.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import torch

from harness import (budget_curves, corruption_error, data as datamod, runs, schema, store, tracking,
                     trial as trialmod, units, workers)
from harness.config import ConfigError

KIND = "budget"  # the post-search unit kind (harness.units)


def seeds(cfg) -> list[int]:
    """The budget seeds: study.seed + 1 ... + study.budget_seeds (fresh: never a search-time run's seed)."""
    return [cfg.study.seed + i for i in range(1, cfg.study.budget_seeds + 1)]


def subset(labels: torch.Tensor, budget: int, seed: int) -> torch.Tensor:
    """The sorted indices of the labelled subset: `budget` images of every class (0: all), the first of a per-class
    permutation drawn from generator seed `seed` (data.per_class). The permutation of a class does not depend on the
    budget, so one seed's subsets are nested."""
    if budget == 0:
        return torch.arange(len(labels))
    return datamod.per_class(labels.cpu(), budget, torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------- the check

def train_labels(cfg, cache_dir: Path | None) -> tuple[torch.Tensor, list[str]]:
    """The target train split's labels and class names without creating anything: the image folder that data.check
    decoded, else the data cache, else built now and handed to data.load (which takes a decoded set once)."""
    key = datamod.cache_key(cfg.data, cfg.study.seed)
    got = datamod._DECODED.get(key)
    if got is None and cache_dir is not None:
        got = store.load_tensors(cache_dir / f"data-{key}.safetensors")
        got = got if got is not None and got[1] is not None else None
    if got is None:
        got = datamod.BUILDERS[cfg.data.source](cfg.data, cfg.study.seed)
        datamod._DECODED[key] = got
    tensors, meta = got
    return tensors["train_y"].long(), list(meta["classes"])


def check(cfg, cache_dir: Path | None) -> None:
    """A budget above a class's training images is bad input (exit 2), before anything is created: a subset could not
    hold exactly that many of the class."""
    budgets = [b for b in cfg.study.label_budgets if b > 0]
    if not budgets:
        return
    y, classes = train_labels(cfg, cache_dir)
    counts = torch.bincount(y, minlength=len(classes)).tolist()
    small = min(range(len(counts)), key=lambda c: counts[c])
    if max(budgets) > counts[small]:
        raise ConfigError("study.label_budgets", f"{max(budgets)} labels per class exceeds the {counts[small]} "
                          f"training images of class {classes[small]!r} (the train split's smallest class); each "
                          f"budget must be at most {counts[small]}, or 0 for all")


# ---------------------------------------------------------------------------------------------------- the runs

_CONTEXTS: dict = {}  # (data key, budget, seed) -> the Context on that subset, built once per process


def labelled(ctx, budget: int, seed: int):
    """The context with its train split cut to the subset (budget, seed): kept for the process, so its tensors keep
    their identity (the prefix cache keys outputs by tensor id) and its dataset inputs are digested once. The data
    key names the subset, so the probe's cached features and fit are the subset's own."""
    key = (ctx.data_cpu["key"], budget, seed)
    if key not in _CONTEXTS:
        idx = subset(ctx.data_cpu["train"][1], budget, seed)
        cut = lambda split: (split[0][idx.to(split[0].device)], split[1][idx.to(split[1].device)])
        data_cpu = {**ctx.data_cpu, "train": cut(ctx.data_cpu["train"]),
                    "key": f"{ctx.data_cpu['key']}-labels{budget}-seed{seed}"}
        data = {**ctx.data, "train": cut(ctx.data["train"]), "key": data_cpu["key"]}
        _CONTEXTS[key] = dataclasses.replace(ctx, data=data, data_cpu=data_cpu,
                                             info={k: v for k, v in ctx.info.items() if k != "dataset_inputs"})
    return _CONTEXTS[key]


@runs.frees_memory
def run_budget(ctx, p: dict, reference: dict | None, on_run=None) -> str:
    """One budget unit: the source trial's configuration (p: "number", "params", "baseline") trained with p["seed"] on
    the subset (p["budget"], p["seed"]) and evaluated on the full suite, on a child run tagged with the budget, the
    source trial and the seed (FINISHED, or FAILED with the reason, re-raised). Returns its run id."""
    bctx = labelled(ctx, p["budget"], p["seed"])
    params = trialmod.source_params(ctx.cfg, p, ctx.n_groups)
    tags = {schema.TAG_PARENT_RUN: ctx.parent_id, schema.TAG_ROLE: schema.ROLE_BUDGET,
            schema.TAG_OPTUNA_STUDY: ctx.cfg.study.name, schema.TAG_REPLICATE_OF: str(p["number"]),
            schema.TAG_SEED: str(p["seed"]), schema.TAG_LABEL_BUDGET: str(p["budget"]),
            schema.TAG_TRAIN_LABELS: str(len(bctx.data_cpu["train"][1])),
            **({schema.TAG_BASELINE: p["baseline"]} if p["baseline"] else {})}
    run_id = ctx.client.create_run(ctx.exp_id, run_name=f"budget{p['budget']}-trial-{p['number']:04d}-seed{p['seed']}",
                                   tags=tags).info.run_id
    tracking.log_params(ctx.client, run_id, {k: v for k, v in params.items() if v is not None})
    if on_run is not None:
        on_run(run_id)
    with runs._open(bctx, run_id, params, p["baseline"]) as run:
        fitted = trialmod.train_trial(None, bctx, params, run, baseline=p["baseline"], seed=p["seed"])
        trialmod.log_run(bctx, run.id, *trialmod.evaluate_trial(fitted, bctx, reference))
        return run.id


def _unit(budget: int, t, seed: int) -> units.Unit:
    return units.Unit(KIND, f"{KIND}:{budget}:{t.number}:{seed}",
                      {"budget": budget, "number": t.number, "params": dict(t.params),
                       "baseline": t.user_attrs.get(schema.ATTR_BASELINE, ""), "seed": seed})


def sweep_units(ctx, study: optuna.Study, selected: int | None) -> list[units.Unit]:
    """Round 1: each baseline trial on the first seed (every seed for a family of one trial), the selected trial on
    every seed; one unit per (budget, trial, seed)."""
    cfg, done = ctx.cfg, study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    fams: dict[str, list] = {}
    for t in done:
        if t.user_attrs.get(schema.ATTR_BASELINE):
            fams.setdefault(t.user_attrs[schema.ATTR_BASELINE], []).append(t)
    todo = []
    for b in cfg.study.label_budgets:
        for ts in fams.values():
            todo += [_unit(b, t, s) for t in ts for s in (seeds(cfg) if len(ts) == 1 else seeds(cfg)[:1])]
        todo += [_unit(b, t, s) for t in done if t.number == selected for s in seeds(cfg)]
    return list({u.key: u for u in todo}.values())  # the selected trial may be a baseline: one run serves both


def budget_rows(ctx) -> list[dict]:
    """The parent's budget runs as budget_curves reads them: {"budget", "number", "seed", "baseline", "status",
    "value" (the objective's validation metric), "run_id"}."""
    key = workers.objective_metric(ctx.cfg)
    found = ctx.client.search_runs([ctx.exp_id], f"tags.`{schema.TAG_PARENT_RUN}` = '{ctx.parent_id}' and "
                                                 f"tags.`{schema.TAG_ROLE}` = '{schema.ROLE_BUDGET}'", max_results=50000)
    return [{"budget": int(r.data.tags[schema.TAG_LABEL_BUDGET]), "number": int(r.data.tags[schema.TAG_REPLICATE_OF]),
             "seed": int(r.data.tags[schema.TAG_SEED]), "baseline": r.data.tags.get(schema.TAG_BASELINE, ""),
             "status": r.info.status, "value": r.data.metrics.get(key), "run_id": r.info.run_id} for r in found]


def seed_units(ctx, study: optuna.Study) -> list[units.Unit]:
    """Round 2: each swept family's best at each budget (on the first seed) on the other seeds."""
    cfg = ctx.cfg
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    bests = budget_curves.family_bests(budget_rows(ctx), seeds(cfg)[0])
    return [_unit(b, by_number[n], s) for (b, _), n in sorted(bests.items()) for s in seeds(cfg)[1:]
            if n in by_number]


def runner(ctx, study: optuna.Study, log=print):
    """The runner of a budget unit (harness.units): one budget run with the CE reference as it stands. Every drain of
    the study's units holds it (workers.post_search too): any process may pop any waiting unit."""
    def run_unit(unit: units.Unit, on_run) -> None:
        p = unit.payload
        log(f"label budget {p['budget'] or 'all'}: trial {p['number']} ({p['baseline'] or 'selected'}) seed {p['seed']}")
        run_budget(ctx, p, corruption_error.ce_reference(study.get_trials(deepcopy=False)), on_run=on_run)

    return run_unit


def _plan(study: optuna.Study, todo: list[units.Unit]) -> str | None:
    """Plan the units of `todo` not COMPLETE: a unit that failed (its run FAILED) is planned again by a re-run, under a
    claim named by the keys left and the failures so far (a retry that fails again is retried by the next re-run, not
    in a loop). None when every unit is complete."""
    companion = units.companion(study)
    done = set(units.keys(companion, states=(optuna.trial.TrialState.COMPLETE,)))
    left = [u for u in todo if u.key not in done]
    if not left:
        return None
    failed = len(units.keys(companion, states=(optuna.trial.TrialState.FAIL,)))
    name = "budgets-" + store.cache_key([sorted(u.key for u in left), failed])[:16]
    units.plan(study, name, left, again=(optuna.trial.TrialState.FAIL,))
    return name


def run(ctx, study: optuna.Study, log=print, worker: int = 0) -> dict:
    """Both rounds, each planned (_plan) and drained; then RUNNING budget runs left by a dead process end FAILED.
    Returns this process's unit counts."""
    if not ctx.cfg.study.label_budgets:
        return {"complete": 0, "failed": 0}
    runners = {"extend": workers.run_extension(ctx, study, worker, log), "replicate": workers.run_replicate(ctx, study, log),
               KIND: runner(ctx, study, log)}
    done = {"complete": 0, "failed": 0}
    selected = workers.selected(ctx, study)
    for plan in (lambda: sweep_units(ctx, study, selected), lambda: seed_units(ctx, study)):
        name = _plan(study, plan())
        if name is None:
            continue
        got = units.drain(study, ctx.client, runners, worker, log, until_planned=name)
        done = {k: done[k] + got[k] for k in done}
    for r in budget_rows(ctx):
        if r["status"] == "RUNNING":
            tracking.end_run(ctx.client, r["run_id"], "FAILED",
                             {schema.TAG_FAIL_REASON: "the process died before the budget run finished"})
    return done

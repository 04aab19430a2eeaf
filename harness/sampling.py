"""A study's Optuna side: its sampler (seeded per trial), its pruner, and the study opened with both."""

from __future__ import annotations

import warnings

import optuna

from harness import bookkeeping, config, schema


def sampler(cfg: config.Config, worker: int = 0):
    """The study's sampler, seeded per trial from (study seed, trial number) (bookkeeping.seed_per_trial): Optuna
    hands out each number once per storage, so every process of the study (--workers, or the same command started
    again on this or another machine) draws its own parameters, and one process alone draws the same sequence on
    every run. `worker` is kept for callers; the seed needs no process identity."""
    s = cfg.study
    if s.sampler == "random":
        return bookkeeping.seed_per_trial(optuna.samplers.RandomSampler(seed=s.seed), s.seed)
    if s.sampler == "qmc":  # one scrambled sequence for the study: trial n takes its point n, whichever process runs it
        return bookkeeping.seed_per_trial(optuna.samplers.QMCSampler(seed=s.seed, scramble=True,
                                                                     warn_independent_sampling=False), s.seed)
    # group=True splits the conditional space (unfreeze_epoch exists only when freeze_layers > 0). constant_liar
    # always: any process may share the study unannounced (the same command on another machine), and the liar
    # ignores the trial being sampled, so a process alone samples exactly as without it (no other trial RUNNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        tpe = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=min(10, max(3, s.n_trials // 3)),
                                         multivariate=True, group=True, constant_liar=True)
    return bookkeeping.seed_per_trial(tpe, s.seed)


class _Searched:
    """The study as the median pruner sees it: its searched trials only (no baseline). The pruner reads get_trials
    and direction (optuna.pruners.PercentilePruner.prune); anything else goes to the study."""

    def __init__(self, study):
        self._study = study

    def get_trials(self, deepcopy=True, states=None):
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states)
                if not t.user_attrs.get(schema.ATTR_BASELINE)]

    def __getattr__(self, name):
        return getattr(self._study, name)


class BaselinesRun(optuna.pruners.BasePruner):
    """Baselines are never pruned, and (median) do not set the bar for the searched trials (issue 22).

    Never pruned: MedianPruner(n_startup_trials=3) let the first three baseline trials (full FT's sweep) finish and
    pruned LP-FT's at epoch 1 of 6, so LP-FT's "sweep" was one lr; a baseline is a reference, and a reference that
    stops early is no reference. Not in the median: the baselines run first and in full, and LP-FT's start from the
    converged probe's head (val ~0.9 at epoch 0 where a searched trial from a fresh head starts near chance), so a
    median over them would hold the searched trials to the baselines' head start; the median is taken over the
    searched trials (its first 3 unprunable, as before), the comparison it was made for. Hyperband's brackets read
    the whole study (its own bookkeeping): there the baselines only skip pruning."""

    def __init__(self, inner, filter_median: bool):
        self._inner, self._filter = inner, filter_median

    def prune(self, study, trial) -> bool:
        if trial.user_attrs.get(schema.ATTR_BASELINE):
            return False
        return self._inner.prune(_Searched(study) if self._filter else study, trial)


def pruner(cfg: config.Config):
    s, epochs = cfg.study, cfg.train.epochs
    if s.pruner == "none" or s.objective == "multi":
        return optuna.pruners.NopPruner()
    if s.pruner == "hyperband":
        return BaselinesRun(optuna.pruners.HyperbandPruner(min_resource=max(1, s.prune_warmup), max_resource=epochs),
                            filter_median=False)
    # the trial gates should_prune by its own warm-up (which counts from the unfreeze epoch)
    return BaselinesRun(optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0), filter_median=True)


def open_study(cfg: config.Config, storage, create: bool, worker: int = 0) -> optuna.Study:
    directions = ["maximize", "maximize"] if cfg.study.objective == "multi" else ["maximize"]
    if create:
        return optuna.create_study(storage=storage, study_name=cfg.study.name, sampler=sampler(cfg, worker),
                                   pruner=pruner(cfg), directions=directions, load_if_exists=True)
    return optuna.load_study(study_name=cfg.study.name, storage=storage, sampler=sampler(cfg, worker),
                             pruner=pruner(cfg))

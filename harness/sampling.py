"""A study's Optuna side: its sampler (seeded per trial), its pruner, and the study opened with both."""

from __future__ import annotations

import warnings

import optuna

from harness import bookkeeping, config


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


def pruner(cfg: config.Config):
    s, epochs = cfg.study, cfg.train.epochs
    if s.pruner == "none" or s.objective == "multi":
        return optuna.pruners.NopPruner()
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, s.prune_warmup), max_resource=epochs)
    # the trial gates should_prune by its own warm-up (which counts from the unfreeze epoch)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def open_study(cfg: config.Config, storage, create: bool, worker: int = 0) -> optuna.Study:
    directions = ["maximize", "maximize"] if cfg.study.objective == "multi" else ["maximize"]
    if create:
        return optuna.create_study(storage=storage, study_name=cfg.study.name, sampler=sampler(cfg, worker),
                                   pruner=pruner(cfg), directions=directions, load_if_exists=True)
    return optuna.load_study(study_name=cfg.study.name, storage=storage, sampler=sampler(cfg, worker),
                             pruner=pruner(cfg))

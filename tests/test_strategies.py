"""The strategy registry: complete entries, a new entry needs no other file, an unknown name is an error everywhere."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

from harness import config, numbers, records, strategies, train, trial

CPU = torch.device("cpu")
EVERY_WORD = {"run", "text", "unfreeze", "label", "short", "cells"}


def test_every_entry_is_complete_and_its_trials_log_what_it_declares():
    """Each entry logs `strategy` (and lr exactly when it has one) and declares only known params and axes; a trial of
    it (a one-strategy study of a searched entry, the enqueued family of a baseline's own entry) logs only what it
    declares, and its words fill every place that shows a strategy; search_space.json names each searched entry's
    params."""
    space = strategies.search_space(config.load(None, ['search.strategy=["prefix", "surgical", "gradual"]']).search, 4)
    assert strategies.searched() == ["prefix", "surgical", "gradual"]
    for name, s in strategies.STRATEGIES.items():
        assert "strategy" in s.params and set(s.params) | set(s.axes) <= set(strategies.PARAMS), name
        assert ("lr" in s.params) == s.lr, name
        family = "" if s.searched else next(f for f, b in strategies.BASELINES.items() if b.strategy == name)
        cfg = config.load(None, [f'search.strategy=["{name}"]']) if s.searched else config.load()
        t = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        if family:
            t.set_user_attr("baseline", family)
        p = trial.with_strategy(cfg, trial.suggest(t, cfg, 4), family)
        assert strategies.which(p, family) == name
        assert {k for k, v in p.items() if v is not None} <= set(s.params), (name, p)
        assert set(s.words(p, cfg.train.epochs)) == EVERY_WORD, name
        if s.searched:
            own = [k for k in s.params if k not in ("lr", "strategy")]
            assert f"{name}: {', '.join(own)}" in space["strategy_condition"] and set(own) <= set(space), name


def test_a_new_entry_is_accepted_by_config_sampled_and_trained(monkeypatch):
    """An entry added to STRATEGIES alone (here prefix's functions with a loss hook) is a valid search.strategy, is
    sampled with its own params and trains through train.fit with its hook; before it is added the name is refused."""
    with pytest.raises(config.ConfigError) as err:
        config.load(None, ['search.strategy=["prefix", "toy"]'])
    assert err.value.key == "search.strategy" and "'toy' is not allowed" in str(err.value)
    calls = []
    toy = dataclasses.replace(strategies.PREFIX, loss=lambda hook, xb, yb, logits: calls.append(1) or 0 * logits.sum())
    monkeypatch.setitem(strategies.STRATEGIES, "toy", toy)
    cfg = config.load(None, ['search.strategy=["prefix", "toy"]'])
    p = trial.suggest(optuna.trial.FixedTrial({"lr": 0.01, "strategy": "toy", "freeze_layers": 0}), cfg, 4)
    assert p == {"lr": 0.01, "strategy": "toy", "freeze_layers": 0, "unfreeze_epoch": 0}
    assert strategies.recipe_settings(p) == {"strategy": "toy", "freeze_layers": 0, "unfreeze_epoch": 0}
    from harness import models

    model, groups = models.build("resnet8", 5, seed=0)
    x, y = torch.rand(32, 3, 16, 16), torch.arange(32) % 5
    list(train.fit(model, groups, x, y, train.Recipe(lr=0.01, epochs=1, batch_size=16, strategy="toy"), 0, CPU))
    assert len(calls) == 2  # its loss term, once a batch
    assert records.strategy({**p, "lr": "0.01"}, 6, 4) == "train everything, lr 0.01"


def test_an_unknown_strategy_is_an_error_wherever_it_is_looked_up():
    """No silent fallback: the registry, config, suggest, the recipe, the freezing schedule, the training loop,
    pruning, the run's words, the report's words and axes all raise naming the unknown strategy (or baseline)."""
    unknown = {"lr": "0.1", "strategy": "layerwise"}
    checks = {
        "get": lambda: strategies.get("layerwise"),
        "of": lambda: strategies.of(unknown),
        "recipe_settings": lambda: strategies.recipe_settings(unknown),
        "first_prune": lambda: strategies.first_prune(2, unknown, 6, 4),
        "axes": lambda: strategies.axes(["prefix", "layerwise"]),
        "frozen_at": lambda: train.frozen_at(train.Recipe(lr=0.1, epochs=1, batch_size=8, strategy="layerwise"), 0, 4),
        "fit": lambda: list(train.fit(torch.nn.Linear(2, 2), {"head": torch.nn.Linear(2, 2)}, torch.zeros(4, 2),
                                      torch.zeros(4, dtype=torch.long),
                                      train.Recipe(lr=0.1, epochs=1, batch_size=2, strategy="layerwise"), 0, CPU)),
        "records.strategy": lambda: records.strategy(unknown, 6, 4),
        "numbers._tuning": lambda: numbers._tuning(unknown, 6),
        "suggest": lambda: trial.suggest(optuna.trial.FixedTrial({"lr": 0.1}), dataclasses.replace(
            config.load(), search=dataclasses.replace(config.Search(), strategy=["layerwise"])), 4),
    }
    for where, check in checks.items():
        try:
            check()
        except ValueError as e:
            assert "unknown strategy 'layerwise'; known: prefix, surgical, gradual" in str(e), (where, e)
        else:
            pytest.fail(f"{where} accepted an unknown strategy")
    for check in (lambda: strategies.of({}, "full_tf"), lambda: records.strategy({"lr": "0.1"}, 6, 4, "full_tf"),
                  lambda: numbers._tuning({}, 6, "full_tf")):
        with pytest.raises(ValueError, match="unknown baseline 'full_tf'; known: full_ft, linear_probe, lp_ft"):
            check()
    with pytest.raises(config.ConfigError, match="search.strategy"):
        config.load(None, ['search.strategy=["prefix", "layerwise"]'])

"""Trial: the conditional search space, baselines, and model selection that cannot see held-out test shifts."""

from __future__ import annotations

import optuna
import pytest
import torch

from harness import config, study, trial

from conftest import TINY


def test_suggest_conditional_space():
    """unfreeze_epoch is sampled only when freeze_layers > 0 (and reported as 0 otherwise)."""
    cfg = config.load(None, ["search.freeze_layers=[0, 0]"])
    p = trial.suggest(optuna.trial.FixedTrial({"lr": 0.01, "freeze_layers": 0}), cfg, 4)
    assert p == {"lr": 0.01, "freeze_layers": 0, "unfreeze_epoch": 0}
    p = trial.suggest(optuna.trial.FixedTrial({"lr": 0.01, "freeze_layers": 2, "unfreeze_epoch": 3}), config.load(), 4)
    assert p["unfreeze_epoch"] == 3


def test_baselines_are_full_ft_linear_probe_lp_ft():
    cfg = config.load()
    b = {x["name"]: x["params"] for x in trial.baselines(cfg, 4)}
    assert list(b) == ["full_ft", "linear_probe", "lp_ft"]
    assert b["full_ft"]["freeze_layers"] == 0
    assert b["linear_probe"] == {**b["linear_probe"], "freeze_layers": 4, "unfreeze_epoch": cfg.train.epochs}
    assert b["lp_ft"]["unfreeze_epoch"] == cfg.train.epochs // 2


def test_selection_metrics_only_receive_selection_sets():
    """selection_metrics is computed from the selection suite alone: poisoning every test set (NaN images)
    leaves it unchanged."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    g = torch.Generator().manual_seed(0)
    sel = {"gaussian_blur": {1: torch.rand(10, 3, 4, 4, generator=g)}}
    y = torch.randint(0, 3, (10,), generator=g)
    clean = trial.selection_metrics(model, sel, y, 8, torch.device("cpu"))
    assert 0 <= clean["ood_val_acc"] <= 1 and set(clean["per_shift"]) == {"gaussian_blur"}


@pytest.mark.slow
def test_test_shifts_never_steer_selection(workdir):
    """Two studies identical but for their held-out test shifts (objective ood_val_acc, TPE): every trial has the
    same params and the same objective value. Held-out shifts are reported only; selection cannot read them."""
    (workdir / "a.toml").write_text(TINY.replace('name = "tiny"', 'name = "a"'))
    (workdir / "b.toml").write_text(TINY.replace('name = "tiny"', 'name = "b"')
                                    .replace('test = ["gaussian_noise", "contrast"]', 'test = ["fog", "rotate"]'))
    common = ["--no-report", "--n-trials", "4", "--set", 'study.objective="ood_val_acc"', "--set", 'study.pruner="none"']
    assert study.main(["--config", "a.toml", *common]) == 0
    assert study.main(["--config", "b.toml", *common]) == 0
    storage = f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}"
    a, b = (optuna.load_study(study_name=n, storage=storage).get_trials() for n in ("a", "b"))
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.value for t in a] == [t.value for t in b]
    assert set(a[0].user_attrs["shift_acc"]) != set(b[0].user_attrs["shift_acc"])  # their reports do differ

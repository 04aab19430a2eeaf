"""Reading a study back from MLflow: layout, curves, the Optuna side, a missing study or store.

They read the session's shared tiny study (conftest.shared_study, the fixtures shared and loaded)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from harness import results

pytestmark = pytest.mark.slow


def test_load_reads_parent_trials_curves_and_optuna(shared, loaded):
    """load() returns the parent run (tags, params, artifacts, config text, shift grid PNG), one entry per child
    run ordered by trial number with states complete/pruned/failed, final metrics equal to MLflow's, per-epoch
    curves with step = epoch, per-shift curves with step = severity, and the Optuna trials."""
    p = loaded["parent"]
    assert p["tags"]["harness.role"] == "study" and p["tags"]["harness.sampler"] == "tpe"
    assert "train.epochs" in p["params"]
    assert {"config/resolved.toml", "versions.json", "search_space.json", "shift_examples.png"} <= set(p["artifacts"])
    assert p["texts"]["config/resolved.toml"].startswith("[study]")
    assert p["shift_examples"][:8] == b"\x89PNG\r\n\x1a\n"

    trials = loaded["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3, 4]
    assert [t["state"] for t in trials] == ["complete"] * 3 + ["pruned", "failed"]
    assert [t["baseline"] for t in trials[:3]] == ["full_ft", "linear_probe", "lp_ft"]
    client = MlflowClient(shared["uri"])
    for t in trials[:3]:
        run = client.get_run(t["run_id"])
        assert t["metrics"] == run.data.metrics  # final metrics: exactly MLflow's values
        assert t["params"]["freeze_layers"] == int(run.data.params["freeze_layers"])
        # the linear probe is a logistic regression (harness.probe): one step-0 record, no epochs
        assert [s for s, _ in t["curves"]["val_acc"]] == ([0] if t["baseline"] == "linear_probe" else [0, 1, 2])
        assert [s for s, _ in t["curves"]["shift/gaussian_noise/acc"]] == [1, 3]
        assert [v for _, v in t["curves"]["shift/contrast/ece"]] == \
            [m.value for m in sorted(client.get_metric_history(t["run_id"], "shift/contrast/ece"), key=lambda m: m.step)]
    assert trials[3]["tags"]["harness.pruned_epoch"] == "1"
    assert "non-finite" in trials[4]["tags"]["harness.fail_reason"]

    opt = loaded["optuna"]
    assert opt["available"] and opt["directions"] == ["maximize"]
    assert [t["state"] for t in opt["trials"]] == ["complete"] * 3 + ["pruned", "fail"]
    assert opt["trials"][0]["user_attrs"]["mlflow_run_id"] == trials[0]["run_id"]


def test_unknown_study_missing_store_and_missing_storage(shared, tmp_path):
    """An unknown study raises StudyNotFound naming the studies that exist; a sqlite path without a store raises
    too and creates no file; an absent Optuna storage is reported, not created."""
    with pytest.raises(results.StudyNotFound, match="'tiny'"):
        results.load("nope", shared["uri"])
    missing = tmp_path / "none.db"
    with pytest.raises(results.StudyNotFound, match="no MLflow store"):
        results.load("tiny", f"sqlite:///{missing}")
    assert not missing.exists()
    opt = results.optuna_study("tiny", f"sqlite:///{tmp_path / 'optuna.db'}")
    assert not opt["available"] and not (tmp_path / "optuna.db").exists()

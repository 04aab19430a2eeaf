"""Reading a study back from MLflow: layout, curves, the Optuna side, a missing study or store.

Also home of shared_study(), the one real tiny study that test_results, test_report and test_browser share
(built once per pytest session: a study costs ~30 s on 2 cores, three would blow the test budget)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution, IntDistribution

from conftest import TINY
from harness import results, store, study, tracking

pytestmark = pytest.mark.slow

# Reasons and tags may hold anything a user or an exception message holds; the report must show them inert.
HOSTILE = "<img src=x onerror=console.error('xss')> <script>alert(1)</script> & \"q' $x$"


def _add_trial(root, state: str, epochs: list[float], reason: str) -> str:
    """A pruned or failed trial written exactly as harness/trial.py writes one (through harness.tracking), plus
    its Optuna record. The tiny study's baselines cannot be relied on to prune a trial (the median of three
    baselines sits near chance), and a real failing trial costs a second study run (~15 s)."""
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    client = store.connect(uri)  # the writer's client (tracking waits on its async batches)
    exp = client.get_experiment_by_name("tiny")
    parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]
    st = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / 'mlruns' / 'optuna.db'}")
    number = len(st.trials)
    params = {"lr": 1e-7 if state == "KILLED" else 1e6, "strategy": "prefix", "freeze_layers": 0, "unfreeze_epoch": 0}
    run_id = tracking.child_run(client, exp.experiment_id, parent.info.run_id, "tiny", number, params)
    for e, v in enumerate(epochs):
        tracking.log_metrics(client, run_id, {"train_loss": 2.0 - 0.1 * e, "val_acc": v, "val_loss": 1.9 - 0.1 * e,
                                              "frozen_layers": 0, "lr": 1e-7}, step=e)
    last = len(epochs) - 1
    tags = ({"harness.pruned_epoch": last, "harness.pruned_reason": reason} if state == "KILLED" else
            {"harness.fail_reason": reason, "harness.failed_epoch": last})
    tracking.end_run(client, run_id, state, tags)
    attrs = {"mlflow_run_id": run_id, ("pruned_epoch" if state == "KILLED" else "fail_reason"): last if state == "KILLED" else reason}
    st.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED if state == "KILLED" else optuna.trial.TrialState.FAIL,
        params={"lr": params["lr"], "freeze_layers": 0},
        distributions={"lr": FloatDistribution(1e-8, 1e7, log=True), "freeze_layers": IntDistribution(0, 4)},
        intermediate_values={e: v for e, v in enumerate(epochs)} if state == "KILLED" else {}, user_attrs=attrs))
    return run_id


def shared_study(tmp_path_factory) -> dict:
    """The session's tiny study: the 3 baselines run for real by harness.study.main (sqlite MLflow + Optuna), then
    one pruned and one failed trial (the failure reason carries HTML). Returns paths, URIs and run ids."""
    root = tmp_path_factory.getbasetemp() / "shared-study"
    done = root / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    root.mkdir(exist_ok=True)
    (root / "tiny.toml").write_text(TINY)
    t0 = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert study.main(["--config", "tiny.toml", "--no-report", "--n-trials", "3"]) == 0
    pruned = _add_trial(root, "KILLED", [0.11, 0.12], "pruned at epoch 1: val_acc 0.1200 below the median")
    failed = _add_trial(root, "FAILED", [0.1], f"FloatingPointError: non-finite train_loss (nan) at epoch 0 {HOSTILE}")
    info = {"root": str(root), "uri": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
            "storage": f"sqlite:///{root / 'mlruns' / 'optuna.db'}", "pruned": pruned, "failed": failed,
            "seconds": time.perf_counter() - t0}
    done.write_text(json.dumps(info))
    return info


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return shared_study(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(shared):
    return results.load("tiny", shared["uri"], shared["storage"])


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


def shared_report(tmp_path_factory) -> dict:
    """The shared study's report, built once by the CLI in a fresh interpreter from the study's folder with the
    default store paths: `python -m harness.report --study-name tiny`. Records its exit code, stdout, and whether
    torch got imported (the report must not need it)."""
    info = shared_study(tmp_path_factory)
    done = tmp_path_factory.getbasetemp() / "shared-study" / "report.json.done"
    if done.exists():
        return json.loads(done.read_text())
    code = ("import json, sys; from harness.report.__main__ import main; rc = main(['--study-name', 'tiny']); "
            "print('RESULT', json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=info["root"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    out = {**info, **result, "stdout": proc.stdout, "html": str(Path(info["root"]) / "reports" / "tiny" / "index.html")}
    done.write_text(json.dumps(out))
    return out

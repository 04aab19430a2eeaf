"""Reading a study back from MLflow: layout, curves, the Optuna side, and the numbers the report derives.

Also home of shared_study(), the one real tiny study that test_results, test_report and test_browser share
(built once per pytest session: a study costs ~30 s on 2 cores, three would blow the test budget)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution, IntDistribution

from conftest import TINY
from harness import results, study, tracking

pytestmark = pytest.mark.slow

# Reasons and tags may hold anything a user or an exception message holds; the report must show them inert.
HOSTILE = "<img src=x onerror=console.error('xss')> <script>alert(1)</script> & \"q' $x$"


def _add_trial(root, state: str, epochs: list[float], reason: str) -> str:
    """A pruned or failed trial written exactly as harness/trial.py writes one (through harness.tracking), plus
    its Optuna record. The tiny study's baselines cannot be relied on to prune a trial (the median of three
    baselines sits near chance), and a real failing trial costs a second study run (~15 s)."""
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]
    st = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / 'mlruns' / 'optuna.db'}")
    number = len(st.trials)
    params = {"lr": 1e-7 if state == "KILLED" else 1e6, "freeze_layers": 0, "unfreeze_epoch": 0}
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
        assert [s for s, _ in t["curves"]["val_acc"]] == [0, 1, 2]
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


def test_summary_numbers_match_mlflow_and_the_test_split(shared, loaded):
    """summarize(): trials ranked by the objective (val_acc_final), ID/OOD numbers equal to MLflow's, the test-set
    size inferred from the accuracies equals the real test split, Wilson intervals contain the estimate, the
    baselines are found, and a study with 3 completed trials still gets an accuracy-on-the-line fit."""
    from harness import config, data

    s = results.summarize(loaded)
    cfg = config.load(f"{shared['root']}/tiny.toml")
    n_test = len(data.load(cfg.data, cfg.study.seed)["test"][1])
    assert (s["n_test"], s["n_test_source"]) == (n_test, "logged")
    assert s["n_shift_eval"] == min(cfg.shifts.eval_images or n_test, n_test) < n_test  # the tiny study subsets

    client = MlflowClient(shared["uri"])
    done = sorted((r for r in s["trials"] if r.get("rank")), key=lambda r: r["rank"])
    assert len(done) == 3
    objectives = [client.get_run(r["run_id"]).data.metrics["val_acc_final"] for r in done]
    assert objectives == sorted(objectives, reverse=True)
    for r in done:
        m = client.get_run(r["run_id"]).data.metrics
        assert (r["id_acc"], r["ood_acc_mean"], r["ood_acc_worst"]) == (m["id_acc"], m["ood_acc_mean"], m["ood_acc_worst"])
        lo, hi = r["id_acc_ci"]
        assert lo <= r["id_acc"] <= hi and 0 <= lo and hi <= 1
        assert r["worst_shift"] in ("gaussian_noise", "contrast", "label_shift")
    assert s["best"] == done[0]["number"]
    assert set(s["baselines"]) == {"full_ft", "linear_probe", "lp_ft"} and None not in s["baselines"].values()
    fit = s["on_the_line"]["mean"]
    assert fit is not None and fit["n"] == 3
    assert all(isinstance(c["status"], str) for c in s["conditions"])
    json.dumps(s, allow_nan=False, default=lambda o: None)  # JSON-able


def test_statistics_helpers():
    """Wilson matches the textbook value; probit clips at 1/(2n); the line fit recovers a known line with R^2 = 1
    and zero effective robustness; the Pareto front keeps the non-dominated points; the test-set size is the
    smallest n making every accuracy a multiple of 1/n."""
    lo, hi = results.wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert results.probit(1.0, 50) == pytest.approx(results.probit(1 - 1 / 100, 50))
    assert math.isfinite(results.probit(0.0, 50))
    nd = results.NormalDist()
    pts = {i: (x, nd.cdf(0.8 * nd.inv_cdf(x) - 0.2)) for i, x in enumerate([0.3, 0.5, 0.7, 0.9])}
    fit = results.on_the_line(pts, 10_000)
    assert fit["slope"] == pytest.approx(0.8) and fit["r2"] == pytest.approx(1.0)
    assert all(abs(v) < 1e-9 for v in fit["effective_robustness"].values())
    assert results.on_the_line({0: (0.5, 0.4), 1: (0.6, 0.5)}, 100) is None  # 2 points: no fit
    assert results.pareto({"a": (0.9, 0.5), "b": (0.8, 0.6), "c": (0.7, 0.5), "d": (0.9, 0.4)}) == ["a", "b"]
    assert results.infer_test_size([43 / 180, 17 / 180, 93 / 180, 1 / 180]) == 180
    assert results.infer_test_size([0.5, 0.25]) is None  # too few distinct values to tell


def test_importances_note_instead_of_crash():
    """Parameter importances: a study with too few trials, or with nothing varying, gets a note; a real spread
    gets a number per varying hyperparameter that sum to 1, with unfreeze_epoch included although conditional."""
    few = [{"id_acc": 0.5, "ood_acc_mean": 0.4, "lr": 0.01, "freeze_layers": 0, "unfreeze_epoch": 0}] * 2
    assert "note" in results._importances(few, {})["id_acc"]
    same = [{"id_acc": 0.5 + i / 100, "ood_acc_mean": 0.4, "lr": 0.01, "freeze_layers": 0, "unfreeze_epoch": 0}
            for i in range(5)]
    assert "note" in results._importances(same, {})["ood_acc_mean"]
    rows = [{"id_acc": 0.3 + 0.05 * k + 0.01 * i, "ood_acc_mean": 0.2 + 0.03 * e, "lr": 10 ** (-3 + i / 4),
             "freeze_layers": k, "unfreeze_epoch": e if k else 0}
            for i, (k, e) in enumerate([(0, 0), (1, 1), (2, 2), (3, 1), (4, 3), (2, 3), (1, 2), (0, 0)])]
    imp = results._importances(rows, {})
    vals = imp["id_acc"]["values"]
    assert set(vals) == {"lr", "freeze_layers", "unfreeze_epoch"} and sum(vals.values()) == pytest.approx(1.0)


def shared_report(tmp_path_factory) -> dict:
    """The shared study's report, built once by the CLI in a fresh interpreter from the study's folder with the
    default store paths: `python -m harness.report --study-name tiny`. Records its exit code, stdout, and whether
    torch got imported (the report must not need it)."""
    info = shared_study(tmp_path_factory)
    done = tmp_path_factory.getbasetemp() / "shared-study" / "report.json.done"
    if done.exists():
        return json.loads(done.read_text())
    code = ("import json, sys; from harness import report; rc = report.main(['--study-name', 'tiny']); "
            "print('RESULT', json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=info["root"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    out = {**info, **result, "stdout": proc.stdout, "html": str(Path(info["root"]) / "reports" / "tiny" / "index.html")}
    done.write_text(json.dumps(out))
    return out

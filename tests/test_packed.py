"""Packed trials: --workers 2 on one device (here 2 CPU cores, one thread each) against the same trials one at a
time. Real studies (MLflow and Optuna on sqlite in a temp dir, real training of the tiny config)."""

from __future__ import annotations

import os

import optuna
import pytest
from optuna.trial import TrialState

from harness import config, cores, study

from conftest import mlflow_client

# every trial enqueued, so both studies run the same trials: four that learn, then (second invocation) a hopeless
# one (lr 1e-7: chance accuracy) that the median pruner stops after its first epoch, next to LP-FT again (trial 6,
# from the converged probe's head: val_acc ~0.82 from its first epoch, above the median of the 7 finished trials,
# so it is never pruned)
LEARNERS = [{"lr": lr, "freeze_layers": 0} for lr in (0.1, 0.05, 0.08, 0.03)]
LP_FT = 6  # after the 4 learners: full FT (4), the linear probe (5), LP-FT (6), at the tiny config's one baseline lr
SECOND = [({"lr": 1e-7, "freeze_layers": 0}, {}),
          (LP_FT, {"baseline": "lp_ft"})]  # LP-FT again: trial LP_FT's params (its lr a tenth of full FT's)
# what differs between two runs of the same trial by construction: clocks, memory, the system-metrics sampler
VARYING = ("train_seconds", "eval_seconds", "rss_mb", "peak_rss_mb", "gpu_peak_mb")


def _run(tiny_config, workdir, name, workers):
    storage = f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}"
    args = ["--config", str(tiny_config), "--no-report", "--study-name", name, "--workers", str(workers),
            "--set", "study.threads_per_worker=1"]  # the same kernels in both: results bit for bit
    (workdir / "mlruns").mkdir(exist_ok=True)
    s = optuna.create_study(study_name=name, storage=storage, directions=["maximize"])
    for p in LEARNERS:
        s.enqueue_trial(p)
    # no pruning while the four learners and the baselines finish: which of them a packed study has finished
    # when another reports would decide a median; the second invocation prunes against all 7 of them
    assert study.main(args + ["--n-trials", "7", "--set", 'study.pruner="none"']) == 0
    s = optuna.load_study(study_name=name, storage=storage)
    for p, attrs in SECOND:
        s.enqueue_trial(s.trials[p].params if isinstance(p, int) else p, user_attrs=attrs)
    assert study.main(args + ["--n-trials", "9"]) == 0
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def _metrics(client, run_id):
    run = client.get_run(run_id)
    final = {k: v for k, v in run.data.metrics.items() if k not in VARYING and not k.startswith("system/")}
    curves = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)]
              for k in ("train_loss", "val_acc", "val_loss", "lr")}
    return run.info.status, final, curves


def test_thread_budget_divides_the_cores_unless_set(capsys):
    """study.threads_per_worker = 0 divides the cores this process may use (its affinity mask) among the workers,
    at least 1 each; a positive value wins; a negative one is bad input naming the key (exit 2)."""
    n = len(os.sched_getaffinity(0))
    for workers in (1, 2, 3):
        cfg = config.load(None, [], **{"study.workers": workers})
        assert cores.thread_budget(cfg) == (max(1, n // workers), f"{n} cores / {workers} worker{'s' * (workers > 1)}")
    assert cores.thread_budget(config.load(None, ["study.threads_per_worker=3"], **{"study.workers": 2}))[0] == 3
    assert cores.worker_env(3)["OMP_NUM_THREADS"] == "3"
    assert study.main(["--set", "study.threads_per_worker=-1"]) == 2
    assert "study.threads_per_worker: must be 0" in capsys.readouterr().err


@pytest.mark.slow
def test_packed_workers_match_one_at_a_time(tiny_config, workdir, capfd):
    """The same 9 trials (4 learners, the 3 baselines, then a hopeless trial and LP-FT again) run by 2 worker
    processes at once and by one process, one trial at a time, one torch thread each:
    - every trial has its own Optuna trial and MLflow child run in both, with the same params and state;
    - every metric the trial logged (final, per shift, per epoch curves) is the same bit for bit, CE included;
    - the hopeless trial is PRUNED (run KILLED) while the other worker's trial goes on and finishes as alone;
    - both workers took trials, and each stated its thread budget: 1 torch thread, OMP_NUM_THREADS=1 and
      OMP_WAIT_POLICY=PASSIVE in the environment it started with, and [1 thread] in its progress lines."""
    packed = _run(tiny_config, workdir, "packed", 2)  # first: its launcher builds the caches both studies read
    out = capfd.readouterr().out
    alone = _run(tiny_config, workdir, "alone", 1)
    client = mlflow_client(workdir)

    assert len(packed) == len(alone) == 9
    assert len({t.system_attrs.get("harness.pid") for t in packed}) >= 2  # both workers trained
    assert len({t.system_attrs.get("harness.pid") for t in alone}) == 1
    for a, b in zip(packed, alone):
        assert a.number == b.number and a.params == b.params and a.state == b.state, (a.number, a.state, b.state)
        assert a.user_attrs["mlflow_run_id"] != b.user_attrs["mlflow_run_id"]
        ma, mb = _metrics(client, a.user_attrs["mlflow_run_id"]), _metrics(client, b.user_attrs["mlflow_run_id"])
        assert ma == mb, a.number
        if a.state == TrialState.COMPLETE:
            assert a.value == b.value and "id_acc" in ma[1] and "mce" in ma[1]
    for name in ("packed", "alone"):  # one child run per trial, each naming its own trial
        exp = client.get_experiment_by_name(name)
        runs = client.search_runs([exp.experiment_id], "tags.`harness.role` != 'study'", max_results=100)
        assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == list(range(9))
    hopeless = packed[7]
    assert hopeless.params["lr"] == pytest.approx(1e-7) and hopeless.state == TrialState.PRUNED
    assert client.get_run(hopeless.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert packed[8].state == TrialState.COMPLETE  # the trial packed next to it was not stopped
    assert packed[LP_FT].user_attrs["baseline"] == packed[8].user_attrs["baseline"] == "lp_ft"
    first, again = (_metrics(client, packed[i].user_attrs["mlflow_run_id"]) for i in (LP_FT, 8))
    assert again == first  # and trained exactly as trial 6, its params, did while the other worker trained too

    assert "cores: 2 worker processes x 1 torch thread (study.threads_per_worker), OMP_WAIT_POLICY=PASSIVE" in out
    for w in (0, 1):
        start = next(line for line in out.splitlines() if line.startswith(f"[w{w}] pid "))
        assert start.endswith(": 1 torch thread (study.threads_per_worker), OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE")
        progress = [line for line in out.splitlines() if line.startswith(f"[w{w}] trial ") and "  epoch " in line]
        assert progress and all(line.endswith("  [1 thread]") for line in progress)

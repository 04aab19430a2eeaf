"""Bookkeeping: which worker is alive (never misjudged by a clock jump), stale trials failed with their reason, and a
trial finished by another process never taking its live worker down."""

from __future__ import annotations

import subprocess
import time

import optuna
import psutil
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness import bookkeeping, config, context, launch, sampling, workers


def _study(tmp_path, **heartbeat):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}", **heartbeat)
    return optuna.create_study(study_name="b", storage=storage)


def _running(s, attrs: dict):
    """A RUNNING trial whose system attrs say which process runs it, as bookkeeping.ask writes them."""
    t = s.ask()
    for k, v in attrs.items():
        s._storage.set_trial_system_attr(t._trial_id, k, v)
    return t


def test_start_ticks_are_the_kernels_and_identity_records_them():
    """/proc/PID/stat's field 22 (start ticks since boot), read independently here with psutil's own parser of the
    same file: equal for this process, None for a pid that does not exist."""
    me = psutil.Process()
    ticks = bookkeeping.start_ticks(me.pid)
    if ticks is None:
        pytest.skip("no /proc here")
    fields = open(f"/proc/{me.pid}/stat").read().rsplit(")", 1)[1].split()
    assert ticks == int(fields[19])
    assert bookkeeping.identity()["harness.pid_ticks"] == ticks
    assert bookkeeping.start_ticks(2**31 - 1) is None


def test_a_clock_jump_never_fails_a_live_trial(tmp_path):
    """Issue 20: psutil's create_time moves when the wall clock is adjusted (a live pid read x, then x + 1.0 s). A live
    worker's trial whose recorded start time is off by 1 s (with kernel ticks, and without them as an older worker
    wrote it) stays RUNNING; so does one whose process cannot be judged (no pid recorded). Today's exact float
    comparison failed the first two."""
    s = _study(tmp_path)
    me = bookkeeping.identity()
    jumped = _running(s, {**me, "harness.pid_start": me["harness.pid_start"] + 1.0})
    no_ticks = _running(s, {k: v for k, v in me.items() if k != "harness.pid_ticks"}
                        | {"harness.pid_start": me["harness.pid_start"] - 1.0})
    unknown = _running(s, {"harness.host": me["harness.host"]})
    assert bookkeeping.recover_dead(s, None) == 0
    assert [s._storage.get_trial(t._trial_id).state for t in (jumped, no_ticks, unknown)] == [TrialState.RUNNING] * 3


def test_a_dead_or_reused_pid_fails_its_trial_with_the_reason(tmp_path):
    """Provably gone (the process exited) or provably another process (other kernel start ticks; or, without ticks,
    a start time 1000 s away): FAILED at once with 'worker pid N on HOST died', and the params enqueued again."""
    s = _study(tmp_path)
    proc = subprocess.Popen(["sleep", "60"])
    gone = {**bookkeeping.identity(), "harness.pid": proc.pid, "harness.pid_start": psutil.Process(proc.pid).create_time(),
            "harness.pid_ticks": bookkeeping.start_ticks(proc.pid)}
    proc.kill()
    proc.wait()
    me = bookkeeping.identity()
    trials = [_running(s, gone)]
    if me["harness.pid_ticks"] is not None:
        trials.append(_running(s, {**me, "harness.pid_ticks": me["harness.pid_ticks"] + 100}))
    trials.append(_running(s, {k: v for k, v in me.items() if k != "harness.pid_ticks"}
                           | {"harness.pid_start": me["harness.pid_start"] - 1000.0}))
    for t in trials:
        t.suggest_float("lr", 1e-3, 1.0, log=True)
    assert bookkeeping.recover_dead(s, None) == len(trials)
    for t in trials:
        frozen = s._storage.get_trial(t._trial_id)
        assert frozen.state == TrialState.FAIL and "died" in frozen.system_attrs["fail_reason"]
    waiting = s.get_trials(states=(TrialState.WAITING,))
    assert sorted(w.params["lr"] for w in waiting) == sorted(t.params["lr"] for t in trials)


def test_a_dead_baseline_whose_fixed_value_lies_outside_the_search_range_runs_again(tmp_path):
    """The linear-probe baseline is enqueued with unfreeze_epoch = train.epochs, beyond search.unfreeze_epoch's
    bounds; Optuna keeps the fixed value, but its retry validates values against distributions. Its worker died:
    the same params (7 of a 1..4 range, the lr) are enqueued again."""
    s = _study(tmp_path)
    s.enqueue_trial({"unfreeze_epoch": 7, "lr": 0.05})
    t = s.ask()
    with pytest.warns(UserWarning):  # Optuna: the fixed value is outside the range and kept
        assert t.suggest_int("unfreeze_epoch", 1, 4) == 7
    t.suggest_float("lr", 1e-3, 0.3, log=True)
    gone = subprocess.Popen(["sleep", "60"])
    attrs = {**bookkeeping.identity(), "harness.pid": gone.pid, "harness.pid_ticks": bookkeeping.start_ticks(gone.pid),
             "harness.pid_start": psutil.Process(gone.pid).create_time()}
    gone.kill()
    gone.wait()
    for k, v in attrs.items():
        s._storage.set_trial_system_attr(t._trial_id, k, v)
    assert bookkeeping.recover_dead(s, None) == 1
    [w] = s.get_trials(states=(TrialState.WAITING,))
    assert w.params == {"unfreeze_epoch": 7, "lr": 0.05}


def test_a_stale_heartbeat_fails_the_trial_with_a_reason(tmp_path):
    """Another machine's dead worker: no heartbeat for the grace period. Optuna's own check leaves no reason; ours
    names the worker and the silence."""
    s = _study(tmp_path, heartbeat_interval=1, grace_period=1)
    t = _running(s, {"harness.host": "elsewhere", "harness.pid": 123})
    s._storage.record_heartbeat(t._trial_id)
    time.sleep(2.2)
    assert bookkeeping.fail_stale(s, None) == 1
    frozen = s._storage.get_trial(t._trial_id)
    assert frozen.state == TrialState.FAIL
    assert "no heartbeat for 1 s from worker pid 123 on elsewhere" in frozen.system_attrs["fail_reason"]


def test_a_trial_finished_by_another_process_never_kills_its_worker(tiny_config):
    """While trial 0 trains, another process judges its worker dead (start ticks that do not match) and fails it.
    The worker's next write to the trial is refused by Optuna; the worker logs one line, ends the trial's MLflow
    run FAILED saying what happened, and goes on: the study still reaches its 2 finished trials, the retry re-runs
    trial 0's params. Today the error path's set_user_attr and tell raised again and took the worker down."""
    cfg = config.load(tiny_config, ["study.n_trials=2"])
    ctx = context.open_context(cfg, launch.preflight(cfg), log=lambda *a: None)
    s = sampling.open_study(cfg, ctx.storage, create=True)
    other = optuna.load_study(study_name="tiny", storage=ctx.storage)  # "another process": its own study handle
    lines = []

    def log(line):
        lines.append(line)
        if line.startswith("trial 0 (") and "epoch 2/" in line:
            t = other.get_trials(states=(TrialState.RUNNING,))[0]
            ticks = t.system_attrs.get("harness.pid_ticks")
            other._storage.set_trial_system_attr(t._trial_id, "harness.pid_ticks", (ticks or 0) + 100)
            other._storage.set_trial_system_attr(t._trial_id, "harness.pid_start", t.system_attrs["harness.pid_start"] - 1e4)
            assert bookkeeping.recover_dead(other, ctx.client) == 1

    done = workers.work(ctx, s, 0, log)
    trials = s.get_trials()
    assert trials[0].state == TrialState.FAIL and "died" in trials[0].system_attrs["fail_reason"]
    assert sum(t.state in bookkeeping.FINISHED for t in trials) == 2
    assert done["complete"] + done["pruned"] == 2 and done["failed"] == 0
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].params == trials[0].params
    said = [l for l in lines if "trial 0 was finished" in l]
    assert len(said) == 1 and "FAIL by another process" in said[0] and "going on" in said[0]
    run = MlflowClient(ctx.uri).get_run(trials[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "finished FAIL by another process" in run.data.tags["harness.fail_reason"]

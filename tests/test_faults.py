"""Scale-out and faults: parallel workers, SIGKILL then resume, unreachable tracking server or database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness import launch, study

from conftest import free_port, mlflow_client, need_service

# many processes each, with deadlines: make test (pytest-xdist, --dist loadgroup) runs them one at a time on one worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _check_end_state(workdir, name, n, storage=None):
    """n finished trials, no RUNNING trial, one parent run, one child run per trial, no RUNNING MLflow run."""
    s = optuna.load_study(study_name=name, storage=storage or f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}")
    trials = s.get_trials()
    assert sum(t.state in FINISHED for t in trials) == n, [t.state for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    client = mlflow_client(workdir)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("harness.role") == "study"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    per_trial = Counter(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert sorted(per_trial) == [t.number for t in trials] and set(per_trial.values()) == {1}
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for t in trials:
        run = next(r for r in children if int(r.data.tags["optuna.trial_number"]) == t.number)
        assert run.info.status == {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED",
                                   TrialState.FAIL: "FAILED"}[t.state]
    return trials


def _sampled_params_differ(trials):
    """Workers seeded alike would sample identical trials; each process has its own sampler seed."""
    sampled = [tuple(sorted(t.params.items())) for t in trials if "baseline" not in t.user_attrs]
    assert len(sampled) >= 3 and len(set(sampled)) == len(sampled), sampled


def test_three_workers_share_one_study(tiny_config, workdir):
    """--workers 3 on one sqlite study: exactly n_trials finished trials, one MLflow child run each, no errors,
    distinct sampled parameters, and the parent's best-trial tag names the best completed trial."""
    assert study.main(["--config", str(tiny_config), "--no-report", "--n-trials", "6", "--workers", "3"]) == 0
    trials = _check_end_state(workdir, "tiny", 6)
    assert not [t for t in trials if t.state == TrialState.FAIL]
    assert len({t.system_attrs.get("harness.pid") for t in trials}) >= 2  # the work really was shared
    _sampled_params_differ(trials)
    client = mlflow_client(workdir)
    parent = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`harness.role` = 'study'")[0]
    best = max(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert trials[int(parent.data.tags["harness.best_trial"])].value == best


def test_sigkill_mid_trial_then_resume(tiny_config, workdir):
    """kill -9 while a trial runs; re-running the same command finishes the study: the killed trial is FAILED
    (Optuna and MLflow), retried with the same params, the parent run is reused, and the target is reached."""
    cmd = [sys.executable, "-m", "harness.study", "--config", str(tiny_config), "--no-report", "--n-trials", "4",
           "--set", "train.epochs=6", "--set", "search.unfreeze_epoch=[1,6]"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}"
    victim, deadline = None, time.time() + 240
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                s = optuna.load_study(study_name="tiny", storage=storage)
            except Exception:  # the study does not exist yet
                continue
            for t in s.get_trials(states=(TrialState.RUNNING,)):
                # kill once the trial has its MLflow run and is between epochs 1 and 5 of 6
                if t.number >= 1 and "mlflow_run_id" in t.user_attrs and t.intermediate_values:
                    victim = t
            if victim is not None:
                # a tiny trial lasts well under a second: stop the process, then make sure the trial is still
                # running before the kill (else it may have completed since the read above; let it go on)
                os.kill(proc.pid, signal.SIGSTOP)
                now = optuna.load_study(study_name="tiny", storage=storage).trials[victim.number]
                if now.state != TrialState.RUNNING:
                    victim = None
                    os.kill(proc.pid, signal.SIGCONT)
        assert victim is not None, "no running trial to kill"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    t0 = time.time()
    assert study.main(["--config", str(tiny_config), "--no-report", "--n-trials", "4",
                       "--set", "train.epochs=6", "--set", "search.unfreeze_epoch=[1,6]"]) == 0
    trials = _check_end_state(workdir, "tiny", 4)
    assert time.time() - t0 < 200  # resumed at once: no wait for the 60 s heartbeat grace period per trial
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL and "died" in killed.system_attrs.get("fail_reason", "")
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params and retries[0].state in FINISHED
    assert retries[0].user_attrs.get("baseline") == killed.user_attrs.get("baseline")
    assert "fail_reason" not in retries[0].system_attrs


def test_unreachable_tracking_server_fails_fast(tiny_config, workdir, capsys):
    """A tracking URI where nothing listens: exit 1 within 30 s, a message naming the server, no trial run."""
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.time()
    assert study.main(["--config", str(tiny_config), "--no-report", "--tracking-uri", uri]) == 1
    assert time.time() - t0 < 30
    err = capsys.readouterr().err
    assert "unreachable" in err and uri in err
    assert not (workdir / "mlruns").exists()  # a dead store is found before any file is made


def test_unreachable_database_fails_fast(tiny_config, workdir, capsys):
    """A PostgreSQL URL where nothing listens: exit 1 within 30 s, the message names the storage but not the
    password, and nothing is trained."""
    url = f"postgresql://harness:secret@127.0.0.1:{free_port()}/harness"
    t0 = time.time()
    assert study.main(["--config", str(tiny_config), "--no-report", "--storage", url]) == 1
    assert time.time() - t0 < 30
    err = capsys.readouterr().err
    assert "unreachable" in err and "127.0.0.1" in err and "secret" not in err
    assert not (workdir / "mlruns").exists()  # a dead store is found before any file is made


def test_unreachable_tracking_database_fails_fast(tiny_config, workdir, capsys):
    """A database-backed tracking URI where nothing listens (MLflow alone retries for ~110 s): exit 1 within 30 s,
    a message naming the host but not the password, nothing trained."""
    uri = f"postgresql://harness:secret@127.0.0.1:{free_port()}/mlflow"
    t0 = time.time()
    assert study.main(["--config", str(tiny_config), "--no-report", "--tracking-uri", uri]) == 1
    assert time.time() - t0 < 30
    err = capsys.readouterr().err
    assert "unreachable" in err and "127.0.0.1" in err and "secret" not in err
    assert not (workdir / "mlruns").exists()  # a dead store is found before any file is made


POSTGRES = os.environ.get("HARNESS_TEST_POSTGRES")  # set by .ci/run, which starts Debian's PostgreSQL


def test_three_workers_on_postgresql(tiny_config, workdir):
    """The many-machines storage: 3 worker processes on one PostgreSQL study end with exactly the requested
    number of trials, one MLflow child run each, no failures, no two workers sampling the same parameters."""
    need_service(bool(POSTGRES), "PostgreSQL (HARNESS_TEST_POSTGRES, set by .ci/run)")
    name = f"pg{int(time.time())}"
    assert study.main(["--config", str(tiny_config), "--no-report", "--n-trials", "6", "--workers", "3",
                       "--storage", POSTGRES, "--study-name", name]) == 0
    trials = _check_end_state(workdir, name, 6, storage=POSTGRES)
    assert not [t for t in trials if t.state == TrialState.FAIL]
    _sampled_params_differ(trials)


def _two_processes(workdir, config, extra=()):
    """The documented multi-machine path on one machine: the same command started twice at once on a fresh store
    (no mlruns/ yet). Returns both (exit code, stdout + stderr)."""
    cmd = [sys.executable, "-m", "harness.study", "--config", str(config), "--no-report", "--n-trials", "6", *extra]
    procs = [subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outs)]


def _independent_processes_end_state(workdir, outs, name, storage=None):
    for code, out in outs:
        assert code == 0 and "Traceback" not in out, out
    trials = _check_end_state(workdir, name, 6, storage)  # exact count, one parent run, one child run per trial
    assert not [t for t in trials if t.state == TrialState.FAIL]
    assert len({t.system_attrs.get("harness.pid") for t in trials}) == 2  # both processes ran trials
    baselines = Counter(t.user_attrs.get("baseline") for t in trials if "baseline" in t.user_attrs)
    assert set(baselines.values()) == {1}, baselines  # enqueued once, not once per process
    _sampled_params_differ(trials)


def test_two_independent_processes_on_one_fresh_sqlite_store(tiny_config, workdir):
    """Issue 15: two processes with the same command and seed on a new sqlite store both exit 0 (the first use of
    the Optuna and MLflow sqlite files is serialized: no Alembic race), share exactly 6 finished trials, each
    baseline once, and sample distinct parameters (the sampler is seeded per trial number, not per process)."""
    _independent_processes_end_state(workdir, _two_processes(workdir, tiny_config), "tiny")


def test_two_independent_processes_on_postgresql(tiny_config, workdir):
    """The same on a PostgreSQL Optuna storage (the many-machines path): a new study name, both processes at once."""
    need_service(bool(POSTGRES), "PostgreSQL (HARNESS_TEST_POSTGRES, set by .ci/run)")
    name = f"pg2-{int(time.time())}"
    outs = _two_processes(workdir, tiny_config, ["--storage", POSTGRES, "--study-name", name])
    _independent_processes_end_state(workdir, outs, name, POSTGRES)


def test_sigkill_one_of_three_workers(tiny_config, workdir):
    """kill -9 of one worker process of --workers 3 while its trial trains: the study still ends with exactly 4
    finished trials, no RUNNING trial or run, the killed trial FAILED and retried once with its params, no process
    of the study left alive, and the crash shows: exit code 3 and the summary line 'crashed workers: 1'."""
    import psutil

    cmd = [sys.executable, "-m", "harness.study", "--config", str(tiny_config), "--no-report", "--n-trials", "4",
           "--workers", "3", "--set", "train.epochs=6", "--set", "search.unfreeze_epoch=[1,6]"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage = f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}"
    launcher, seen, victim = psutil.Process(proc.pid), set(), None
    deadline = time.time() + 300
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            seen |= {c.pid for c in launcher.children(recursive=True)}
            try:
                s = optuna.load_study(study_name="tiny", storage=storage)
            except Exception:  # not created yet
                continue
            workers = {c.pid for c in launcher.children()}
            for t in s.get_trials(states=(TrialState.RUNNING,)):
                # a worker's trial (not the launcher's), with its MLflow run, between epochs 1 and 5 of 6
                if t.system_attrs.get("harness.pid") in workers and "mlflow_run_id" in t.user_attrs \
                        and t.intermediate_values:
                    # stopped first, killed only if its trial is still running (it may have completed since the read)
                    pid = t.system_attrs["harness.pid"]
                    os.kill(pid, signal.SIGSTOP)
                    if optuna.load_study(study_name="tiny", storage=storage).trials[t.number].state \
                            != TrialState.RUNNING:
                        os.kill(pid, signal.SIGCONT)
                        continue
                    victim = t
                    os.kill(pid, signal.SIGKILL)
                    break
        assert victim is not None, "no running worker trial to kill"
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == launch.EXIT_WORKER_CRASHED, out
    assert "crashed workers: 1 (worker" in out and "SIGKILL" in out, out
    trials = _check_end_state(workdir, "tiny", 4)
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL and "died" in killed.system_attrs.get("fail_reason", "")
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params and retries[0].state in FINISHED
    assert len(seen) >= 3  # the three workers were seen, and none of them (nor anything they started) is left
    alive = [p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], alive


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_resume_and_extend_with_explicit_stores(tiny_config, workdir, backend):
    """Issue 20 item 0: the documented resume with both stores named (--storage, --tracking-uri) runs the same
    command twice, the second with a larger --n-trials: both exit 0, the second adds trials to the same study and
    the same parent run. On today's store check an existing sqlite file was refused as 'not a folder' (exit 2)."""
    if backend == "postgresql":
        need_service(bool(POSTGRES), "PostgreSQL (HARNESS_TEST_POSTGRES, set by .ci/run)")
    stores = workdir / "stores"
    stores.mkdir()
    storage = POSTGRES if backend == "postgresql" else f"sqlite:///{stores / 'o.db'}"
    tracking = f"sqlite:///{stores / 'm.db'}"
    name = f"explicit-{backend}-{int(time.time())}"
    argv = ["--config", str(tiny_config), "--no-report", "--study-name", name, "--storage", storage,
            "--tracking-uri", tracking]
    assert study.main([*argv, "--n-trials", "3"]) == 0
    assert study.main([*argv, "--n-trials", "4"]) == 0  # the resume: both files exist now
    s = optuna.load_study(study_name=name, storage=storage)
    assert sum(t.state in FINISHED for t in s.get_trials()) == 4
    client = MlflowClient(tracking_uri=tracking)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("harness.role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == [0, 1, 2, 3]
    assert not (workdir / "mlruns" / "mlflow.db").exists()  # nothing was written to the default stores

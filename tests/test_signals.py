"""SIGTERM and SIGINT end a study cleanly (issue 27 item 3): real processes, a signal once a trial runs; then the
exit code (143, 130), one line and no traceback, no RUNNING trial in Optuna, no RUNNING run in MLflow, the trial
failed with "interrupted (SIG...)" on both sides, the parent KILLED, and no process of the study left alive."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest

from harness import schema

from conftest import ROOT, TINY, mlflow_client

# many processes each, with deadlines: make test (pytest-xdist, --dist loadgroup) runs them one at a time on one worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]

CONFIG = TINY.replace("n_trials = 4", "n_trials = 30").replace("[pretrain]\nepochs = 2", "[pretrain]\nepochs = 1")
WAIT_S = 240  # a loaded 2-core machine (load average 10) took over a minute to start a study


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One folder for every case (each its own study name): the data and pretraining caches are made once."""
    root = tmp_path_factory.mktemp("signals")
    (root / "tiny.toml").write_text(CONFIG)
    return root


def _running(root, name: str) -> int:
    db = root / "mlruns" / "optuna.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT count(*) FROM trials JOIN studies USING (study_id) WHERE study_name = ? AND "
                             "state = 'RUNNING'", (name,)).fetchone()[0]
    except sqlite3.OperationalError:  # tables not made yet
        return 0


@pytest.mark.parametrize("sig, workers", [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2),
                                          (signal.SIGINT, 2)], ids=["term-1", "int-1", "term-2", "int-2"])
def test_a_signal_fails_the_running_trial_ends_the_runs_and_leaves_no_process(folder, sig, workers):
    import optuna

    name = f"sig-{sig.name}-{workers}"
    proc = subprocess.Popen([sys.executable, "-m", "harness.study", "--config", "tiny.toml", "--study-name", name,
                             "--workers", str(workers), "--no-report", "--set", "train.epochs=30",
                             # the baselines' "never" (unfreeze_epoch = epochs) inside the range: their retry's params
                             # are checked against it
                             "--set", "search.unfreeze_epoch=[1, 30]"],
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        deadline = time.monotonic() + WAIT_S
        while _running(folder, name) < workers and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
        assert proc.poll() is None and _running(folder, name) >= 1, "no trial started"
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert len(family) >= 1 + (workers if workers > 1 else 0)  # the launcher and its spawned workers
        # SIGTERM to the launcher alone (kill PID); SIGINT to the whole group, as Ctrl-C in a terminal sends it
        os.kill(proc.pid, sig) if sig == signal.SIGTERM else os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in out + err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]  # MLflow's own INFO lines as it made its store come first
    assert [ln for ln in lines if "interrupted" in ln.lower()] == lines[-1:], err[-2000:]
    assert lines[-1].startswith(f"interrupted ({sig.name}): "), err[-2000:]
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in family) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in family if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}").trials
    assert not [t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING], err
    failed = [t for t in trials if t.system_attrs.get(schema.ATTR_FAIL_REASON) == f"interrupted ({sig.name})"]
    assert failed and all(t.state == optuna.trial.TrialState.FAIL for t in failed)
    client = mlflow_client(folder)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    by_id = {r.info.run_id: r for r in runs}
    for t in [t for t in failed if schema.ATTR_RUN_ID in t.user_attrs]:  # a signal before its run: none to end
        run = by_id[t.user_attrs[schema.ATTR_RUN_ID]]
        assert run.info.status == "FAILED" and run.data.tags[schema.TAG_FAIL_REASON] == f"interrupted ({sig.name})"
    parent = [r for r in runs if r.data.tags.get(schema.TAG_ROLE) == schema.ROLE_STUDY][0]
    assert parent.info.status == "KILLED" and parent.data.tags[schema.TAG_FAIL_REASON] == f"interrupted ({sig.name})"
    # re-queued as a crash's trial is (Optuna's retry: the failed trial named, its params fixed)
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    table = "\n".join(f"{t.number} {t.state.name} {t.datetime_complete} {t.params} {t.system_attrs}" for t in trials)
    # each interrupted trial's params wait to run again, in a retry naming its lineage's first trial (Optuna's
    # failed_trial): a retry asked by a worker a moment before its own forwarded signal is interrupted in turn
    assert all(t.params in [w.params for w in waiting] for t in failed), f"{err}\n{table}"
    assert {w.system_attrs.get("failed_trial") for w in waiting if "failed_trial" in w.system_attrs} \
        <= {t.number for t in failed}, f"{err}\n{table}"


SWALLOWED = """
import os, signal, time
from harness import stopping
stopping.install()

class Finalized:
    def __del__(self):  # the signal's handler runs here, inside a finalizer, where Python drops what it raises
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100000):
            pass

try:
    x = Finalized()
    del x
    time.sleep(5)
    print("not interrupted")
except stopping.Interrupted as e:
    print("interrupted", e.signum)
"""


def test_a_signal_that_lands_in_a_finalizer_is_raised_again_in_ordinary_code(tmp_path):
    """A SIGTERM whose Interrupted is raised inside a __del__ (or a weakref callback: seen in a --workers 2 study,
    'Exception ignored in ... WeakKeyDictionary') is dropped by Python after printing a traceback; the harness
    sends the signal again, so the process is interrupted in ordinary code and prints no traceback."""
    proc = subprocess.run([sys.executable, "-c", SWALLOWED], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.stdout.strip() == f"interrupted {int(signal.SIGTERM)}", (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr

"""Units: work done exactly once by any number of processes through the storage (claims with takeover, post-search
units claimed atomically, retried once when their worker dies, failed with their reason)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from optuna.trial import TrialState

from harness import bookkeeping, units

from conftest import need_service

POSTGRES = os.environ.get("HARNESS_TEST_POSTGRES")

# a process of the study: opens the storage as the harness does, then claims or drains; the runner appends the unit's
# key to a log file (one line per run) and sleeps as its payload says
SCRIPT = textwrap.dedent("""
    import json, sys, time
    import optuna
    from harness import bookkeeping, units
    url, name, what, log = sys.argv[1:5]
    study = optuna.load_study(study_name=name, storage=bookkeeping.storage(url))
    if what == "once":
        got = units.once(study, "baselines", lambda: study.enqueue_trial({"lr": 0.1}, user_attrs={"baseline": "x"}))
        print(json.dumps(got))
    else:
        def run(unit, on_run):
            on_run("run-" + unit.key)
            with open(log, "a") as f:
                f.write(unit.key + "\\n")
            time.sleep(unit.payload.get("sleep", 0))
            if unit.payload.get("fail"):
                raise ValueError("diverged")
        print(json.dumps(units.drain(study, None, {"replicate": run}, poll=0.2, log=lambda *a: None)))
""")


def _storage(request, tmp_path):
    if request.param == "postgresql":
        need_service(bool(POSTGRES), "PostgreSQL (HARNESS_TEST_POSTGRES, set by .ci/run)")
        return POSTGRES
    return f"sqlite:///{tmp_path / 'o.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    return _storage(request, tmp_path)


def _new_study(url, tmp_path):
    name = f"u{time.time_ns()}"
    study = optuna.create_study(study_name=name, storage=bookkeeping.storage(url), direction="maximize")
    (tmp_path / "run.py").write_text(SCRIPT)
    return study, name


def _procs(tmp_path, url, name, what, n):
    cmd = [sys.executable, str(tmp_path / "run.py"), url, name, what, str(tmp_path / "log.txt")]
    return [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]


def test_once_runs_the_work_in_exactly_one_of_four_processes(url, tmp_path):
    """Four processes started together claim "baselines": one runs the work (one enqueued trial), the others are told
    it is done or held; none enqueues twice."""
    study, name = _new_study(url, tmp_path)
    outs = [p.communicate(timeout=120) for p in _procs(tmp_path, url, name, "once", 4)]
    got = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert got.count(True) == 1 and set(got) <= {True, False, None}, outs
    assert len(study.get_trials()) == 1
    assert units.is_done(study, "baselines") and units.once(study, "baselines", lambda: 1 / 0) is False


def test_a_dead_holders_claim_is_taken_over_and_a_live_ones_is_not(tmp_path):
    """A claim whose holder is provably dead (it exited before finishing) is taken over once, and the work runs;
    while its holder lives, the claim is held (None) and the work does not run."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    study, name = _new_study(url, tmp_path)
    storage = study._storage
    assert units._take(storage, f"{name}{units.CLAIM}plan")  # held by this live process, not done
    assert units.once(study, "plan", lambda: 1 / 0) is None
    proc = subprocess.Popen(["sleep", "60"])
    dead = {"harness.pid": proc.pid, "harness.pid_ticks": bookkeeping.start_ticks(proc.pid)}
    proc.kill()
    proc.wait()
    sid = storage.get_study_id_from_name(f"{name}{units.CLAIM}plan")
    for k, v in dead.items():
        if v is not None:
            storage.set_study_system_attr(sid, k, v)
    ran = []
    assert units.once(study, "plan", lambda: ran.append(1)) is True and ran == [1]
    assert units.is_done(study, "plan") and units.once(study, "plan", lambda: ran.append(2)) is False


def test_units_run_exactly_once_across_three_draining_processes(url, tmp_path):
    """Nine units planned (twice: the second plan adds nothing), drained by three processes at once: every unit ran
    once (the runners' log has each key once), each is COMPLETE once with its MLflow run id, none waits or runs."""
    study, name = _new_study(url, tmp_path)
    todo = [units.Unit("replicate", f"replicate:{i}:1", {"sleep": 0.2}) for i in range(9)]
    assert units.plan(study, "replicates-a", todo) is True
    assert units.plan(study, "replicates-a", todo) is False
    outs = [p.communicate(timeout=120) for p in _procs(tmp_path, url, name, "drain", 3)]
    ran = (tmp_path / "log.txt").read_text().split()
    assert sorted(ran) == sorted(u.key for u in todo), outs
    comp = units.companion(study)
    done = comp.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs["unit_key"] for t in done) == sorted(u.key for u in todo)
    assert all(t.user_attrs["mlflow_run_id"] == "run-" + t.user_attrs["unit_key"] for t in done)
    assert units.counts(comp)["waiting"] == units.counts(comp)["running"] == 0


def test_a_unit_whose_worker_is_killed_runs_again_once_and_a_failing_one_keeps_its_reason(tmp_path):
    """SIGKILL of the process running a unit: the next drain fails it ('died'), enqueues it again once, and runs it
    to COMPLETE. A unit whose runner raises is FAILED with its reason and not retried."""
    url = f"sqlite:///{tmp_path / 'o.db'}"
    study, name = _new_study(url, tmp_path)
    assert units.plan(study, "p", [units.Unit("replicate", "replicate:0:1", {"sleep": 30}),
                                   units.Unit("replicate", "replicate:1:1", {"fail": True})])
    (victim,) = _procs(tmp_path, url, name, "drain", 1)
    comp = units.companion(study)
    deadline = time.time() + 60
    while not (tmp_path / "log.txt").exists() or "replicate:0:1" not in (tmp_path / "log.txt").read_text():
        assert time.time() < deadline and victim.poll() is None
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # the retry must not sleep 30 s again: the test's runner reads the payload, so change what the retry will see
    (running,) = comp.get_trials(states=(TrialState.RUNNING,))
    comp._storage.set_trial_user_attr(running._trial_id, "unit_payload", json.dumps({"sleep": 0}))
    (p,) = _procs(tmp_path, url, name, "drain", 1)
    p.communicate(timeout=120)
    by_key = {}
    for t in comp.get_trials():
        by_key.setdefault(t.user_attrs["unit_key"], []).append(t)
    killed = sorted(by_key["replicate:0:1"], key=lambda t: t.number)
    assert [t.state for t in killed] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "died" in killed[0].system_attrs["fail_reason"] and killed[1].system_attrs["failed_trial"] == killed[0].number
    (failed,) = by_key["replicate:1:1"]
    assert failed.state == TrialState.FAIL and failed.system_attrs["fail_reason"] == "ValueError: diverged"

"""Stopping: a signal held back while a trial changes hands, whatever thread the kernel hands it to; a trial failed
by a signal never left without its retry."""

from __future__ import annotations

import datetime
import os
import signal
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from harness import bookkeeping, schema, stopping


@pytest.fixture
def handlers():
    """stopping.install() for one test, the process's own handlers and unraisable hook restored after."""
    old = {s: signal.getsignal(s) for s in stopping.SIGNALS}
    hook = sys.unraisablehook
    stopping.install()
    yield
    for s, h in old.items():
        signal.signal(s, h)
    sys.unraisablehook = hook


def test_a_signal_inside_deferred_is_raised_as_the_block_ends_even_when_another_thread_receives_it(handlers):
    """A process-directed SIGTERM goes to any thread that does not block it (here one started before the block, as
    MLflow's logging thread is), and Python runs the handler in the main thread at its next bytecode: the body still
    runs to its end, and Interrupted(SIGTERM) is raised as the block ends. A second signal meanwhile is ignored."""
    done, stop = [], threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with pytest.raises(stopping.Interrupted) as caught:
            with stopping.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.2)  # the handler has run by now: the body goes on all the same
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
                done.append("body ended")
    finally:
        stop.set()
        other.join()
    assert done == ["body ended"] and caught.value.signum == signal.SIGTERM and caught.value.code == 143


def test_a_signal_outside_deferred_is_raised_at_once(handlers):
    reached = []
    with pytest.raises(stopping.Interrupted):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
        reached.append(True)
    assert reached == []


def test_requeue_missing_enqueues_only_the_interrupted_trials_left_without_a_retry(tmp_path):
    """Four FAIL trials: one interrupted whose retry is queued, one interrupted whose process died before it
    enqueued the retry, one interrupted before the signal at hand (an earlier run's), one failed for another reason.
    Only the second is enqueued again, with its params; a second call enqueues nothing."""
    s = optuna.create_study(study_name="q", storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}"))
    reason = "interrupted (SIGTERM)"

    def failed(lr, why):
        s.enqueue_trial({"lr": lr})
        t = s.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)})
        s._storage.set_trial_system_attr(t._trial_id, schema.ATTR_FAIL_REASON, why)
        s.tell(t, state=TrialState.FAIL)
        return t.number

    earlier = failed(0.3, reason)
    time.sleep(0.01)
    since = datetime.datetime.now()
    queued, lost, other = failed(0.1, reason), failed(0.01, reason), failed(0.02, "nan loss")
    optuna.storages.RetryFailedTrialCallback()(s, s._storage.get_trial(s.trials[queued]._trial_id))
    assert bookkeeping.requeue_missing(s, None, reason, since) == 1
    waiting = [t for t in s.get_trials(states=(TrialState.WAITING,))]
    assert sorted(optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) for t in waiting) == [queued, lost]
    assert [t.params["lr"] for t in waiting if t.system_attrs["failed_trial"] == lost] == [0.01]
    assert bookkeeping.requeue_missing(s, None, reason, since) == 0
    assert earlier not in {t.system_attrs.get("failed_trial") for t in s.trials} and other != lost


def test_a_signal_while_a_model_is_built_stays_a_signal(handlers):
    """Every trial builds its model through models._call_factory, which turns a user factory's errors into a
    ConfigError naming model.name. A SIGTERM landing there is Interrupted, not a "bad model": turned into an error,
    the trial failed for the wrong reason and the worker, its signal spent (handlers at SIG_IGN), ran on."""
    from harness import models
    from harness.config import ConfigError

    def factory(num_classes):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        raise AssertionError("not interrupted")

    with pytest.raises(stopping.Interrupted):
        models._call_factory("slow", factory, 10)
    with pytest.raises(ConfigError, match="model.name"):  # a factory's own error is still the user's
        models._call_factory("bad", lambda n: 1 / 0, 10)

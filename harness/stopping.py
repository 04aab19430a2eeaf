"""SIGTERM and SIGINT end a study the way a crash is recovered (issue 27 item 3): the signal becomes an exception
(Interrupted) in the main thread, the trials this process runs are failed with the reason "interrupted (SIGTERM)"
and re-queued, their MLflow runs and the parent end with the truth, a launcher stops its workers (the signal
forwarded, waited for, then SIGKILL), one line is printed and the exit code is 128 + the signal (143, 130)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

SIGNALS = (signal.SIGTERM, signal.SIGINT)
WORKER_GRACE_S = 30.0  # a worker's own wind-down: a few storage and MLflow writes (seconds under load)
_watched: dict = {}  # what wind_down cleans: "ctx" and "study" of this process, once open
_held: dict = {"depth": 0, "pending": None}  # deferred(): how deep, and the Interrupted it holds back


class Interrupted(BaseException):
    """A termination signal, raised in the main thread; BaseException so no `except Exception` takes it for a
    failed trial and goes on."""

    def __init__(self, signum: int):
        import datetime

        super().__init__(signal.Signals(signum).name)
        self.signum, self.at = signum, datetime.datetime.now()

    @property
    def reason(self) -> str:
        return f"interrupted ({signal.Signals(self.signum).name})"

    @property
    def code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


def _raise(signum, _frame):
    for s in SIGNALS:  # the wind-down runs once: a second Ctrl-C or the launcher's forward must not cut it short
        signal.signal(s, signal.SIG_IGN)
    if _held["depth"]:  # inside deferred(): raised as it ends
        _held["pending"] = Interrupted(signum)
        return
    raise Interrupted(signum)


RESEND_S = 0.05  # after a swallowed Interrupted: long enough to leave the finalizer that swallowed it


def _unraisable(default):
    """sys.unraisablehook: an Interrupted raised while the main thread ran a finalizer or a weakref callback (the
    signal arrives between any two bytecodes) is one Python can only print ("Exception ignored in ...") and drop; the
    signal is sent again shortly, so it is raised in ordinary code. Anything else goes to the default hook."""

    def hook(unraisable):
        if isinstance(unraisable.exc_value, Interrupted):
            import threading

            signum = unraisable.exc_value.signum
            signal.signal(signum, _raise)
            threading.Timer(RESEND_S, os.kill, (os.getpid(), signum)).start()
            return
        default(unraisable)

    return hook


def install() -> None:
    """SIGTERM and SIGINT raise Interrupted in this process's main thread."""
    for s in SIGNALS:
        signal.signal(s, _raise)
    if not getattr(sys.unraisablehook, "harness_stopping", False):
        sys.unraisablehook = _unraisable(sys.unraisablehook)
        sys.unraisablehook.harness_stopping = True


def watch(ctx, study) -> None:
    """The context and study wind_down cleans up when a signal arrives."""
    _watched.update(ctx=ctx, study=study)


def wind_down(e: Interrupted, parent: bool = True) -> int:
    """This process's RUNNING trials failed with e.reason (fail_reason), their MLflow runs FAILED, their params
    enqueued again; with `parent` (the launcher, or a study of one process) dead workers' trials recovered, orphan
    runs ended and the parent run ended KILLED with the reason. Returns how many trials were failed here."""
    from harness import bookkeeping, schema, tracking

    ctx, study = _watched.get("ctx"), _watched.get("study")
    if ctx is None or study is None:
        return 0
    n = bookkeeping.fail_own(study, ctx.client, e.reason)
    if not parent:
        return n
    # the launcher's own workers, stopped and waited for: whatever trial they still hold RUNNING (a wind-down cut
    # short by a busy store) is theirs, whatever a liveness check would say of a pid just reaped
    n += bookkeeping.fail_own(study, ctx.client, e.reason, pids=getattr(e, "worker_pids", ()))
    n += bookkeeping.recover_dead(study, ctx.client)  # workers killed after the grace period
    bookkeeping.requeue_missing(study, ctx.client, e.reason, e.at)  # ... between a trial's FAIL and its retry
    bookkeeping.sweep_orphans(ctx.client, ctx.exp_id, ctx.parent_id, study)
    tracking.end_run(ctx.client, ctx.parent_id, "KILLED", {schema.TAG_FAIL_REASON: e.reason})
    # the workers' own (failed by them, with this reason, since the signal)
    return n + sum(t.system_attrs.get(schema.ATTR_FAIL_REASON) == e.reason and t.datetime_complete is not None
                   and t.datetime_complete >= e.at and t.system_attrs.get(schema.ATTR_PID) != os.getpid()
                   for t in study.get_trials(deepcopy=False))


@contextlib.contextmanager
def deferred():
    """SIGTERM and SIGINT held back (raised as the block ends) while a trial changes hands: between Optuna's ask and
    the attrs naming this process, a signal would leave a RUNNING trial nobody can tell is ours. Held in the handler,
    not by the main thread's signal mask: a process-directed signal goes to any thread that does not block it
    (MLflow's logging thread, the system-metrics sampler), and Python then runs the handler in the main thread
    whatever its mask, so a masked main thread was interrupted mid-ask all the same."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        if not _held["depth"] and _held["pending"] is not None:
            pending, _held["pending"] = _held["pending"], None
            raise pending


def stop_workers(procs: list, signum: int, grace: float = WORKER_GRACE_S) -> None:
    """The launcher's workers: the signal forwarded to each live one, waited for together up to `grace` seconds,
    then SIGKILL for any left (its trial is then recovered as a dead worker's). None outlives the launcher."""
    import time

    for p in procs:
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signum)
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            print(f"worker pid {p.pid} still running {grace:.0f} s after {signal.Signals(signum).name}: killed",
                  file=sys.stderr, flush=True)
            p.kill()
            p.join()


@contextlib.contextmanager
def worker_exit():
    """A --workers process's body: on a signal, its own trials are wound down and it exits 128 + the signal,
    silently (the launcher prints the one line)."""
    try:
        yield
    except Interrupted as e:
        try:
            wind_down(e, parent=False)
        except Exception as err:  # noqa: BLE001 - the launcher recovers what is left (recover_dead, sweep_orphans)
            from harness import store

            print(store.redact(f"worker pid {os.getpid()}: wind-down incomplete ({type(err).__name__}: {err})"[:500]),
                  file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(e.code)

"""Optuna bookkeeping: the storage, heartbeats, recovery of dead trials, orphan-run sweeps, the host lock.

The only module that touches Optuna internals (`study._storage`, `trial._trial_id`): everything else asks, tells
and reads trials through the public API.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import fcntl
import hashlib
import socket
import threading
import warnings

import optuna
import psutil
from optuna.trial import TrialState

from harness import schema, store, tracking

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_S, GRACE_S = 10, 60  # a worker silent for 60 s is dead; its trial is failed and retried
# We drive trials with ask/tell (to stop at exactly N finished trials across workers) and beat the heartbeat
# ourselves, which Optuna warns about; the heartbeat/retry APIs are marked experimental since v2.8 but stable.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def storage(url: str, client=None) -> optuna.storages.RDBStorage:
    """The RDB storage at `url` with heartbeats; a stale trial's MLflow run (through `client`) ends FAILED and its
    parameters are enqueued again. Raises ConnectionError naming the storage (never its password)."""
    if url.startswith("sqlite"):
        store.quick_commits()
        # several local workers share one file: wait for the lock instead of failing (optuna FAQ, optuna#820)
        engine = {"connect_args": {"timeout": 60}}
    else:
        engine = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    try:  # under the store's init lock, retried: two processes creating one new storage both succeed
        return store.initialized(url, lambda: optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            heartbeat_stale_trial_callback=_retry_callback(client)))
    except Exception as e:  # sqlalchemy OperationalError & co: say where, without the password
        raise ConnectionError(f"Optuna storage {store.redact(url)} is unreachable: "
                              f"{store.redact(str(e).splitlines()[0][:300])}") from None


def study_system_attr(study: optuna.Study, key: str, value) -> None:
    """A system attr of the study (Study.set_system_attr is deprecated; the storage's own call is not)."""
    study._storage.set_study_system_attr(study._study_id, key, value)


def trial_seed(seed: int, number: int) -> int:
    """A trial's sampler seed: 32 bits of sha256("seed:number"), so neighbouring numbers give unrelated streams."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "little")


def seed_per_trial(sampler, seed: int):
    """Make what a sampler draws a function of (seed, trial number) alone, as each trial starts (Optuna calls
    before_trial with the number it assigned, unique within the storage), for every sampler the config offers:
    - the random states: TPE's own and its startup RandomSampler's, RandomSampler's, QMC's independent sampler
      (which draws its first trial and the conditional parameters QMC cannot handle). Seeded once per process
      instead, two processes of one study drew identical parameters (issue 15: trials 2 and 3);
    - QMC's point: the trial number is its index in the one scrambled sequence. Optuna's own index is a counter in
      the study's system attrs, read then written without a transaction, so two processes could read one value
      and draw the same point (a comment in QMCSampler._find_sample_id says the block should be atomic and is not)."""
    states = [obj._rng for obj in (sampler, getattr(sampler, "_random_sampler", None),
                                   getattr(sampler, "_independent_sampler", None)) if hasattr(obj, "_rng")]
    original, number = sampler.before_trial, [0]
    if hasattr(sampler, "_find_sample_id"):  # QMC: point = trial number (its relative sample runs inside the trial)
        sampler._find_sample_id = lambda study, search_space: number[0]

    def before_trial(study, trial):
        number[0] = trial.number
        base = trial_seed(seed, trial.number)
        for i, state in enumerate(states):
            state.rng.seed((base + i) % 2**32)
        original(study, trial)

    sampler.before_trial = before_trial
    return sampler


MAX_RETRY = 3  # a search trial whose worker died runs again at most 3 times (units: harness.units.UNIT_RETRIES)


def _retry_callback(client, max_retry: int = MAX_RETRY, reason: str = "worker died (stale heartbeat or dead process)"):
    """A dead worker's trial: its MLflow run ends FAILED (with `reason`), and the same params and user attrs are
    enqueued again, at most max_retry times along one lineage (Optuna's failed_trial / retry_history attrs)."""
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def callback(study, frozen):
        # the retry first, its MLflow run after: a process killed in between (a worker's wind-down cut short by its
        # launcher's SIGKILL) leaves a RUNNING run, which sweep_orphans ends, never a failed trial without its retry.
        # The retry copies system attrs: drop the dead worker's identity and its fail reason
        clone = copy.deepcopy(frozen)
        clone.system_attrs = {k: v for k, v in frozen.system_attrs.items() if k not in schema.TRIAL_SYSTEM_ATTRS}
        clone.distributions = _holding(clone.params, clone.distributions)
        retry(study, clone)
        run_id = frozen.user_attrs.get(schema.ATTR_RUN_ID)
        if client is not None and run_id:
            tracking.fail_runs(client, [run_id], reason)

    return callback


def _holding(params: dict, distributions: dict) -> dict:
    """The distributions widened to hold the trial's own values. An enqueued baseline's fixed value may lie outside
    the search's range (the linear probe's unfreeze_epoch = train.epochs, beyond search.unfreeze_epoch's bounds);
    Optuna stored it, but its retry (create_trial) validates values against distributions and would refuse it, so a
    dead baseline would never run again."""
    out = dict(distributions)
    for name, d in distributions.items():
        v = params.get(name)
        if v is None or d._contains(d.to_internal_repr(v)):
            continue
        if isinstance(d, (optuna.distributions.IntDistribution, optuna.distributions.FloatDistribution)):
            out[name] = type(d)(low=min(d.low, v), high=max(d.high, v), log=d.log,
                                step=None if d.step is None or d.log else d.step)
        elif isinstance(d, optuna.distributions.CategoricalDistribution):
            out[name] = optuna.distributions.CategoricalDistribution(list(d.choices) + [v])
    return out


@contextlib.contextmanager
def host_lock(name: str):
    """Serializes 'count, then ask' among this machine's workers so the study stops at exactly N."""
    path = store.home() / f".{name}.lock"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def counts(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials of the study: finished = completed or pruned (failed ones do not count)."""
    trials = study.get_trials(deepcopy=False)
    return sum(t.state in FINISHED for t in trials), sum(t.state == TrialState.RUNNING for t in trials)


# psutil's create_time is boot time + the process's start ticks; the boot time is derived from the wall clock, so
# it moves when the clock is adjusted (a live pid read 1796651722.27, then 1796651723.27). Start times closer than
# this are the same process; a reused pid starts later than the dead one by far more (pids wrap after 2^22 forks).
START_TOLERANCE_S = 5.0


def start_ticks(pid: int) -> int | None:
    """The kernel's start time of a process in clock ticks since boot (field 22 of /proc/PID/stat): exact and never
    moved by the wall clock. None where /proc cannot tell (not Linux, no such process, no permission)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19])  # after the command name, which may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def identity() -> dict:
    """This process as the system attrs of the trials it runs: host, pid, start time (seconds, psutil) and kernel
    start ticks (Linux); the evidence recover_dead weighs."""
    me = psutil.Process()
    return {schema.ATTR_HOST: socket.gethostname(), schema.ATTR_PID: me.pid, schema.ATTR_PID_START: me.create_time(),
            schema.ATTR_PID_TICKS: start_ticks(me.pid)}


def process_state(attrs: dict) -> str:
    """'alive', 'dead' or 'unknown' for the process a trial's system attrs name (on this host). Dead only when
    provably gone (no such pid, or a zombie) or provably another process (other kernel start ticks, or a start
    time more than START_TOLERANCE_S apart); whatever cannot be read is 'unknown', which the caller must treat as
    alive until the heartbeat grace period says otherwise."""
    pid = attrs.get(schema.ATTR_PID)
    if not isinstance(pid, int):
        return "unknown"
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # a killed --workers process until its launcher joins it
            return "dead"
        ticks, recorded = start_ticks(pid), attrs.get(schema.ATTR_PID_TICKS)
        if ticks is not None and isinstance(recorded, int):
            return "alive" if ticks == recorded else "dead"
        started = attrs.get(schema.ATTR_PID_START)
        if not isinstance(started, (int, float)):
            return "unknown"
        return "alive" if abs(proc.create_time() - started) <= START_TOLERANCE_S else "dead"
    except psutil.NoSuchProcess:
        return "dead"
    except psutil.Error:  # AccessDenied and the like: cannot tell
        return "unknown"


def ask(study: optuna.Study, worker: int) -> optuna.Trial:
    """A new trial that says which process runs it (identity(): recover_dead's evidence), with a first heartbeat at
    once: Optuna never calls a trial stale before its first beat, so a worker dying in its first HEARTBEAT_S seconds
    would otherwise leave a RUNNING trial forever."""
    from harness import stopping

    with stopping.deferred():  # a signal waits until the trial names its process (stopping.wind_down finds it)
        trial = study.ask()
        study._storage.record_heartbeat(trial._trial_id)
        for k, v in {**identity(), schema.ATTR_WORKER: worker}.items():
            if v is not None:
                study._storage.set_trial_system_attr(trial._trial_id, k, v)
    return trial


def tell(study: optuna.Study, trial: optuna.Trial, values=None, state=TrialState.COMPLETE) -> str | None:
    """Tell the trial's outcome; None when told, else why not: another process finished it first (recover_dead or a
    heartbeat check that judged this worker dead), which must never take this live worker down. Optuna refuses a
    finished trial with ValueError ("Cannot tell a FAIL trial") or, when it finishes between Optuna's check and its
    write, UpdateFinishedTrialError; either is re-read from the storage, and raised again if the trial still runs."""
    from harness import stopping

    try:
        with stopping.deferred():  # told whole, or not at all
            study.tell(trial, values, state=state)
        return None
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        frozen = study._storage.get_trial(trial._trial_id)
        if not frozen.state.is_finished():
            raise
        return finished_elsewhere(frozen)


class TrialTaken(Exception):
    """The trial this worker runs was finished by another process (it judged this worker dead): the worker drops its
    outcome and goes on with the next trial."""


def taken(trial: optuna.Trial) -> TrialTaken:
    """The TrialTaken for a trial whose write raised UpdateFinishedTrialError, with what the storage says of it."""
    return TrialTaken(finished_elsewhere(trial.study._storage.get_trial(trial._trial_id)))


def finished_elsewhere(frozen) -> str:
    """Why a trial this worker was running is already finished: its state and the fail reason another process gave."""
    reason = frozen.system_attrs.get(schema.ATTR_FAIL_REASON)
    return f"{frozen.state.name} by another process" + (f" ({reason})" if reason else "")


@contextlib.contextmanager
def beating(study: optuna.Study, trial: optuna.Trial):
    """A heartbeat every HEARTBEAT_S seconds while the trial runs, on a thread of its own."""
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is retried; the grace period is 6 beats
                study._storage.record_heartbeat(trial._trial_id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _fail(study: optuna.Study, trial_id: int, reason: str) -> bool:
    """Record the reason first (a finished trial can no longer be updated), then FAIL; False if another process
    finished or failed it in between."""
    try:
        study._storage.set_trial_system_attr(trial_id, schema.ATTR_FAIL_REASON, store.redact(reason))
        return study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """Tell a trial FAIL with its reason in the system attr fail_reason (Optuna's own place for it)."""
    study._storage.set_trial_system_attr(trial._trial_id, schema.ATTR_FAIL_REASON, store.redact(reason))
    study.tell(trial, state=TrialState.FAIL)


def fail_running(study: optuna.Study, reason: str) -> int:
    """FAIL every RUNNING trial (one-process studies: at start nothing can be running). Returns how many."""
    return sum(_fail(study, t._trial_id, reason)
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def fail_own(study: optuna.Study, client, reason: str, pids=None) -> int:
    """The RUNNING trials of this process (its host and pid; or of `pids` on this host: a launcher's stopped
    workers), as a crash is recovered: FAIL with `reason` (system and user attr fail_reason), their MLflow runs
    FAILED with it, their params enqueued again (harness.stopping: a signal). Returns how many."""
    me, n, callback = identity(), 0, _retry_callback(client, reason=reason)
    pids = {me[schema.ATTR_PID]} if pids is None else set(pids)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.system_attrs.get(schema.ATTR_HOST) == me[schema.ATTR_HOST] and t.system_attrs.get(schema.ATTR_PID) in pids:
            with contextlib.suppress(Exception):
                study._storage.set_trial_user_attr(t._trial_id, schema.ATTR_FAIL_REASON, reason)
            if _fail(study, t._trial_id, reason):
                callback(study, study._storage.get_trial(t._trial_id))
                n += 1
    return n


def requeue_missing(study: optuna.Study, client, reason: str, since: datetime.datetime) -> int:
    """Trials failed with `reason` since `since` whose retry is not in the study (their process was killed between
    its FAIL and its enqueue, under the bounds of MAX_RETRY): enqueued now, as fail_own would have. Returns how
    many. The launcher's last step after a signal, once no worker is left to enqueue its own."""
    trials = study.get_trials(deepcopy=False)
    retried = {optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) for t in trials}
    callback, n = _retry_callback(client, reason=reason), 0
    for t in trials:
        if (t.state == TrialState.FAIL and t.number not in retried and t.datetime_complete is not None
                and t.datetime_complete >= since and t.system_attrs.get(schema.ATTR_FAIL_REASON) == reason):
            callback(study, t)
            n += 1
    return n


def recover_dead(study: optuna.Study, client, max_retry: int = MAX_RETRY) -> int:
    """RUNNING trials whose worker process on this host is provably gone (kill -9, OOM, reboot) or provably another
    process (process_state): FAIL them now (not after the heartbeat grace period), end their MLflow runs FAILED, and
    enqueue the same params again. A process that cannot be judged is left to the heartbeat (fail_stale), so a
    clock adjustment or an unreadable /proc never fails a live worker's trial."""
    host, n, callback = socket.gethostname(), 0, _retry_callback(client, max_retry)
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.system_attrs.get(schema.ATTR_HOST)
        if owner is None:  # asked, then its process died before it said who it was: give it the grace period
            if t.datetime_start is None or (now - t.datetime_start).total_seconds() < GRACE_S:
                continue
            reason = "worker died before it started the trial"
        elif owner != host or process_state(t.system_attrs) != "dead":
            continue  # another machine's, or alive, or cannot tell: the heartbeat decides (fail_stale)
        else:
            reason = f"worker pid {t.system_attrs.get(schema.ATTR_PID)} on {host} died"
        if _fail(study, t._trial_id, reason):
            callback(study, study._storage.get_trial(t._trial_id))
            n += 1
    return n


def fail_stale(study: optuna.Study, client, max_retry: int = MAX_RETRY) -> int:
    """Optuna's heartbeat check (fail_stale_trials) with a reason: a RUNNING trial whose worker has not beaten for
    GRACE_S seconds (another machine's, or one recover_dead could not judge) is failed with fail_reason naming its
    worker, its MLflow run ends FAILED, and its params are enqueued again. Returns how many."""
    n, callback = 0, _retry_callback(client, max_retry)
    rdb = getattr(study._storage, "_backend", study._storage)  # RDBStorage behind Optuna's cache
    grace = getattr(rdb, "grace_period", None) or 2 * (getattr(rdb, "heartbeat_interval", None) or HEARTBEAT_S)
    for trial_id in study._storage._get_stale_trial_ids(study._study_id):
        frozen = study._storage.get_trial(trial_id)
        who = frozen.system_attrs
        reason = (f"no heartbeat for {grace} s from worker pid {who.get(schema.ATTR_PID, '?')} on "
                  f"{who.get(schema.ATTR_HOST, '?')} (stale heartbeat: dead or cut off)")
        if _fail(study, trial_id, reason):
            callback(study, study._storage.get_trial(trial_id))
            n += 1
    return n


def sweep_orphans(client, exp_id: str, parent_id: str, study: optuna.Study | None) -> int:
    """Child runs left RUNNING whose trial is not running any more (the process died between two writes): end
    each with the status its trial has in Optuna, so no run stays RUNNING after a resume. With no Optuna study
    (harness.sustain outside search: one process, so a RUNNING child now is one whose process died), every
    RUNNING child ends FAILED."""
    # runs first, then states: a trial that starts in between has a state (RUNNING) and is left alone
    running = tracking.running_children(client, exp_id, parent_id)
    if study is None:
        for _, run_id in running:
            tracking.end_run(client, run_id, "FAILED", {schema.TAG_FAIL_REASON: "the sustain process died before "
                                                                                "the run finished"})
        return len(running)
    state = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}
    n = 0
    for number, run_id in running:
        if number in state and state[number] != TrialState.RUNNING:
            tracking.end_run(client, run_id, status.get(state.get(number), "FAILED"),
                             {schema.TAG_FAIL_REASON: "worker died before the trial finished"}
                             if state.get(number) not in status else None)
            n += 1
    return n

"""Work shared exactly once by every process of a study: claims, and post-search units claimed through the storage.

A *claim* is an Optuna study created under a reserved name: the storage's unique constraint on study names (sqlite or
PostgreSQL alike) lets exactly one process of any number, on any machines, create it. `once` runs a piece of work
(enqueueing the baselines, planning the seed replicates) under a claim, and a later process takes the claim over only
when its holder is provably dead or silent for the heartbeat grace period.

A *unit* (a seed replicate today; finalists, label budgets and soups later) is a WAITING trial of the study's
companion study `<name>:units` carrying its kind and key in user attrs. Popping a WAITING trial is atomic in Optuna's
RDB storage (WAITING -> RUNNING under a row lock), so each unit runs once; a unit whose worker dies is failed (by
recover_dead, or by its heartbeat) and enqueued again once; a failed unit keeps its reason; a re-run resumes.
"""

from __future__ import annotations

import dataclasses
import json
import time

import optuna
from optuna.trial import TrialState

from harness import bookkeeping, schema, store

SUFFIX = ":units"  # the companion study of post-search units
CLAIM = ":claim:"  # claims: <study>:claim:<name>[#attempt]
TAKEOVERS = 3  # a claim whose holder died is taken over at most this many times
UNIT_RETRIES = 1  # a unit whose worker died runs again once


@dataclasses.dataclass(frozen=True)
class Unit:
    """One piece of post-search work: kind names its runner, key is unique within the study (e.g. replicate:3:1),
    payload is what the runner needs (JSON)."""
    kind: str
    key: str
    payload: dict


# ------------------------------------------------------------------------------------------------------ claims

def _claim_name(study: optuna.Study, name: str, attempt: int) -> str:
    return f"{study.study_name}{CLAIM}{name}" + (f"#{attempt}" if attempt else "")


def _take(storage, claim: str) -> bool:
    """Create the claim study; True for the one process that did. Its holder (identity, time) goes in its attrs."""
    try:
        sid = storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], claim)
    except optuna.exceptions.DuplicatedStudyError:
        return False
    for k, v in {**bookkeeping.identity(), schema.ATTR_CLAIMED_AT: time.time()}.items():
        if v is not None:
            storage.set_study_system_attr(sid, k, v)
    return True


def _holder(storage, claim: str) -> dict:
    return storage.get_study_system_attrs(storage.get_study_id_from_name(claim))


ORPHAN_S = 10  # a claim whose holder never said who it is (killed between the two writes, ~1 ms) after this long


def _abandoned(storage, claim: str, attrs: dict) -> bool:
    """A claim whose holder cannot finish it: its process provably dead on this host, or the claim older than the
    heartbeat grace period on another (a claim's work takes seconds: enqueueing trials). A holder killed between
    creating the claim and naming itself leaves no time: the first process to see that writes when it did (in the
    storage, so every process agrees), and the claim is abandoned ORPHAN_S later."""
    import socket

    if schema.ATTR_CLAIMED_AT not in attrs:
        seen = attrs.get(schema.ATTR_SEEN_UNNAMED)
        if seen is None:
            storage.set_study_system_attr(storage.get_study_id_from_name(claim), schema.ATTR_SEEN_UNNAMED, time.time())
            return False
        return time.time() - float(seen) > ORPHAN_S
    if attrs.get(schema.ATTR_HOST) == socket.gethostname() and bookkeeping.process_state(attrs) == "dead":
        return True
    return time.time() - float(attrs[schema.ATTR_CLAIMED_AT]) > bookkeeping.GRACE_S


def once(study: optuna.Study, name: str, work) -> bool | None:
    """Run work() exactly once across every process of the study, under the claim `name`: True when this process ran
    it, False when it is done (by any process), None when another live process holds it now (ask again later).
    work must tolerate a holder that died part-way (it runs again under a takeover claim): enqueue what is missing.
    A finished claim is marked done, so later calls return False at once."""
    storage = study._storage
    for attempt in range(TAKEOVERS + 1):
        claim = _claim_name(study, name, attempt)
        if _take(storage, claim):
            work()
            storage.set_study_system_attr(storage.get_study_id_from_name(claim), schema.ATTR_DONE, True)
            return True
        attrs = _holder(storage, claim)
        if attrs.get(schema.ATTR_DONE):
            return False
        if not _abandoned(storage, claim, attrs):
            return None
    raise RuntimeError(f"claim {name!r} of study {study.study_name!r} was abandoned {TAKEOVERS + 1} times")


def is_done(study: optuna.Study, name: str) -> bool:
    storage = study._storage
    for attempt in range(TAKEOVERS + 1):
        try:
            if _holder(storage, _claim_name(study, name, attempt)).get(schema.ATTR_DONE):
                return True
        except KeyError:
            return False
    return False


# ------------------------------------------------------------------------------------------------------- units

def companion(study: optuna.Study) -> optuna.Study:
    """The study's companion of units, in the same storage (created by whichever process comes first)."""
    return optuna.create_study(storage=study._storage, study_name=study.study_name + SUFFIX, load_if_exists=True,
                               sampler=optuna.samplers.RandomSampler(seed=0))  # units sample nothing


def _unit(frozen) -> Unit:
    a = frozen.user_attrs
    return Unit(a[schema.ATTR_UNIT_KIND], a[schema.ATTR_UNIT_KEY], json.loads(a[schema.ATTR_UNIT_PAYLOAD]))


def keys(units: optuna.Study, states=None) -> list[str]:
    """The unit keys of the companion's trials (in the given states)."""
    return [t.user_attrs[schema.ATTR_UNIT_KEY] for t in units.get_trials(deepcopy=False, states=states)
            if schema.ATTR_UNIT_KEY in t.user_attrs]


def plan(study: optuna.Study, name: str, todo: list[Unit], again=()) -> bool | None:
    """Enqueue the units of `todo` not yet in the companion, exactly once across processes (the claim `name`, which
    should name the plan's content: a study extended later plans its new units under a new name). `again`: states
    whose units are enqueued again (harness.budgets retries FAIL on a re-run). Returns once()'s answer."""
    units = companion(study)

    def enqueue():
        # a holder that died part-way enqueued some: only the rest
        have = set(keys(units, states=[s for s in TrialState if s not in again]))
        for u in todo:
            if u.key not in have:
                units.enqueue_trial({}, user_attrs={schema.ATTR_UNIT_KIND: u.kind, schema.ATTR_UNIT_KEY: u.key,
                                                    schema.ATTR_UNIT_PAYLOAD: json.dumps(u.payload, sort_keys=True)})

    return once(study, name, enqueue)


def next_unit(units: optuna.Study, worker: int) -> tuple[optuna.Trial, Unit] | None:
    """Pop a WAITING unit (atomic), stamped with this process's identity and a first heartbeat; None if none waits."""
    trial_id = units._pop_waiting_trial_id()
    if trial_id is None:
        return None
    for k, v in {**bookkeeping.identity(), schema.ATTR_WORKER: worker}.items():
        if v is not None:
            units._storage.set_trial_system_attr(trial_id, k, v)
    units._storage.record_heartbeat(trial_id)
    trial = optuna.Trial(units, trial_id)
    return trial, _unit(units._storage.get_trial(trial_id))


def recover(units: optuna.Study, client) -> int:
    """Units of dead workers (this host: at once; others: after the heartbeat grace) failed with their reason, their
    MLflow runs ended FAILED, and enqueued again once."""
    return (bookkeeping.recover_dead(units, client, max_retry=UNIT_RETRIES)
            + bookkeeping.fail_stale(units, client, max_retry=UNIT_RETRIES))


def counts(units: optuna.Study) -> dict:
    trials = units.get_trials(deepcopy=False)
    return {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}


def drain(study: optuna.Study, client, runners: dict, worker: int = 0, log=print, until_planned: str | None = None,
          poll: float = 1.0) -> dict:
    """Run units until none is waiting or running (and, with until_planned, until that plan is done): each popped
    unit runs its kind's runner(unit, on_run) under a heartbeat; on_run(run_id) records its MLflow run on the unit
    (so a dead worker's run is ended FAILED). A runner's exception fails the unit with its reason, never the drain.
    Returns this process's counts {"complete", "failed"}."""
    units, done = companion(study), {"complete": 0, "failed": 0}
    while True:
        recover(units, client)
        got = next_unit(units, worker)
        if got is None:
            c = counts(units)
            planned = until_planned is None or is_done(study, until_planned)
            if planned and not c["waiting"] and not c["running"]:
                return done
            time.sleep(poll)  # another process runs the last units (or plans them): one may die and come back
            continue
        trial, unit = got
        with bookkeeping.beating(units, trial):
            try:
                runners[unit.kind](unit, lambda run_id: trial.set_user_attr(schema.ATTR_RUN_ID, run_id))
                state, reason = TrialState.COMPLETE, None
            except Exception as e:  # a failed unit is a line and a FAIL with its reason, never a failed drain
                state, reason = TrialState.FAIL, store.redact(f"{type(e).__name__}: {e}")
                log(f"warning: {unit.key} failed ({reason})")
            if reason:
                try:
                    units._storage.set_trial_system_attr(trial._trial_id, schema.ATTR_FAIL_REASON, reason)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass
            taken = bookkeeping.tell(units, trial, [0.0] if state == TrialState.COMPLETE else None, state)
        if taken:
            log(f"{unit.key} was finished {taken} while this process ran it; going on")
        else:
            done["complete" if state == TrialState.COMPLETE else "failed"] += 1

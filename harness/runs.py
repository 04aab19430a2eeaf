"""A trial's or seed replicate's life around its science: its MLflow child run from creation to its end, its memory."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import gc
import traceback

import optuna
import torch

from harness import bookkeeping, records, schema, store, tracking

# Here, not in tracking: starting a run records its description and dataset inputs from the Context (records, which
# writes through tracking), and ending one reads Optuna's verdict on the trial (bookkeeping).


@dataclasses.dataclass
class Run:
    """An open child run: its id, and the epoch training has reached (-1: none yet), which the tags of a pruned or
    failed run name. Training sets it as each epoch ends, before validating it."""
    id: str
    epoch: int = -1


def _logged(params: dict) -> dict:
    return {k: v for k, v in params.items() if v is not None}  # the probe's lr None is not logged


@contextlib.contextmanager
def trial_run(ctx, trial: optuna.Trial, params: dict, baseline: str = ""):
    """An Optuna trial's child run (trial-NNNN with its params; the trial's user attr mlflow_run_id), open while the
    block runs: it ends FINISHED when the block returns, KILLED when it raises optuna.TrialPruned (the epoch and why),
    FAILED with the epoch and the reason when it raises anything else. A trial that another process finished
    meanwhile (it judged this worker dead, and Optuna refuses the write) ends FAILED saying so, and
    bookkeeping.TrialTaken is raised instead: the worker goes on."""
    # the training seed of a search-time trial is the study seed (trial.train_trial); replicates tag their own
    tags = {schema.TAG_SEED: str(ctx.cfg.study.seed), **({schema.TAG_BASELINE: baseline} if baseline else {})}
    run_id = tracking.child_run(ctx.client, ctx.exp_id, ctx.parent_id, ctx.cfg.study.name, trial.number,
                                _logged(params), tags)
    trial.set_user_attr(schema.ATTR_RUN_ID, run_id)
    with _open(ctx, run_id, params, baseline, trial) as run:
        yield run


@contextlib.contextmanager
def replicate_run(ctx, source: dict, seed: int, params: dict, on_run=None):
    """The child run of a seed replicate of trial source["number"] (trial-NNNN-seedS, tagged with the source and the
    seed), open while the block runs: FINISHED when it returns, FAILED with the epoch and the reason when it raises.
    on_run(run_id): the unit that runs it records its run (a dead worker's run is ended FAILED)."""
    run_id = tracking.replicate_run(ctx.client, ctx.exp_id, ctx.parent_id, ctx.cfg.study.name, source["number"], seed,
                                    _logged(params), source["baseline"])
    if on_run is not None:
        on_run(run_id)
    with _open(ctx, run_id, params, source["baseline"]) as run:
        yield run


@contextlib.contextmanager
def _open(ctx, run_id: str, params: dict, baseline: str, trial: optuna.Trial | None = None):
    """The lifecycle both share; trial None: a replicate, which is never pruned and writes to no Optuna trial."""
    client = ctx.client
    sampler = records.start(ctx, run_id, params, baseline)  # description, dataset inputs, system metrics
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)  # gpu_peak_mb is this run's peak, not the process's
    run = Run(run_id)
    try:
        yield run
    except optuna.TrialPruned as err:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # the worker's tell says why
            trial.set_user_attr(schema.ATTR_PRUNED_EPOCH, run.epoch)
        tracking.end_run(client, run_id, "KILLED", {schema.TAG_PRUNED_EPOCH: run.epoch,
                                                    schema.TAG_PRUNED_REASON: str(err)})
        raise
    except optuna.exceptions.UpdateFinishedTrialError:
        # another process finished this trial while it trained (it judged this worker dead): the run ends FAILED
        # with that truth, and the worker goes on (its retry, enqueued by that process, re-runs these params)
        taken = bookkeeping.taken(trial)
        tracking.end_run(client, run_id, "FAILED", {schema.TAG_FAIL_REASON: f"the Optuna trial was finished {taken} "
                                                                          f"while this worker ran it",
                                                    schema.TAG_FAILED_EPOCH: run.epoch})
        raise taken from None
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        if trial is not None:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                trial.set_user_attr(schema.ATTR_FAIL_REASON, store.redact(reason))
        tracking.end_run(client, run_id, "FAILED", {schema.TAG_FAIL_REASON: reason, schema.TAG_FAILED_EPOCH: run.epoch})
        raise
    else:
        records.stop(sampler)  # its final sample before the run ends
        tracking.end_run(client, run_id, "FINISHED")
    finally:
        records.stop(sampler)  # no-op when already stopped


def frees_memory(run):
    """`run` (trial.objective, trial.replicate), then _free, once its frames are gone: a with block holds the model in
    its function's locals until that function returns, so the run's end cannot free it. A failure's traceback (and
    that of the error it was raised from: TrialTaken's) keeps the frames it passed through, the model, its groups and
    the view in their locals: those are cleared first (the type and message stay: workers log and tell them)."""
    @functools.wraps(run)
    def freeing(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        except BaseException as err:
            chained = err
            while chained is not None:
                traceback.clear_frames(chained.__traceback__)
                chained = chained.__context__
            raise
        finally:
            _free()

    return freeing


def _free() -> None:
    """Free the trial's model now (memory must not grow across trials, optuna#1224), then freeze what survives: the
    context, stores and imported modules, ~630k objects here. A full collection scanned them all after every trial,
    0.26 s of a frozen-body trial's 0.5 s (2 CPU cores); frozen, the next collections scan only the ~1k objects made
    since. Frozen objects still die when their count drops to zero; only a cycle among them that becomes garbage
    later is never collected. What survives a trial's full collection is mostly that long-lived state (rss_mb stays
    flat over 30 trials, README "Memory")."""
    gc.collect()
    # unfreeze at exit, so that the last collection still finalizes them (else nanobind reports triton's objects as
    # leaked); registered once (gc.get_freeze_count walks every frozen object: 50 ms)
    atexit.unregister(gc.unfreeze)
    atexit.register(gc.unfreeze)
    gc.freeze()
    torch.cuda.empty_cache()  # a no-op unless this process uses CUDA

"""One worker's trial loop: ask, fine-tune, tell, until the study has its N finished trials; progress and best weights."""

from __future__ import annotations

import dataclasses
import sys
import time

import optuna
import torch
from optuna.trial import TrialState

from harness import (baseline_grid, bookkeeping, corruption_error, schema, selection, soups, store, tracking,
                     trial as trialmod, units)


def best_value(study: optuna.Study) -> float | None:
    vals = [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    return max(vals) if vals else None


@dataclasses.dataclass
class Progress:
    """The progress line of a worker: trial, epoch, loss, val_acc, the best value so far and the worker's thread
    budget (its torch CPU threads, harness.cores.thread_budget). The storage is read once a trial (at its first
    epoch), not every epoch: each read is a query, ~10 ms on sqlite."""
    study: optuna.Study
    n_trials: int
    epochs: int
    prefix: str = ""
    tty: bool = False  # one line per trial, updated in place; workers sharing a terminal print plain lines
    log: object = print
    finished: int = 0
    best: float | None = None
    threads: int = 0  # torch CPU threads of this worker; 0 = not stated
    primed: int | None = None  # the trial whose finished count and best value work() passed in (no storage read)

    def __call__(self, number: int, epoch: int, loss: float, val_acc: float) -> None:
        if epoch == 0 and self.primed != number:
            self.finished = bookkeeping.counts(self.study)[0]
            self.best = best_value(self.study)
        best_txt = f"  best so far {self.best:.4f}" if self.best is not None else ""
        budget = f"  [{self.threads} thread{'s' if self.threads > 1 else ''}]" if self.threads else ""
        line = (f"{self.prefix}trial {number} ({self.finished + 1} of {self.n_trials})  epoch {epoch + 1}/"
                f"{self.epochs}  train_loss {loss:.4f}  val_acc {val_acc:.4f}{best_txt}{budget}")
        if self.tty:
            sys.stdout.write("\r\033[K" + line + ("\n" if epoch + 1 == self.epochs else ""))
            sys.stdout.flush()
        else:
            self.log(line)


def save_if_best(ctx, study: optuna.Study):
    """on_complete for trial.objective: the trial's weights as a safetensors artifact on its run when it is a finalist
    of the trials finished so far (harness.selection.in_pool: every possible selection keeps its weights, the
    champion registers them), and the parent's best-trial tags while the search runs, when it beats every finished
    trial (tag_best sets the final ones)."""
    def on_complete(trial, value, model, run_id):
        score = value[0] if isinstance(value, tuple) else value
        search, families, _ = searched(study)
        family = trial.user_attrs.get(schema.ATTR_BASELINE, "")
        soups.keep(ctx, search, trial.number, score, trialmod.with_strategy(ctx.cfg, trial.params, family), family,
                   model)  # the soups' ingredients (study.keep_weights)
        if not selection.in_pool(score, trial.number, family, search, families, ctx.cfg.study.finalists):
            return
        from safetensors.torch import save

        state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
        tracking.log_bytes(ctx.client, run_id, save(state), "model/weights.safetensors")
        if not search or score > max(search.values()):
            tracking.set_tags(ctx.client, ctx.parent_id,
                              {schema.TAG_BEST_TRIAL: trial.number, schema.TAG_BEST_RUN_ID: run_id})

    return on_complete


def backfill(ctx, study: optuna.Study, log=print) -> None:
    """Corruption errors of trials that finished before their reference (the tuned full FT baseline) was settled."""
    try:
        # the suite's severity sets; a launcher that handed the suite to its workers knows the config's shifts only
        sets = [e for e in ctx.suite.test if e.kind == "severity"] if ctx.suite else []
        corruptions = [e.name for e in sets] if ctx.suite else ctx.cfg.shifts.test
        corruption_error.backfill_corruption_errors(study, ctx.client, corruptions, [e.name for e in sets if not e.paired])
    except Exception as e:  # a missing CE is worth a line, never a finished study
        log(f"warning: corruption errors not backfilled ({type(e).__name__}: {e})")


def run_trial(ctx, study: optuna.Study, trial: optuna.Trial, progress, on_complete, prefix: str = "",
              log=print) -> TrialState | None:
    """Run one asked trial to its end and tell Optuna: its state, or None when another process finished it meanwhile.
    A full FT baseline may settle the CE reference: the earlier trials' corruption errors are backfilled then."""
    values, line = None, None
    with bookkeeping.beating(study, trial):
        try:
            values, state = trialmod.objective(trial, ctx, progress, on_complete), TrialState.COMPLETE
        except optuna.TrialPruned as e:
            state, line = TrialState.PRUNED, f"{prefix}trial {trial.number} {e}"
        except bookkeeping.TrialTaken as e:
            state, line = None, f"{prefix}trial {trial.number} was finished {e} while this worker ran it; going on"
        except Exception as e:  # one trial's failure never stops the study
            state, line = TrialState.FAIL, f"{prefix}trial {trial.number} FAILED: {type(e).__name__}: {e}"
        taken = state is not None and bookkeeping.tell(study, trial, values, state)
    if taken:  # finished elsewhere between the last write and the tell
        state, line = None, f"{prefix}trial {trial.number} was finished {taken} while this worker ran it; going on"
    if line:
        log(store.redact(line))
    if trial.user_attrs.get(schema.ATTR_BASELINE) == "full_ft":  # the CE reference may be settled now
        backfill(ctx, study, log)
    return state


def work(ctx, study: optuna.Study, worker: int = 0, log=print) -> dict:
    """Run trials until the study has n_trials finished ones (shared by all workers), the timeout, or too many
    failures in a row. Returns counts for this worker."""
    cfg, target, t0 = ctx.cfg, ctx.cfg.study.n_trials, time.perf_counter()
    done = {"complete": 0, "pruned": 0, "failed": 0, "stopped": "target"}
    fails_in_row = 0
    prefix = f"[w{worker}] " if cfg.study.workers > 1 else ""
    progress = Progress(study, target, cfg.train.epochs, prefix, sys.stdout.isatty() and cfg.study.workers == 1, log,
                        threads=torch.get_num_threads())  # the budget the caller applied (harness.launch)
    on_complete = save_if_best(ctx, study)
    while True:
        if cfg.study.timeout and time.perf_counter() - t0 > cfg.study.timeout:
            log(f"{prefix}timeout of {cfg.study.timeout:.0f} s reached; not starting more trials")
            done["stopped"] = "timeout"
            break
        if fails_in_row >= max(3, target):
            log(f"{prefix}{fails_in_row} trials failed in a row; stopping (see the fail reasons above)")
            done["stopped"] = "failures"
            break
        with bookkeeping.host_lock(cfg.study.name):
            bookkeeping.recover_dead(study, ctx.client)
            bookkeeping.fail_stale(study, ctx.client)  # other machines' dead workers, by heartbeat silence
            # one read of the storage for the loop and the progress line (two more queries a trial otherwise, ~20
            # ms on sqlite at load 6 here, inside the trial's training time)
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in bookkeeping.FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if finished >= target:
                break
            # others finishing the last trials: wait in case one fails
            trial = None if finished + running >= target else bookkeeping.ask(study, worker)
        if trial is None:
            time.sleep(1.0)
            continue
        done_values = [t.values[0] for t in trials if t.state == TrialState.COMPLETE and t.values]
        progress.primed, progress.finished = trial.number, finished
        progress.best = max(done_values) if done_values else None
        state = run_trial(ctx, study, trial, progress, on_complete, prefix, log)
        if state is not None:
            done[{TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}[state]] += 1
            fails_in_row = fails_in_row + 1 if state == TrialState.FAIL else 0
    return done


# ------------------------------------------------------------------------------------------------ selection

def searched(study: optuna.Study) -> tuple[dict, dict, dict]:
    """The completed trials with a run as harness.selection reads them: ({number: search-time value (the first
    objective)}, {number: baseline family}, {number: run id})."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and schema.ATTR_RUN_ID in t.user_attrs]
    return ({t.number: t.values[0] for t in done}, {t.number: t.user_attrs.get(schema.ATTR_BASELINE, "") for t in done},
            {t.number: t.user_attrs[schema.ATTR_RUN_ID] for t in done})


def objective_metric(cfg) -> str:
    """The MLflow metric that holds a run's search-time value (a multi-objective study: its first, val_acc_final)."""
    return schema.OBJECTIVE_METRICS.get(cfg.study.objective, schema.VAL_ACC_FINAL)


def fresh_values(ctx) -> dict[int, list[float]]:
    """{trial number: validation values of its fresh seeds}, from the parent's replicate runs in MLflow, as the report
    reads them (harness.selection.fresh_values)."""
    key = objective_metric(ctx.cfg)
    runs = ctx.client.search_runs([ctx.exp_id], f"tags.`{schema.TAG_PARENT_RUN}` = '{ctx.parent_id}' and "
                                                f"tags.`{schema.TAG_ROLE}` = '{schema.ROLE_REPLICATE}'", max_results=10000)
    return selection.fresh_values([{"of": int(r.data.tags[schema.TAG_REPLICATE_OF]), "seed": int(r.data.tags[schema.TAG_SEED]),
                                    "status": r.info.status, "value": r.data.metrics.get(key),
                                    "start": r.info.start_time, "run_id": r.info.run_id} for r in runs])


def selected(ctx, study: optuna.Study) -> int | None:
    """The selected trial (harness.selection.select): the finalist with the best mean validation over its seeds."""
    search, families, _ = searched(study)
    return selection.select(search, families, ctx.cfg.study.finalists, fresh_values(ctx))


def tag_best(ctx, study: optuna.Study) -> None:
    """The parent's best-trial tags: the selected trial (harness.selection), read from the storage and the replicate
    runs, so every process and the report name the same one whatever finished first. Its weights are on its run
    (save_if_best keeps every finalist's); the champion registers them."""
    number = selected(ctx, study)
    if number is not None:
        _, _, run_ids = searched(study)
        tracking.set_tags(ctx.client, ctx.parent_id, {schema.TAG_BEST_TRIAL: number,
                                                      schema.TAG_BEST_RUN_ID: run_ids[number],
                                                      schema.TAG_FINALISTS: ctx.cfg.study.finalists})


def sources(study: optuna.Study, k: int) -> list:
    """The trials seed replicates re-run: the finalists (harness.selection.finalists: the top k by validation and each
    baseline family's best) and, with search.surgical_sweep, the best lr of each choice's sweep (the reproduction of
    Lee et al. compares groups over seeds), in that order."""
    search, families, _ = searched(study)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    out = selection.finalists(search, families, k)
    groups = {}
    for n in selection.ranked({n: [v] for n, v in search.items()}):
        t = by_number[n]
        if t.user_attrs.get(schema.ATTR_SURGICAL_SWEEP):
            # one per choice and BatchNorm mode (issue 23: the best (lr, epoch) of each, on validation)
            groups.setdefault((t.params.get("tune_set", t.params.get("tune_group")), t.params.get("bn")), n)
    out += [n for n in groups.values() if n not in out]
    return [by_number[n] for n in out]


def replicate_units(ctx, study: optuna.Study) -> list[units.Unit]:
    """The seed replicates as units: study.replicates - 1 more training seeds (study seed + 1, + 2, ...) of every
    source trial; the trial itself is the study seed's replicate."""
    seeds = [ctx.cfg.study.seed + i for i in range(1, ctx.cfg.study.replicates)]
    return [units.Unit("replicate", f"replicate:{t.number}:{seed}",
                       {"number": t.number, "params": dict(t.params),
                        "baseline": t.user_attrs.get(schema.ATTR_BASELINE, ""), "seed": seed})
            for t in sources(study, ctx.cfg.study.finalists) for seed in seeds]


def run_replicate(ctx, study: optuna.Study, log=print):
    """The runner of a replicate unit: one child run (harness.trial.replicate) with the CE reference as it stands."""
    def run(unit: units.Unit, on_run) -> None:
        p = unit.payload
        log(f"replicate: trial {p['number']} ({p['baseline'] or 'searched'}) with seed {p['seed']}")
        ref = corruption_error.ce_reference(study.get_trials(deepcopy=False))
        trialmod.replicate(ctx, p, p["seed"], ref, on_run=on_run)

    return run


# ------------------------------------------------------------------------------------------ the baselines' grids

def baseline_rows(study: optuna.Study) -> list[dict]:
    """The study's baseline trials as harness.baseline_grid reads them (a WAITING trial's lr: its enqueued params)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        family = t.user_attrs.get(schema.ATTR_BASELINE)
        if family:
            lr = t.params.get("lr", t.system_attrs.get(schema.ATTR_FIXED_PARAMS, {}).get("lr"))
            out.append({"number": t.number, "family": family, "lr": lr, "state": t.state.name.lower(),
                        "value": t.values[0] if t.state == TrialState.COMPLETE and t.values else None,
                        "extension": t.user_attrs.get(schema.ATTR_BASELINE_EXTENSION, "")})
    return out


def run_extension(ctx, study: optuna.Study, worker: int, log=print):
    """The runner of an extend unit: the point beyond its family's edge as a baseline trial of the study, enqueued
    (skipped when it exists: a retry) and run here. Only extension trials wait now (extend_grid starts when none
    waits), so the trial this process pops is one of them, whichever unit enqueued it: each unit runs one."""
    def run(unit: units.Unit, on_run) -> None:
        p = unit.payload
        bookkeeping.recover_dead(study, ctx.client)  # a dead runner's trial: failed and enqueued again
        study.enqueue_trial(p["params"], user_attrs={schema.ATTR_BASELINE: p["family"],
                                                     schema.ATTR_BASELINE_EXTENSION: p["edge"]}, skip_if_exists=True)
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return  # its trial ran already
        trial = bookkeeping.ask(study, worker)
        log(f"baseline grid: {p['family']} at lr {p['lr']:.3g}, beyond the {p['edge']} edge of its grid "
            f"(trial {trial.number})")
        run_trial(ctx, study, trial, None, save_if_best(ctx, study), log=log)

    return run


def extend_grid(ctx, study: optuna.Study, runners: dict, log=print, worker: int = 0) -> dict:
    """Round after round, the next point beyond the edge of every baseline family whose best lr is on one
    (harness.baseline_grid), as units run exactly once across processes, until no family has a point to add; then
    the grids' record on the parent (baseline_grid.json). Nothing while a trial other than an extension waits (a
    sweep cut short by study.n_trials: its grid is not finished); an extension waiting or running (another process
    runs it) is drained first, and the edges are read again after it. runners: every kind's (a process still
    draining this round may pop the next phase's units). Returns this process's unit counts."""
    done = {"complete": 0, "failed": 0}
    companion = units.companion(study)
    while not any(not t.user_attrs.get(schema.ATTR_BASELINE_EXTENSION)
                  for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))):
        # read in this order: the planned keys, then whether any unit is in flight, then the trials. A unit ends
        # after its trial, so with none in flight the trials read next are final, and a plan made meanwhile by
        # another process has keys this process did not see and plans (and drains) again
        have = set(units.keys(companion))
        c = units.counts(companion)
        todo = [units.Unit("extend", f"extend:{e['family']}:{e['lr']:.6g}", e)
                for e in baseline_grid.extensions(ctx.cfg, baseline_rows(study), ctx.n_groups)]
        todo = [u for u in todo if u.key not in have]  # planned before and failed: not again (no endless rounds)
        name = "extend-" + store.cache_key(sorted(u.key for u in todo))[:16] if todo else None
        if name:
            units.plan(study, name, todo)
        elif not c["waiting"] and not c["running"]:
            break
        got = units.drain(study, ctx.client, runners, worker, log, until_planned=name)
        done = {k: done[k] + got[k] for k in done}
    status = baseline_grid.status(ctx.cfg, baseline_rows(study))
    tracking.log_json(ctx.client, ctx.parent_id, {"mode": ctx.cfg.search.extend_baseline_grid,
                                                  "limit": ctx.cfg.search.baseline_extensions, "families": status},
                      schema.BASELINE_GRID_ARTIFACT)
    return done


def post_search(ctx, study: optuna.Study, log=print, worker: int = 0) -> dict:
    """After the search, in any number of processes at once (launchers and workers, on any machines): extend the
    baselines' grids at their edges (extend_grid), then plan the seed replicates of the sources once (a claim named
    by their keys: a study extended later plans its new ones) and run units until none waits or runs. Each unit runs
    exactly once (harness.units); a dead worker's unit runs again once; a failed one is a line and a FAIL with its
    reason, never a failed study. Returns this process's counts."""
    from harness import budgets  # here: budgets imports this module

    # every kind: a process that drains pops whatever unit waits (another process's label budgets included)
    runners = {"extend": run_extension(ctx, study, worker, log), "replicate": run_replicate(ctx, study, log),
               budgets.KIND: budgets.runner(ctx, study, log)}
    done = extend_grid(ctx, study, runners, log, worker)
    if ctx.cfg.study.replicates < 2:
        return done
    todo = replicate_units(ctx, study)
    name = "replicates-" + store.cache_key(sorted(u.key for u in todo))[:16]
    units.plan(study, name, todo)  # None: another live process is planning it; drain waits for it to finish
    got = units.drain(study, ctx.client, runners, worker, log, until_planned=name)
    # no unit runs now: a replicate run still RUNNING was left by a process that died before its unit said which
    for r in tracking.replicate_runs(ctx.client, ctx.exp_id, ctx.parent_id):
        if r["status"] == "RUNNING":
            tracking.end_run(ctx.client, r["run_id"], "FAILED",
                             {schema.TAG_FAIL_REASON: "the process died before the replicate finished"})
    seeds = sorted({u.payload["seed"] for u in todo})
    tracking.set_tags(ctx.client, ctx.parent_id, {schema.TAG_REPLICATES: ",".join(map(str, seeds))})
    return {k: done[k] + got[k] for k in done}

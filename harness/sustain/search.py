"""Optuna search over update policies: the space, the objective (accuracy against update cost), the trial loop."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from harness import bookkeeping, config, sampling, schema
from harness.sustain import policies, replay, streams


def space(s: config.Stream) -> dict:
    """search_space.json: every policy's searched setting (from the registry), the update recipe, the objective."""
    out = {"policy": s.search_policies}
    for p in policies.POLICIES.values():
        if p.searched is not None:
            low, high = getattr(s, p.searched.bounds)
            log = p.searched.scale == "log"
            out[p.searched.param] = {"low": low, "high": high, "log": True} if log else [low, high]
    return {**out, "lr": {"low": s.search_lr[0], "high": s.search_lr[1], "log": True},
            "freeze_layers": s.search_freeze_layers, "epochs": s.epochs, "replay": s.replay,
            "objective": s.objective, "cost": s.cost,
            "update_rate": "update_examples / (periods x labelled x (1 + replay) x epochs)",
            "objective_definition": "penalized: mean stream_acc_mean - cost x update rate; multi: (mean "
                                    "stream_acc_mean, update rate)"}


def suggest(trial: optuna.Trial, s: config.Stream) -> dict:
    """The conditional policy space of [stream] search_*: the policy, then its own setting (k only for every, a
    threshold only for its trigger), then the update recipe, which a policy that never updates does not sample."""
    policy = trial.suggest_categorical("policy", s.search_policies)
    if not policies.POLICIES[policy].updates:
        return policies.policy_spec(s, policy)
    changes = policies.sample(trial, s, policy)
    changes["lr"] = trial.suggest_float("lr", *s.search_lr, log=True)
    changes["freeze_layers"] = trial.suggest_int("freeze_layers", *s.search_freeze_layers)
    return policies.policy_spec(s, policy, **changes)


def update_rate(s: config.Stream, update_examples: float) -> float:
    """Update cost as a share of the work of updating at every period: update_examples (images x epochs trained, so
    more epochs and more replay cost more) over T x labelled x (1 + replay) x epochs. Updating every period costs
    just under 1 (the first periods have fewer batches to replay), never 0. freeze_layers does not lower it: a
    frozen group still runs forward, and its saved backward pass shows only in update_seconds (wall clock, which
    depends on the machine and would make the search irreproducible)."""
    return update_examples / (s.periods * s.labelled * (1 + s.replay) * s.epochs)


def objective_values(s: config.Stream, rows: list[dict]) -> tuple[float, ...]:
    """Mean over seeds: penalized = mean stream acc - cost * update rate; multi = (mean acc, update rate)."""
    acc = sum(r[schema.STREAM_ACC_MEAN] for r in rows) / len(rows)
    rate = update_rate(s, sum(r[schema.UPDATE_EXAMPLES] for r in rows) / len(rows))
    return (acc - s.cost * rate,) if s.objective == "penalized" else (acc, rate)


def _open(run: replay.SustainRun) -> optuna.Study:
    """The sustain study's Optuna study, its trials left RUNNING by a killed earlier run failed (one process: at
    start nothing can be running; their MLflow runs were ended by the orphan sweep), 'never' enqueued first."""
    cfg, s = run.ctx.cfg, run.ctx.cfg.stream
    directions = ["maximize"] if s.objective == "penalized" else ["maximize", "minimize"]
    opt_study = optuna.create_study(storage=run.ctx.storage, study_name=cfg.study.name,
                                    sampler=sampling.sampler(cfg), directions=directions, load_if_exists=True)
    stale = bookkeeping.fail_running(opt_study, "the sustain process died before the trial finished")
    if stale:
        run.log(f"resume: {stale} Optuna trial(s) left RUNNING by a killed run failed")
    if not {t.state for t in opt_study.trials} & {TrialState.COMPLETE, TrialState.WAITING} \
            and "never" in s.search_policies:
        opt_study.enqueue_trial({"policy": "never"})  # the reference every policy is measured against
    return opt_study


def run_search(run: replay.SustainRun) -> dict:
    """Optuna trials until study.n_trials have completed (at most that many attempts this run, and study.timeout).
    A trial whose replay raises fails (reason in its fail_reason system attr and on the child run) and the search
    goes on. Trials replay on the search seeds (streams.search_seeds); the best trial(s) are then replayed on the
    reported seeds (streams.seeds_of), tagged harness.search_trial. Returns results (label -> rows of this run's
    completed trials and of the selected policies on the reported seeds), failed (trial numbers) and complete (how
    many trials of the study completed)."""
    cfg, log = run.ctx.cfg, run.log
    opt_study = _open(run)
    results, failed, t0 = {}, [], time.perf_counter()
    done = sum(t.state == TrialState.COMPLETE for t in opt_study.trials)
    for _ in range(max(0, cfg.study.n_trials - done)):
        if cfg.study.timeout and time.perf_counter() - t0 > cfg.study.timeout:
            log(f"timeout of {cfg.study.timeout:.0f} s reached; not starting more trials")
            break
        trial = opt_study.ask()
        spec = suggest(trial, cfg.stream)
        try:
            # selection on the search seeds' streams; the selected policy is reported on the others (below)
            rows = [replay.run_policy(run, spec, seed, trial.number) for seed in streams.search_seeds(cfg)]
        except Exception as err:  # a diverging or broken policy fails its trial, not the search
            bookkeeping.fail(opt_study, trial, f"{type(err).__name__}: {err}")
            failed.append(trial.number)
            log(f"trial {trial.number} FAILED: {type(err).__name__}: {err}")
            continue
        results.setdefault(f"trial-{trial.number:04d}-{policies.label(spec)}", rows)
        for k in (schema.STREAM_ACC_MEAN, schema.N_UPDATES, schema.UPDATE_SECONDS, schema.UPDATE_EXAMPLES):
            trial.set_user_attr(k, sum(r[k] for r in rows) / len(rows))
        trial.set_user_attr(schema.ATTR_RUN_IDS, [r["run_id"] for r in rows])
        trial.set_user_attr(schema.ATTR_SPEC, spec)
        values = objective_values(cfg.stream, rows)
        opt_study.tell(trial, values[0] if len(values) == 1 else list(values))
    complete = [t for t in opt_study.trials if t.state == TrialState.COMPLETE]
    if complete:
        log("\nbest trial(s): " + "; ".join(f"#{t.number} {t.params} -> {[round(v, 4) for v in t.values]}"
                                             for t in opt_study.best_trials))
        for t in opt_study.best_trials:  # the selected policies, replayed on the reported seeds' streams
            spec = t.user_attrs.get(schema.ATTR_SPEC)
            if not spec:
                continue
            try:
                for variant in [schema.STREAM_DRIFT] + ([schema.STREAM_CONTROL] if cfg.stream.control else []):
                    rows = [replay.run_policy(run, spec, seed, -1, {schema.TAG_SEARCH_TRIAL: str(t.number)}, variant)
                            for seed in streams.seeds_of(cfg)]
                    key = f"selected-trial-{t.number:04d}-{policies.label(spec)}"
                    results[key if variant == schema.STREAM_DRIFT else f"{key}/{variant}"] = rows
            except Exception as err:
                failed.append(t.number)
                log(f"selected trial {t.number} FAILED on the reported seeds: {type(err).__name__}: {err}")
    if failed:
        log(f"{len(failed)} trial(s) failed this run: {', '.join(map(str, failed))} (reasons above and on their "
            f"MLflow runs)")
    return {"results": results, "failed": failed, "complete": len(complete)}

"""The benchmark's whole-study measurements (harness.bench runs them): (c) trials per minute of the default study with
and without pruning and the prefix cache, (g)'s bound on what any prefix cache could give that study, (h) --workers 1
and 2 and a study next to a competing CPU-bound process, and the trials' logged times."""

from __future__ import annotations

import contextlib
import io
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import config, schema, store

# (h)'s ratios are judged only on studies whose trials span MIN_STUDY_SECONDS: a worker's start (imports, context
# from the caches: 5-20 s here) and its 1 s poll while the last trials finish are fixed costs, which decide the
# ratio of --quick's 5 s studies (their --workers 2 ran at 0.28x of --workers 1, load 6-8)
MIN_STUDY_SECONDS = 60.0


def study_runs(overrides: list[str], n_trials: int, workdir: Path, device: str) -> dict:
    """The default study run three times in this process (_study, in `workdir`): pruner none, median, then median
    without the prefix cache (train.cache_mb = 0: (g), back to back with the median run). Trials per minute count
    finished trials over the span from the first trial's start to the last one's end."""
    import optuna

    out, epochs = {}, config.load(None, overrides).train.epochs
    for key, pruner, cache in (("none", "none", ""), ("median", "median", ""), ("median-nocache", "median", "0")):
        name = f"bench-{key}"
        # trials per minute: the seed replicates, the baselines' grid extension and the weight-space ensembles after
        # the search are no part of the n trials timed, so none here
        argv = ["--study-name", name, "--n-trials", str(n_trials), "--no-report", "--device", device,
                "--set", f'study.pruner="{pruner}"', "--set", "study.replicates=1",
                "--set", 'search.extend_baseline_grid="off"',
                "--set", "study.keep_weights=0", "--set", "study.wise_ft=false"] + \
            [a for o in overrides for a in ("--set", o)]
        argv += ["--set", f"train.cache_mb={cache}"] if cache else []
        buf = io.StringIO()
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            rc = _study(argv)
        wall = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"study {name} exited {rc}:\n{buf.getvalue()[-3000:]}")
        trials = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}").trials
        done = [t for t in trials if t.state.is_finished() and t.datetime_complete]
        span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
        out[key] = {"argv": argv, "wall": wall, "span": span, "finished": len(done),
                       "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in done),
                       "per_minute": 60 * len(done) / span, "load": (load0, os.getloadavg()[0]),
                       "seconds": [(t.datetime_complete - t.datetime_start).total_seconds() for t in done],
                       "frozen": [_frozen_share(t, epochs) for t in done]}
    return out


def _study(argv: list[str]) -> int:
    """A study run in this process as `python -m harness.study ARGV` runs it (the same flags, checks and launch; no
    console summary): its exit code. Bad input and runtime errors raise."""
    import argparse

    from harness import flags, launch

    ap = argparse.ArgumentParser()
    flags.add_common_args(ap)
    cfg = flags.load_config(ap.parse_args(argv))
    return launch.run(cfg, launch.preflight(cfg)).code


def cache_bound(off: dict) -> dict:
    """(g)'s Amdahl bound from a no-cache study (study_runs' entry): the prefix cache can remove at most each trial's
    frozen share of its seconds (_frozen_share), the rest stays whatever it does; the study cannot get faster than
    its total trial seconds over what stays."""
    total = sum(off["seconds"])
    stays = total - sum(sec * share for sec, share in zip(off["seconds"], off["frozen"]))
    return {"bound": total / stays if stays else math.inf, "unfrozen_trials": off["frozen"].count(0.0),
            "trials": len(off["frozen"]), "frozen_share": 1 - stays / total}


def _frozen_share(t, epochs: int) -> float:
    """At most which share of a finished trial's seconds the prefix cache could remove: all of them for a trial
    frozen to its end (the linear probe, unfreeze_epoch past the epochs it ran, surgical and gradual trials: the
    cache serves their evaluation too); for a prefix trial that unfroze at epoch e of its n epochs run, e / n (its
    frozen epochs are its cheapest: no backward through the prefix; nothing after them can be served); none for a
    trial that freezes nothing (full FT, LP-FT, TPE's freeze_layers = 0)."""
    p = t.params
    if t.user_attrs.get(schema.ATTR_BASELINE) == "linear_probe" or p.get("strategy", "prefix") != "prefix":
        return 1.0
    if p.get("freeze_layers", 0) == 0:
        return 0.0
    ran = len(t.intermediate_values) or epochs
    e = p.get("unfreeze_epoch", epochs)
    return 1.0 if e >= ran else e / ran


def _span_per_minute(storage: str, name: str) -> tuple[int, float]:
    """(finished trials, trials per minute over the span from the first trial's start to the last one's end)."""
    import optuna

    done = [t for t in optuna.load_study(study_name=name, storage=storage).trials
            if t.state.is_finished() and t.datetime_complete]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return len(done), 60 * len(done) / span


WORKERS_RUNS = (("workers1", 1, False), ("workers2", 2, False), ("rival", 1, True))
# --quick: no plain --workers 1 study. Its only use is as the denominator of (h)'s two ratios, which --quick's
# studies (seconds of trials) can never support (MIN_STUDY_SECONDS); --workers 2 and the study next to a CPU-bound
# process still run, each through its own code path.
QUICK_WORKERS_RUNS = WORKERS_RUNS[1:]


def workers_trust(w: dict) -> str | None:
    """Why (h)'s ratios cannot be trusted, or None when they can: no plain --workers 1 study (--quick), or one whose
    trials span under MIN_STUDY_SECONDS."""
    if "workers1" not in w:
        return (f"--quick runs no plain --workers 1 study: its studies span seconds, where worker start-up and "
                f"polling decide the ratios (they need {MIN_STUDY_SECONDS:.0f} s); run the full benchmark")
    span = 60 * w["workers1"]["finished"] / w["workers1"]["per_minute"]
    return (f"the --workers 1 study's trials span {span:.0f} s, under {MIN_STUDY_SECONDS:.0f} s: worker start-up "
            f"and polling decide the ratios at this scale; run the full benchmark" if span < MIN_STUDY_SECONDS
            else None)


def workers_runs(overrides: list[str], n_trials: int, workdir: Path, device: str, runs=WORKERS_RUNS) -> dict:
    """The default study (no pruning) as `python -m harness.study` processes on 2 cores (the first two this process
    may use): --workers 1, --workers 2 (each with its thread budget, harness.cores.thread_budget), and --workers 1
    next to one competing CPU-bound process (a Python busy loop on the same 2 cores, started before the study and
    stopped after it); `runs` picks which (QUICK_WORKERS_RUNS: no plain --workers 1). Each in a fresh study on the
    caches (c) built; trials per minute as in (c)."""
    two = set(sorted(os.sched_getaffinity(0))[:2])
    pin = lambda: os.sched_setaffinity(0, two)  # noqa: E731 - in the child, before it execs
    storage = f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}"
    out = {"cores": sorted(two)}
    for key, workers, rival in runs:
        name = f"bench-{key}"
        argv = ["--study-name", name, "--n-trials", str(n_trials), "--no-report", "--device", device,
                "--workers", str(workers), "--set", 'study.pruner="none"', "--set", "study.replicates=1",
                "--set", 'search.extend_baseline_grid="off"',
                "--set", "study.keep_weights=0", "--set", "study.wise_ft=false"] + \
            [a for o in overrides for a in ("--set", o)]  # replicates are no trials: none here, as in (c)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pin) if rival else None
        try:
            load0, t0 = os.getloadavg()[0], time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "harness.study", *argv], preexec_fn=pin, cwd=workdir,
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        if done.returncode != 0:
            raise RuntimeError(f"study {name} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
        finished, per_minute = _span_per_minute(storage, name)
        budget = next((line for line in done.stdout.splitlines() if line.startswith("cores: ")), "cores: ?")[7:]
        out[key] = {"argv": argv, "wall": wall, "finished": finished, "per_minute": per_minute, "budget": budget,
                    "load": (load0, os.getloadavg()[0])}
    if "workers1" in out:
        out["gain"] = out["workers2"]["per_minute"] / out["workers1"]["per_minute"]
        out["slowdown"] = out["workers1"]["per_minute"] / out["rival"]["per_minute"]
    out["untrusted"] = workers_trust(out)
    return out


def trial_times(uri: str, study_name: str) -> dict:
    """Median train_seconds and eval_seconds that the completed trials of a study logged, and the RSS each trial
    logged at its end, in trial order (memory must not grow across trials)."""
    from harness import results

    client = store.connect(uri, existing=True)
    exp, parent = results.find_parent(client, study_name)
    runs = client.search_runs([exp.experiment_id], f"tags.`{schema.TAG_PARENT_RUN}` = '{parent.info.run_id}'")
    done = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get(schema.TAG_ROLE) != schema.ROLE_SOUP]
    tr = [r.data.metrics[schema.TRAIN_SECONDS] for r in done if schema.TRAIN_SECONDS in r.data.metrics]
    ev = [r.data.metrics[schema.EVAL_SECONDS] for r in done if schema.EVAL_SECONDS in r.data.metrics]
    # rss_mb is logged every epoch (the latest value: the trial's last epoch), pruned trials included
    rss = sorted((int(r.data.tags[schema.TAG_TRIAL_NUMBER]), r.data.metrics[schema.RSS_MB]) for r in runs
                 if schema.RSS_MB in r.data.metrics)
    return {"n": len(tr), "train": statistics.median(tr), "eval": statistics.median(ev), "rss": [v for _, v in rss]}

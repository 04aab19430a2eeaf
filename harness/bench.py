"""`python -m harness.bench [--quick]`: the performance figures of DESIGN §10, measured in one run, written to
reports/bench.md and printed, each against its target (ok / MISSED):

(a) a real trial's training part (harness.trial.objective: model build, training, per-epoch validation, MLflow
    logging and pruning checks; its train_seconds) against a bare PyTorch loop doing identical work (>= 0.97x; a
    median of 7 interleaved pairs with its range, printed only where it can be trusted: ratio_trust),
(b) every MLflow call of a trial as a share of the trial's wall time (< 2%),
(c) trials per minute of the default study with and without pruning,
(d) shift-suite build, the config's shifts and every registered one (< 30 s), and shift evaluation per trial,
    eval_seconds / train_seconds (<= 25%), (e) peak memory, (f) MLflow-native records: dataset inputs per trial,
    system metrics as a share of a trial (< 1%), the selected model's logging and registration per study,
(g) the frozen-prefix cache (harness.prefix): trials per minute of the default study with and without it (>= 1.5x),
    and the speed-up of a linear-probe trial (>= 5x) and of a freeze_layers = 2 trial; with device, versions,
    command line.
(h) packed trials on 2 CPU cores: trials per minute of --workers 2 against --workers 1 (>= 1x, goal 1.3x), and the
    slow-down of a study next to one competing CPU-bound process (<= 2x); with device, versions, command line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import psutil
import torch

from harness import bench_report, bench_studies, bench_trials, config, data as datamod, schema, store
from harness import suite as suitemod, tracking

# --quick shrinks every workload (seconds, for the test suite); the figures worth quoting come from the full run.
QUICK = ["data.labels_per_class=12", "data.image_size=16", "pretrain.epochs=1", "train.epochs=2",
         "search.unfreeze_epoch=[1, 2]", 'shifts.selection=["gaussian_blur"]', 'shifts.test=["gaussian_noise"]',
         "shifts.severities=[1, 3]"]
# DESIGN §10 and the targets
TARGETS = {"ratio": 0.97, "mlflow_share": 0.02, "suite_seconds": 30.0, "eval_share": 0.25, "system_share": 0.01,
           "workers_gain": 1.0, "rival_slowdown": 2.0,
           "cache_study": 1.5, "cache_probe": 5.0}


def suite_builds(cfg, data) -> dict:
    """harness.suite.build with no cache: the config's shift lists, and every shift in harness.shifts.SHIFTS (the
    config's selection shifts on val, all the others held out on test) at the config's severities and eval_images."""
    from harness import shifts

    out = {}
    every = replace(cfg.shifts, test=[n for n in shifts.SHIFTS if n not in cfg.shifts.selection])
    for name, sh in (("config", cfg.shifts), ("all", every)):
        t0 = time.perf_counter()
        _, info = suitemod.build(sh, data, None)
        out[name] = {"seconds": time.perf_counter() - t0, "n_sets": info["n_sets"],
                     "n_shifts": len(sh.selection) + len(sh.test)}
    return out


def run(quick: bool, device_name: str, out: Path, argv: list[str], log=print) -> dict:
    t_start, load_start = time.perf_counter(), os.getloadavg()
    overrides = QUICK if quick else []
    cfg = config.load(None, overrides, **{"study.name": "bench-trial", "study.device": device_name})
    n_trials = 2 if quick else cfg.study.n_trials  # (c): the default study's 16 trials
    cache_repeats = 1 if quick else 5
    pairs = bench_trials.QUICK_PAIRS if quick else bench_trials.PAIRS
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        tmp = Path(tmp)
        os.chdir(tmp)
        try:
            log("setup: data, pretrained weights, shift suite, MLflow store (harness.context.open_context) ...")
            ctx = bench_trials.trial_context(cfg)
            log(f"(a, b) throughput: {pairs} pairs of a real trial and a bare loop, interleaved, "
                f"{cfg.train.epochs} epochs each ...")
            # no prefix cache: the bare loop recomputes too
            a = bench_trials.throughput(replace(ctx, prefix=None), pairs)
            log(f"(g) prefix cache: linear-probe, frozen-body and freeze_layers = 2 trials, no / cold / warm cache, "
                f"{cache_repeats} times ...")
            g = bench_trials.cache_trials(ctx, cache_repeats)
            log("(d) shift suite builds (no cache) ...")
            suite = suite_builds(cfg, datamod.load(cfg.data, cfg.study.seed, store.cache_dir(tmp)))
            log(f"(c, g) three studies of {n_trials} trials (pruner none, median, median without the prefix cache) ...")
            st = bench_studies.study_runs(overrides, n_trials, tmp, device_name)
            tt = bench_studies.trial_times(store.default_tracking_uri(tmp), "bench-none")
            # full: twice the default study's 12 trials, ~100 s of trials idle at (c)'s 14.5 trials/min, so a worker's
            # start-up (~2 s idle) and last poll (1 s) weigh a few percent
            # --quick: 2 trials a study, one for each worker of --workers 2 (its ratios are never printed at this
            # scale, see bench_studies.MIN_STUDY_SECONDS), and no plain --workers 1 study (QUICK_WORKERS_RUNS)
            n_w = 2 if quick else 2 * n_trials
            log(f"(h) cores: studies of {n_w} trials with " + ("" if quick else "--workers 1, ") + "--workers 2, and "
                "--workers 1 next to a CPU-bound process, on 2 cores ...")
            w = bench_studies.workers_runs(overrides, n_w, tmp, device_name, bench_studies.QUICK_WORKERS_RUNS if quick
                                           else bench_studies.WORKERS_RUNS)
            log("(f) MLflow-native records: dataset inputs, system metrics, model logging and registration ...")
            f = bench_trials.native_costs(ctx, a["trials"], st["none"]["wall"])
        finally:
            os.chdir(cwd)
    device = ctx.device
    r = {"command": " ".join(["python -m harness.bench"] + argv), "quick": quick, "overrides": QUICK,
         "params": bench_trials.PARAMS, "targets": TARGETS,
         "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": bench_report.device_line(device), "versions": tracking.versions(),
         "model": cfg.model.name, "n_train": len(ctx.data["train"][0]), "image_size": cfg.data.image_size,
         "batch_size": cfg.train.batch_size, "throughput": a, "mlflow": bench_trials.mlflow_share(a["trials"]),
         "study": st, "suite": suite, "trial_times": tt, "workers": w, "native": f, "cache": g,
         "cache_bound": bench_studies.cache_bound(st["median-nocache"]),
         schema.PEAK_RSS_MB: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
         schema.RSS_MB: psutil.Process().memory_info().rss / 2**20,
         "shift_lists": {"config": cfg.shifts.selection + cfg.shifts.test, "selection": cfg.shifts.selection,
                         "severities": cfg.shifts.severities, "eval_images": cfg.shifts.eval_images}}
    if device.type == "cuda":
        r[schema.GPU_PEAK_MB] = torch.cuda.max_memory_allocated() / 2**20
    r["wall"] = time.perf_counter() - t_start
    r["provenance"] = {"git_sha": tracking.git_sha(), "cpu_count": os.cpu_count(), "load_start": list(load_start),
                       "load_end": list(os.getloadavg())}
    text = bench_report.render(r)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    # the stored figures: `--readme` writes the README's table from them, so it is generated, never typed
    out.with_suffix(".json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    log(text)
    log(f"written: {out}")
    return r


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(prog="python -m harness.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny workloads (seconds): checks the benchmark runs")
    ap.add_argument("--device", choices=config.DEVICES, default="auto")
    ap.add_argument("--out", default="reports/bench.md", help="where to write the markdown report (its figures also "
                    "go to the .json beside it)")
    ap.add_argument("--readme", metavar="FILE_MD", help="run nothing: write the table of targets from --json into the "
                    "benchmark's generated block of FILE_MD (the README's), with commit, date, machine and load")
    ap.add_argument("--json", default="reports/bench.json", help="with --readme: the figures of an earlier run")
    args = ap.parse_args(argv)
    if args.readme:
        return bench_report.write_readme(Path(args.json), Path(args.readme))
    try:
        run(args.quick, args.device, Path(args.out).resolve(), argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m harness.bench [--quick]`: the performance figures of DESIGN §10, measured in one run, written to
reports/bench.md and printed.

(a) harness trial training throughput / a bare PyTorch loop doing identical work (target >= 0.95),
(b) MLflow per-epoch logging as a share of epoch time (target < 2%),
(c) trials per minute of the default study with and without pruning,
(d) shift-suite build time and per-trial evaluation time, (e) peak memory; with device, versions, command line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F

from harness import config, data as datamod, models, suite as suitemod, tracking, train

# --quick shrinks every workload (seconds, for the test suite); the figures worth quoting come from the full run.
QUICK = ["data.labels_per_class=12", "data.image_size=16", "pretrain.epochs=1", "train.epochs=2",
         "search.unfreeze_epoch=[1, 2]", 'shifts.selection=["gaussian_blur"]', 'shifts.test=["gaussian_noise"]',
         "shifts.severities=[1, 3]"]
# The measured training schedule, as a trial with freeze_layers = 2, unfreeze_epoch = 1 runs it: the first epoch
# with stem and layer1 frozen (no grads, BN in eval mode), then everything trains.
FREEZE, UNFREEZE = 2, 1


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def harness_run(cfg, data, device, epochs) -> tuple[float, torch.nn.Module]:
    """(seconds, trained model) for `epochs` epochs through harness.train, freezing handled as harness.trial.objective does."""
    t = cfg.train
    model, groups = models.build(cfg.model.name, len(data["classes"]), seed=0)
    model = train.prepare(model, device, compile=t.compile)
    opt = train.make_optimizer(model, "sgd", 0.05, t.momentum, t.weight_decay)
    x, y = data["train"]
    gen = torch.Generator().manual_seed(0)
    total, step = epochs * -(-len(x) // t.batch_size), 0
    _sync(device)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        frozen = FREEZE if epoch < UNFREEZE else 0
        _, step = train.train_one_epoch(model, groups, frozen, opt, x, y, t.batch_size, gen, step, total, 0.05,
                                        "cosine", device)
    _sync(device)
    return time.perf_counter() - t0, model


def bare_run(cfg, data, device, epochs) -> tuple[float, torch.nn.Module]:
    """The same work as harness_run with no harness code in the loop: same model and init, data tensors, batch
    order, cosine lr per step, SGD settings, frozen modules; a plain PyTorch loop written out."""
    t = cfg.train
    model, groups = models.build(cfg.model.name, len(data["classes"]), seed=0)  # the model, not the loop
    frozen_modules = [groups[name] for name in list(groups)[:FREEZE]]
    frozen_params = [p for m in frozen_modules for p in m.parameters()]
    model = model.to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    if t.compile:
        model.compile()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=t.momentum, weight_decay=t.weight_decay,
                          nesterov=t.momentum > 0)
    x, y = data["train"]
    gen = torch.Generator().manual_seed(0)
    total, step, base_lr = epochs * -(-len(x) // t.batch_size), 0, 0.05
    _sync(device)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for p in frozen_params:
            p.requires_grad_(epoch >= UNFREEZE)
        if epoch < UNFREEZE:
            for m in frozen_modules:
                m.eval()
        perm = torch.randperm(len(x), generator=gen).to(x.device)
        running = torch.zeros((), device=device)
        for i in range(0, len(x), t.batch_size):
            idx = perm[i:i + t.batch_size]
            xb, yb = x[idx], y[idx]
            if cuda:
                xb = xb.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = 0.5 * base_lr * (1 + math.cos(math.pi * step / total))
            with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            running += loss.detach() * len(idx)
        running.item()
    _sync(device)
    return time.perf_counter() - t0, model


def throughput(cfg, data, device, repeats, epochs) -> dict:
    """Both loops alternated (which one goes first alternates too) after one warm-up each. On a shared machine the
    load changes from one minute to the next, so the headline ratio is the median over back-to-back pairs, each
    pair run under about the same load; ratios of the medians and of the bests are reported too."""
    harness_run(cfg, data, device, 1), bare_run(cfg, data, device, 1)
    times = {"harness": [], "bare": []}
    for r in range(repeats):
        order = ("harness", "bare") if r % 2 == 0 else ("bare", "harness")
        for name in order:
            times[name].append((harness_run if name == "harness" else bare_run)(cfg, data, device, epochs)[0])
    images = epochs * len(data["train"][0])
    out = {"images": images, "epochs": epochs, "repeats": repeats, "times": times}
    for name, ts in times.items():
        out[f"{name}_median"] = images / statistics.median(ts)
        out[f"{name}_best"] = images / min(ts)
    out["ratio_median"] = out["harness_median"] / out["bare_median"]
    out["ratio_best"] = out["harness_best"] / out["bare_best"]
    out["ratios"] = [b / h for h, b in zip(times["harness"], times["bare"])]
    out["ratio_paired"] = statistics.median(out["ratios"])
    out["epoch_seconds"] = statistics.median(times["harness"]) / epochs
    return out


def eval_seconds(cfg, data, device, repeats) -> float:
    """Median time of the per-epoch validation pass of a trial."""
    model, _ = models.build(cfg.model.name, len(data["classes"]), seed=0)
    model = train.prepare(model, device)
    ts = []
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        train.evaluate(model, *data["val"], cfg.train.eval_batch_size, device)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts[1:])


def logging_time(uri: str, n: int) -> list[float]:
    """Seconds of each per-epoch tracking.log_metrics call (the 5 metrics a trial logs) on a fresh child run."""
    client = tracking.connect(uri)
    exp = tracking.experiment(client, "bench-logging", None)
    parent, _ = tracking.parent_run(client, exp, "bench-logging")
    run = tracking.child_run(client, exp, parent, "bench-logging", 0, {"lr": 0.05, "freeze_layers": 2,
                                                                         "unfreeze_epoch": 1})
    ts = []
    for epoch in range(n):
        t0 = time.perf_counter()
        tracking.log_metrics(client, run, {"train_loss": 1.0 / (epoch + 1), "val_acc": 0.5, "val_loss": 0.7,
                                           "frozen_layers": 2, "lr": 0.01}, step=epoch)
        ts.append(time.perf_counter() - t0)
    tracking.end_run(client, run, "FINISHED")
    tracking.end_run(client, parent, "FINISHED")
    return ts


def study_runs(overrides: list[str], n_trials: int, workdir: Path, device: str) -> dict:
    """The default study run twice through harness.study.main in `workdir`: pruner none, then median.
    Trials per minute count finished trials over the span from the first trial's start to the last one's end."""
    import optuna

    from harness import study as studymod

    out = {}
    for pruner in ("none", "median"):
        name = f"bench-{pruner}"
        argv = ["--study-name", name, "--n-trials", str(n_trials), "--no-report", "--device", device,
                "--set", f'study.pruner="{pruner}"'] + [a for o in overrides for a in ("--set", o)]
        buf = io.StringIO()
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            rc = studymod.main(argv)
        wall = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"study {name} exited {rc}:\n{buf.getvalue()[-3000:]}")
        trials = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}").trials
        done = [t for t in trials if t.state.is_finished() and t.datetime_complete]
        span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
        out[pruner] = {"argv": argv, "wall": wall, "span": span, "finished": len(done),
                       "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in done),
                       "per_minute": 60 * len(done) / span, "load": (load0, os.getloadavg()[0])}
    return out


def trial_times(uri: str, study_name: str) -> dict:
    """Median train_seconds and eval_seconds that the completed trials of a study logged, and the RSS each trial
    logged at its end, in trial order (memory must not grow across trials)."""
    from harness import results

    client = results.connect(uri)
    exp, parent = results.find_parent(client, study_name)
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                              "and attributes.status = 'FINISHED'")
    tr = [r.data.metrics["train_seconds"] for r in runs if "train_seconds" in r.data.metrics]
    ev = [r.data.metrics["eval_seconds"] for r in runs if "eval_seconds" in r.data.metrics]
    rss = sorted((int(r.data.tags["optuna.trial_number"]), r.data.metrics["rss_mb"]) for r in runs
                 if "rss_mb" in r.data.metrics)
    return {"n": len(tr), "train": statistics.median(tr), "eval": statistics.median(ev), "rss": [v for _, v in rss]}


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    # OMP_WAIT_POLICY matters on a shared machine: with the default (spinning) policy, 2 OpenMP threads on 2 busy
    # cores ran resnet8 steps 10x slower than 1 thread here; PASSIVE (threads sleep at barriers) did not
    return (f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
            f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
            f"load average at the end {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


def render(r: dict) -> str:
    a, s, lg, st, tt = r["throughput"], r["suite"], r["logging"], r["study"], r["trial_times"]
    ok = lambda good: "ok" if good else "MISSED"
    lines = [
        "# harness benchmark", "",
        f"- command: `{r['command']}`",
        f"- date: {r['date']}; wall time of the benchmark: {r['wall']:.0f} s",
        f"- device: {r['device']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items() if k != "platform"),
        f"- platform: {r['versions'].get('platform', '')}",
        f"- workload: the default study (`studies/default.toml`, model `{r['model']}`, "
        f"{r['n_train']} training images of {r['image_size']} px, batch {r['batch_size']})"
        + (" with the --quick overrides " + " ".join(f"`{o}`" for o in QUICK) if r["quick"] else ""),
        "",
        "| measure | value | target | |",
        "|---|---|---|---|",
        f"| harness / bare throughput (median of {a['repeats']} back-to-back pairs) | {a['ratio_paired']:.3f} | "
        f">= 0.95 | {ok(a['ratio_paired'] >= 0.95)} |",
        f"| harness / bare throughput (median of {a['repeats']} each) | {a['ratio_median']:.3f} | >= 0.95 | "
        f"{ok(a['ratio_median'] >= 0.95)} |",
        f"| harness / bare throughput (best of {a['repeats']}) | {a['ratio_best']:.3f} | >= 0.95 | "
        f"{ok(a['ratio_best'] >= 0.95)} |",
        f"| MLflow logging / epoch time | {100 * lg['share']:.2f}% | < 2% | {ok(lg['share'] < 0.02)} |",
        f"| trials per minute, no pruning | {st['none']['per_minute']:.2f} | | |",
        f"| trials per minute, median pruning | {st['median']['per_minute']:.2f} | | |",
        f"| shift-suite build | {s['seconds']:.2f} s ({s['n_sets']} sets) | once per study | |",
        f"| per-trial evaluation (median) | {tt['eval']:.2f} s of {tt['train'] + tt['eval']:.2f} s "
        f"({100 * tt['eval'] / (tt['train'] + tt['eval']):.0f}%) | | |",
        f"| peak RSS | {r['peak_rss_mb']:.0f} MB | no growth across trials | |",
        "",
        "## (a) training throughput",
        f"{a['epochs']} epochs x {a['images'] // a['epochs']} images per measurement; schedule: {FREEZE} groups "
        f"frozen for {UNFREEZE} epoch(s), then all train; SGD, cosine lr per step; both loops alternate, one "
        f"warm-up each.",
        "",
        f"- harness (harness.train.train_one_epoch): {a['harness_median']:.0f} img/s median, "
        f"{a['harness_best']:.0f} best; seconds {', '.join(f'{v:.3f}' for v in a['times']['harness'])}",
        f"- bare PyTorch loop: {a['bare_median']:.0f} img/s median, {a['bare_best']:.0f} best; "
        f"seconds {', '.join(f'{v:.3f}' for v in a['times']['bare'])}",
        f"- ratio harness / bare: {a['ratio_paired']:.3f} (median of the pairs: "
        f"{', '.join(f'{v:.3f}' for v in a['ratios'])}), {a['ratio_median']:.3f} (of the medians), "
        f"{a['ratio_best']:.3f} (of the bests)",
        "",
        "## (b) MLflow logging",
        f"tracking.log_metrics (5 metrics, one batch) on a sqlite store in a temp dir: median "
        f"{1000 * lg['median']:.1f} ms over {lg['n']} calls (max {1000 * lg['max']:.1f} ms); epoch = training "
        f"{a['epoch_seconds']:.3f} s + validation {lg['eval_seconds']:.3f} s; share {100 * lg['share']:.2f}%.",
        "",
        "## (c) trials per minute (harness.study.main in a temp working dir)",
    ]
    for pruner, v in st.items():
        lines.append(f"- pruner {pruner}: {v['finished']} finished ({v['pruned']} pruned) in {v['span']:.1f} s "
                     f"of trials -> {v['per_minute']:.2f} trials/min; whole command {v['wall']:.1f} s "
                     f"(setup included); load average {v['load'][0]:.1f} before, {v['load'][1]:.1f} after; "
                     f"`python -m harness.study {' '.join(v['argv'])}`")
    lines += [
        "",
        "## (d) shift evaluation",
        f"- harness.suite.build on the default config's data (no cache): {s['seconds']:.2f} s for {s['n_sets']} "
        f"shifted sets; materialized once per study and read from the cache afterwards.",
        f"- per completed trial (median of {tt['n']}, study bench-none): train_seconds {tt['train']:.2f}, "
        f"eval_seconds {tt['eval']:.2f}.",
        "",
        "## (e) memory",
        f"- peak RSS of the benchmark process (all of the above in-process): {r['peak_rss_mb']:.0f} MB; "
        f"RSS at the end {r['rss_mb']:.0f} MB" + (f"; GPU peak {r['gpu_peak_mb']:.0f} MB" if r.get("gpu_peak_mb") else ""),
        f"- RSS at the end of each completed trial of study bench-none (MB, trial order): "
        f"{', '.join(f'{v:.0f}' for v in tt['rss'])}",
        "",
    ]
    return "\n".join(lines)


def run(quick: bool, device_name: str, out: Path, argv: list[str], log=print) -> dict:
    t_start = time.perf_counter()
    overrides = QUICK if quick else []
    cfg = config.load(None, overrides)
    device = train.pick_device(device_name)
    train.setup_device(device)
    data = datamod.load(cfg.data, cfg.study.seed)
    data_dev = datamod.to_device(data, device)
    repeats, epochs = (3, 2) if quick else (9, 2)  # 2 epochs: one with 2 groups frozen, one with all training

    log(f"(a) throughput: {repeats} x {epochs} epochs, harness and bare loop alternating ...")
    a = throughput(cfg, data_dev, device, repeats, epochs)
    ev = eval_seconds(cfg, data_dev, device, repeats)

    log("(d) shift suite build ...")
    t0 = time.perf_counter()
    _, info = suitemod.build(cfg.shifts, data, None)
    suite = {"seconds": time.perf_counter() - t0, "n_sets": info["n_sets"]}

    n_trials = 2 if quick else 6
    log(f"(c) two studies of {n_trials} trials (pruner none, median) ...")
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        tmp = Path(tmp)
        os.chdir(tmp)
        try:
            st = study_runs(overrides, n_trials, tmp, device_name)
            uri = tracking.default_uri(tmp / "mlruns")
            log("(b) MLflow logging ...")
            ts = logging_time(uri, 6 if quick else 30)
            tt = trial_times(uri, "bench-none")
        finally:
            os.chdir(cwd)
    lg = {"n": len(ts), "median": statistics.median(ts), "max": max(ts), "eval_seconds": ev}
    lg["share"] = lg["median"] / (a["epoch_seconds"] + ev + lg["median"])

    r = {"command": " ".join(["python -m harness.bench"] + argv), "quick": quick,
         "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": device_line(device), "versions": tracking.versions(),
         "model": cfg.model.name, "n_train": len(data["train"][0]), "image_size": cfg.data.image_size,
         "batch_size": cfg.train.batch_size, "throughput": a, "logging": lg, "study": st, "suite": suite,
         "trial_times": tt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
         "rss_mb": psutil.Process().memory_info().rss / 2**20}
    if device.type == "cuda":
        r["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    r["wall"] = time.perf_counter() - t_start
    text = render(r)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log(text)
    log(f"written: {out}")
    return r


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(prog="python -m harness.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny workloads (seconds): checks the benchmark runs")
    ap.add_argument("--device", choices=config.DEVICES, default="auto")
    ap.add_argument("--out", default="reports/bench.md", help="where to write the markdown report")
    args = ap.parse_args(argv)
    try:
        run(args.quick, args.device, Path(args.out).resolve(), argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m harness.study`: run (or resume) an Optuna study whose trials fine-tune for real, tracked in MLflow."""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import time
import warnings

import optuna
import torch
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState

from harness import bookkeeping, config, context, data as datamod, models, schema, shifts, store, tracking, train
from harness import trial as trialmod, workers
from harness.config import ConfigError


# ----------------------------------------------------------------------------------------------- CLI

def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--config", help="study TOML file (default: studies/default.toml)")
    ap.add_argument("--study-name", help="study name; re-running with the same name resumes it")
    ap.add_argument("--n-trials", type=int, help="target number of finished trials (completed or pruned; failed "
                    "ones do not count). Re-running resumes the study and stops at N; a larger N extends it; "
                    "with --workers, N is shared by all workers")
    ap.add_argument("--timeout", type=float, help="stop starting new trials after SEC seconds")
    ap.add_argument("--storage", help="Optuna storage URL (default: sqlite file mlruns/optuna.db; "
                    "postgresql://user:pw@host/db for many machines)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlruns/mlflow.db; "
                    "http://host:5000 for a tracking server)")
    ap.add_argument("--device", choices=config.DEVICES, help="auto picks CUDA when present")
    ap.add_argument("--seed", type=int, help="seed for sampler, data split, init and batch order")
    ap.add_argument("--workers", type=int, help="worker processes on this machine sharing the study")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override any config key, type-checked (repeatable), e.g. --set train.epochs=3")
    ap.add_argument("--no-report", action="store_true", help="do not write the HTML report at the end")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m harness.study", description=__doc__.split(": ", 1)[1],
                                 epilog="Exit codes: 0 success, 1 runtime failure, 2 bad input (nothing created).")
    add_common_args(ap)
    return ap.parse_args(argv)


def load_config(args) -> config.Config:
    flags = {"study.name": args.study_name, "study.n_trials": args.n_trials, "study.timeout": args.timeout,
             "study.storage": args.storage, "study.tracking_uri": args.tracking_uri, "study.device": args.device,
             "study.seed": args.seed, "study.workers": args.workers,
             "study.report": False if getattr(args, "no_report", False) else None}
    return config.load(args.config, args.set, **flags)


def preflight(cfg: config.Config) -> int:
    """Every check that needs no side effect, so bad input exits 2 before anything is created.
    Returns the number of freezable layer groups."""
    for key in ("selection", "test"):
        for name in getattr(cfg.shifts, key):
            if name not in shifts.SHIFTS:
                raise ConfigError(f"shifts.{key}", f"unknown shift {name!r}; allowed: {', '.join(shifts.SHIFTS)}")
    try:
        model, groups = models.build(cfg.model.name, max(2, len(cfg.data.target_classes)))
        if cfg.model.weights != "pretrain":
            models.initial_weights(cfg.model.name, cfg.model.weights, model, groups)
    except (ValueError, FileNotFoundError, ImportError, TypeError, RuntimeError) as e:
        msg = str(e)
        key = msg.split(":", 1)[0] if msg.startswith(("model.name", "model.weights")) else "model.name"
        raise ConfigError(key, msg.split(": ", 1)[-1]) from None
    n_groups = len(groups) - 1
    if cfg.search.freeze_layers[1] > n_groups:
        raise ConfigError("search.freeze_layers", f"high bound {cfg.search.freeze_layers[1]} exceeds the "
                          f"{n_groups} layer groups of {cfg.model.name} ({', '.join(list(groups)[:-1])})")
    try:
        datamod.check(cfg.data, cfg.study.seed, store.cache_dir())
    except (ValueError, FileNotFoundError) as e:
        msg = str(e)
        raise ConfigError("data.path", msg.split(": ", 1)[1] if msg.startswith("data.path: ") else msg) from None
    try:
        train.pick_device(cfg.study.device)
    except ValueError as e:
        raise ConfigError("study.device", str(e).split(": ", 1)[-1]) from None
    try:
        store.check_uris(cfg.study.storage, cfg.study.tracking_uri)
    except ValueError as e:
        raise ConfigError(*str(e).split(": ", 1)) from None
    return n_groups


# ------------------------------------------------------------------------------------------- setup

def parallel(cfg: config.Config) -> bool:
    """Several processes may sample this study: --workers, or a server storage that other machines share."""
    return cfg.study.workers > 1 or not (cfg.study.storage or "sqlite").startswith("sqlite")


def sampler_seed(cfg: config.Config, worker: int = 0) -> int:
    """The study seed for one process on a local store, so a study is reproducible. Parallel processes must not
    share it: seeded alike, their samplers draw the same parameters (3 workers sampled 3 identical trials)."""
    if not parallel(cfg):
        return cfg.study.seed
    mix = f"{cfg.study.seed}:{socket.gethostname()}:{os.getpid()}:{worker}".encode()
    return int.from_bytes(hashlib.sha256(mix).digest()[:4], "little")


def sampler(cfg: config.Config, worker: int = 0):
    s, seed = cfg.study, sampler_seed(cfg, worker)
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.sampler == "qmc":  # one scrambled sequence for the study: each process takes the next point of it
        return optuna.samplers.QMCSampler(seed=s.seed, scramble=True, warn_independent_sampling=False)
    # group=True splits the conditional space (unfreeze_epoch exists only when freeze_layers > 0); constant_liar
    # makes parallel workers see each other's running trials as bad results, so they spread out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, s.n_trials // 3)),
                                          multivariate=True, group=True, constant_liar=parallel(cfg))


def pruner(cfg: config.Config):
    s, epochs = cfg.study, cfg.train.epochs
    if s.pruner == "none" or s.objective == "multi":
        return optuna.pruners.NopPruner()
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, s.prune_warmup), max_resource=epochs)
    # the trial gates should_prune by its own warm-up (which counts from the unfreeze epoch)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def open_study(cfg: config.Config, storage, create: bool, worker: int = 0) -> optuna.Study:
    directions = ["maximize", "maximize"] if cfg.study.objective == "multi" else ["maximize"]
    if create:
        return optuna.create_study(storage=storage, study_name=cfg.study.name, sampler=sampler(cfg, worker),
                                   pruner=pruner(cfg), directions=directions, load_if_exists=True)
    return optuna.load_study(study_name=cfg.study.name, storage=storage, sampler=sampler(cfg, worker),
                             pruner=pruner(cfg))


def launch(ctx: context.Context, study: optuna.Study, log=print) -> None:
    """The launcher's part: log the study on its parent run, enqueue the baselines on a new study, say what it has."""
    cfg, data, info = ctx.cfg, ctx.data_cpu, ctx.info
    _log_study(ctx)
    if ctx.created or not study.trials:
        for b in trialmod.baselines(cfg, ctx.n_groups):
            study.enqueue_trial(b["params"], user_attrs={"baseline": b["name"]}, skip_if_exists=True)
    suite = info["suite"]
    log(f"data: {len(data['train'][0])} train / {len(data['val'][0])} val / {len(data['test'][0])} test "
        f"images, {len(data['classes'])} classes; shifts: {suite['n_sets']} sets "
        f"({'cached' if suite['cached'] else 'built in %.1f s' % suite['seconds']}); device {ctx.device}")


def _log_study(ctx: context.Context) -> None:
    """The parent run: config, search space, versions, tags (sample sizes included), pretraining, shift examples."""
    cfg, client, run, created, data = ctx.cfg, ctx.client, ctx.parent_id, ctx.created, ctx.data_cpu
    pre_info, suite_info = ctx.info.get("pretrain"), ctx.info["suite"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tracking.log_text(client, run, config.to_toml(cfg), "config/resolved.toml")
    tracking.log_text(client, run, config.to_toml(cfg), f"config/invocations/{stamp}.toml")
    tracking.log_json(client, run, {"lr": {"low": cfg.search.lr[0], "high": cfg.search.lr[1], "log": True},
                                    "freeze_layers": cfg.search.freeze_layers, "unfreeze_epoch": cfg.search.unfreeze_epoch,
                                    "unfreeze_epoch_condition": "only when freeze_layers > 0; >= train.epochs means never"},
                      "search_space.json")
    versions = tracking.versions()
    tracking.log_json(client, run, versions, "versions.json")
    tags = {"harness.git_sha": tracking.git_sha(), "harness.device": str(ctx.device),
            "harness.sampler": cfg.study.sampler,
            "harness.pruner": "none" if cfg.study.objective == "multi" else cfg.study.pruner,  # Optuna cannot prune multi
            "harness.shifts.family": ",".join(f"{n}:{f}" for n, f in ctx.suite["family"].items()),
            "harness.objective": cfg.study.objective, "harness.seed": cfg.study.seed,
            "harness.n_trials_target": cfg.study.n_trials, "harness.optuna_storage": store.redact(cfg.study.storage or "sqlite:///mlruns/optuna.db"),
            "harness.shifts.selection": ",".join(cfg.shifts.selection), "harness.shifts.test": ",".join(cfg.shifts.test),
            "harness.shift_suite": suite_info["key"], "harness.data": data["key"],
            # sample sizes behind every accuracy: the report's confidence intervals need them
            "harness.n_test": len(data["test"][1]),
            "harness.n_shift_eval": len(ctx.suite["labels"].get("test", data["test"][1])),
            **{f"harness.version.{k}": v for k, v in versions.items() if k in ("torch", "optuna", "mlflow", "python")}}
    logged_pretrain = None if created else client.get_run(run).data.tags.get("harness.pretrain")
    tracking.set_tags(client, run, tags)
    if created:
        # params are immutable in MLflow: log the config once; later invocations log config/invocations/*.toml
        flat = {f"{s}.{k}": v for s, vals in config.to_dict(cfg).items() for k, v in vals.items()
                if s != "study" or k in ("sampler", "pruner", "objective", "seed")}
        tracking.log_params(client, run, flat)
    if pre_info and pre_info["key"] != logged_pretrain:  # once per parent run, not again on every resume
        tracking.set_tags(client, run, {"harness.pretrain": pre_info["key"]})
        tracking.log_json(client, run, pre_info, f"pretrain/{pre_info['key']}.json")
        for h in pre_info.get("history", []):
            tracking.log_metrics(client, run, {"pretrain_loss": h["loss"], "pretrain_source_val_acc": h["val_acc"]},
                                 step=h["epoch"])
    if created:
        grid = _shift_grid(ctx.suite, cfg.shifts.severities)
        if grid is not None:
            tracking.log_figure(client, run, grid, "shift_examples.png")
            import matplotlib.pyplot as plt

            plt.close(grid)


def _shift_grid(suite: dict, sev: list[int]):
    """Rows: shifts (selection then test); columns: clean then severities. One example image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("selection", n) for n in suite["selection"]] + [("test", n) for n in suite["test"]]
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), len(sev) + 1, figsize=(1.3 * (len(sev) + 1), 1.3 * len(rows)), squeeze=False)
    clean = {part: suite["clean"][part][0] for part in ("selection", "test") if part in suite["clean"]}
    for r, (part, name) in enumerate(rows):
        imgs = [clean[part]] + [suite[part][name][s][0] for s in sev]
        for c, img in enumerate(imgs):
            ax = axes[r][c]
            ax.imshow(img.float().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if c == 0 else f"severity {sev[c - 1]}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{name}\n({part})", fontsize=7)
    fig.tight_layout()
    return fig


def _report(cfg: config.Config, uri: str, log) -> None:
    """The report at the end of a study. Its failure must not turn a finished study into an error: the trials are
    safe in MLflow and `python -m harness.report` rebuilds it."""
    from harness import report

    try:
        log(f"report: {report.build([cfg.study.name], tracking_uri=uri, storage=cfg.study.storage or None)}")
    except Exception as e:
        log(f"warning: the report could not be written ({type(e).__name__}: {e}); rebuild it with "
            f"python -m harness.report --study-name {cfg.study.name}")




def _worker_main(cfg, n_groups, worker):
    """Entry point of a spawned worker process: open the context from the caches, run trials."""
    ctx = context.open_context(cfg, n_groups, log=lambda *_: None)
    workers.work(ctx, open_study(cfg, ctx.storage, create=False, worker=worker), worker)


# -------------------------------------------------------------------------------------------- main

def summary(ctx: context.Context, study: optuna.Study, wall: float, log=print) -> None:
    """Counts, the top trials, and the commands that open the UI and rebuild the report."""
    cfg = ctx.cfg
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    log(f"\nstudy {cfg.study.name!r}: {counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed, {counts['running']} running; this run took {wall:.0f} s")
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    done.sort(key=lambda t: -t.values[0])
    obj = "val_acc,ood_val_acc" if cfg.study.objective == "multi" else cfg.study.objective
    log(f"\n{'trial':>5} {'baseline':<13} {'lr':>9} {'freeze':>6} {'unfreeze':>8} {obj:>12} {'id_acc':>7} {'ood_acc':>7}")
    for t in done[:8]:
        e = t.params.get("unfreeze_epoch", 0)
        log(f"{t.number:>5} {t.user_attrs.get('baseline', ''):<13} {t.params.get('lr', float('nan')):>9.2e} {t.params['freeze_layers']:>6} "
            f"{('never' if e >= cfg.train.epochs else e) if t.params['freeze_layers'] else '-':>8} "
            f"{', '.join(f'{v:.4f}' for v in t.values):>12} {t.user_attrs.get(schema.ID_ACC, float('nan')):>7.4f} "
            f"{t.user_attrs.get(schema.OOD_ACC_MEAN, float('nan')):>7.4f}")
    uri = ctx.uri
    log("\nopen the MLflow UI on this store:\n"
        f"  python -m harness.ui --tracking-uri {uri}\n  (or: mlflow ui --backend-store-uri {uri})\n"
        f"rebuild the report:\n  python -m harness.report --study-name {cfg.study.name} --tracking-uri {uri}"
        + (f" --storage {store.redact(cfg.study.storage)}" if cfg.study.storage else ""))


def _run_workers(cfg: config.Config, n_groups: int, log) -> None:
    """cfg.study.workers spawned processes on the study; each opens its own context from the caches."""
    import multiprocessing as mp

    spawn = mp.get_context("spawn")  # fresh interpreters: no forked torch threads or sqlite handles
    procs = [spawn.Process(target=_worker_main, args=(cfg, n_groups, i)) for i in range(cfg.study.workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    crashed = [f"worker {i} (exit code {p.exitcode})" for i, p in enumerate(procs) if p.exitcode]
    if crashed:
        log(f"warning: {', '.join(crashed)} ended abnormally; their trials are failed and re-queued")


def run(cfg: config.Config, n_groups: int, log=print) -> int:
    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = context.open_context(cfg, n_groups, log=log)
    study = open_study(cfg, ctx.storage, create=True)
    launch(ctx, study, log)
    n_dead = bookkeeping.recover_dead(study, ctx.client)
    n_orphans = bookkeeping.sweep_orphans(ctx.client, ctx.exp_id, ctx.parent_id, study)
    if n_dead or n_orphans:
        log(f"resume: {n_dead} trial(s) of dead workers failed and re-queued with the same params; "
            f"{n_orphans} orphan MLflow run(s) ended FAILED")
    if cfg.study.workers > 1:
        ctx.data = ctx.suite = None  # the workers load their own: no idle copy on the GPU meanwhile
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        _run_workers(cfg, n_groups, log)
        bookkeeping.recover_dead(study, ctx.client)
        bookkeeping.sweep_orphans(ctx.client, ctx.exp_id, ctx.parent_id, study)
        timed_out = bool(cfg.study.timeout) and time.perf_counter() - t0 > cfg.study.timeout
    else:
        timed_out = workers.work(ctx, study, 0, log)["stopped"] == "timeout"
    workers.backfill(ctx, study, log)  # trials that finished before the CE reference, e.g. in another worker or run
    workers.tag_best(ctx, study)
    finished = bookkeeping.counts(study)[0]
    short = finished < cfg.study.n_trials and not timed_out
    if not short and not timed_out and cfg.study.replicates > 1:
        if ctx.data is None:  # the workers had them; the replicates run here, in the launcher
            ctx = context.open_context(cfg, n_groups, log=lambda *_: None)
        workers.replicate(ctx, study, log)
    tracking.end_run(ctx.client, ctx.parent_id, "FAILED" if short else "FINISHED")
    summary(ctx, study, time.perf_counter() - t0, log)
    if cfg.study.report:
        _report(cfg, ctx.uri, log)
    if short:
        print(f"error: the study stopped at {finished} of {cfg.study.n_trials} finished trials (see the failures "
              f"above); re-run the same command to continue it", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args)
        n_groups = preflight(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if tracking.existing_role(cfg.study.tracking_uri or store.default_tracking_uri(), cfg.study.name) == "sustain":
            print(f"error: study.name: {cfg.study.name!r} is the MLflow experiment of a sustain study (python -m "
                  f"harness.sustain); choose another --study-name", file=sys.stderr)
            return 2
        return run(cfg, n_groups)
    except KeyboardInterrupt:
        print("\ninterrupted: re-run the same command to resume the study", file=sys.stderr)
        return 130
    except (ConnectionError, OSError, RuntimeError, ValueError, optuna.exceptions.OptunaError, MlflowException) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

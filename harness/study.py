"""`python -m harness.study`: run (or resume) an Optuna study whose trials fine-tune for real, tracked in MLflow."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import optuna
import torch
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState

from harness import bookkeeping, config, context, data as datamod, models, schema, shifts, store, tracking, train
from harness import champion, cores, links, records, strategies, suite as suitemod, trial as trialmod, units, workers
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
                                 epilog="Exit codes: 0 success; 1 runtime failure (including a study that stopped "
                                 "short of its target); 2 bad input (nothing created); 3 the target was reached but a "
                                 "--workers process crashed (its trial was failed and retried; the summary line "
                                 "'crashed workers: N' says which). Printed commands are shell-quoted, passwords "
                                 "shown as ***.")
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
    config.target_shifts(cfg.data, known=shifts.SHIFTS)
    try:
        model, groups = models.build(cfg.model.name, max(2, len(cfg.data.target_classes)))
        if cfg.model.weights != "pretrain":
            models.initial_weights(cfg.model.name, cfg.model.weights, model, groups)
    except ConfigError:  # model.name or model.weights, a user factory's failure included (models._call_factory)
        raise
    except Exception as e:  # noqa: BLE001 - a failure models did not foresee is still the model's
        raise ConfigError("model.name", f"{cfg.model.name} could not be built ({type(e).__name__}: {e})") from None
    n_groups = len(groups) - 1
    if cfg.search.freeze_layers[1] > n_groups:
        raise ConfigError("search.freeze_layers", f"high bound {cfg.search.freeze_layers[1]} exceeds the "
                          f"{n_groups} layer groups of {cfg.model.name} ({', '.join(list(groups)[:-1])})")
    try:
        datamod.check(cfg.data, cfg.study.seed, store.cache_dir())
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as e:  # torchvision's own, reading the files: still data.path's fault
        raise ConfigError("data.path", str(e)) from None
    train.pick_device(cfg.study.device)
    store.check_uris(cfg.study.storage, cfg.study.tracking_uri)
    bound, why = cores.max_workers()
    if cfg.study.workers > bound:
        raise ConfigError("study.workers", f"at most {bound} on this machine ({why}), got {cfg.study.workers}")
    return n_groups


# ------------------------------------------------------------------------------------------- setup

def sampler(cfg: config.Config, worker: int = 0):
    """The study's sampler, seeded per trial from (study seed, trial number) (bookkeeping.seed_per_trial): Optuna
    hands out each number once per storage, so every process of the study (--workers, or the same command started
    again on this or another machine) draws its own parameters, and one process alone draws the same sequence on
    every run. `worker` is kept for callers; the seed needs no process identity."""
    s = cfg.study
    if s.sampler == "random":
        return bookkeeping.seed_per_trial(optuna.samplers.RandomSampler(seed=s.seed), s.seed)
    if s.sampler == "qmc":  # one scrambled sequence for the study: trial n takes its point n, whichever process runs it
        return bookkeeping.seed_per_trial(optuna.samplers.QMCSampler(seed=s.seed, scramble=True,
                                                                     warn_independent_sampling=False), s.seed)
    # group=True splits the conditional space (unfreeze_epoch exists only when freeze_layers > 0). constant_liar
    # always: any process may share the study unannounced (the same command on another machine), and the liar
    # ignores the trial being sampled, so a process alone samples exactly as without it (no other trial RUNNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        tpe = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=min(10, max(3, s.n_trials // 3)),
                                         multivariate=True, group=True, constant_liar=True)
    return bookkeeping.seed_per_trial(tpe, s.seed)


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
    tracking.log_inputs(ctx.client, ctx.parent_id, records.context_inputs(ctx))  # the data every trial reads
    def enqueue():  # skip_if_exists: a holder that died part-way enqueued some; exact, as one process holds the claim
        for b in trialmod.baselines(cfg, ctx.n_groups):
            study.enqueue_trial(b["params"], user_attrs={"baseline": b["name"]}, skip_if_exists=True)
        for params in trialmod.surgical_sweep(cfg, ctx.n_groups):
            study.enqueue_trial(params, user_attrs={"surgical_sweep": True}, skip_if_exists=True)

    # exactly once across every process and machine of the study: a claim in the storage (harness.units); a
    # process that finds it held by a live one waits for it, so no process asks before the baselines are queued
    while units.once(study, "baselines", enqueue) is None:
        time.sleep(0.5)
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
                                    **strategies.search_space(cfg.search, ctx.n_groups)}, "search_space.json")
    versions = tracking.versions()
    tracking.log_json(client, run, versions, "versions.json")
    tags = {"harness.git_sha": tracking.git_sha(), "harness.device": str(ctx.device),
            "harness.sampler": cfg.study.sampler,
            "harness.pruner": "none" if cfg.study.objective == "multi" else cfg.study.pruner,  # Optuna cannot prune multi
            "harness.shifts.family": ",".join(f"{e.name}:{e.family}" for e in ctx.suite.selection + ctx.suite.test),
            "harness.objective": cfg.study.objective, "harness.seed": cfg.study.seed,
            "harness.n_trials_target": cfg.study.n_trials, "harness.optuna_storage": store.redact(cfg.study.storage or "sqlite:///mlruns/optuna.db"),
            "harness.shifts.selection": ",".join(cfg.shifts.selection),
            "harness.shifts.test": ",".join(e.name for e in ctx.suite.test if e.kind == "severity"),
            "harness.target_domain": ",".join(data.get("target_shift", [])) or "none",  # harness.target's parse
            "harness.shift_suite": suite_info["key"], "harness.data": data["key"],
            # sample sizes behind every accuracy: the report's confidence intervals need them
            "harness.n_test": len(data["test"][1]),
            "harness.n_shift_eval": len(ctx.suite.clean_test.labels),
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


def _shift_grid(suite: suitemod.Suite, sev: list[int]):
    """Rows: the paired shifts (selection then test); columns: clean then severities. One example image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(part, clean.images[0], e) for part, sets, clean in (("selection", suite.selection, suite.clean_selection),
                                                                   ("test", suite.test, suite.clean_test))
            for e in sets if e.paired]
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), len(sev) + 1, figsize=(1.3 * (len(sev) + 1), 1.3 * len(rows)), squeeze=False)
    for r, (part, first, e) in enumerate(rows):
        imgs = [first] + [e.images[e.severities.index(s)][0] for s in sev]
        for c, img in enumerate(imgs):
            ax = axes[r][c]
            ax.imshow(img.float().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if c == 0 else f"severity {sev[c - 1]}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{e.name}\n({part})", fontsize=7)
    fig.tight_layout()
    return fig


def _report(cfg: config.Config, uri: str, log) -> None:
    """The report at the end of a study. Its failure must not turn a finished study into an error: the trials are
    safe in MLflow and `python -m harness.report` rebuilds it."""
    from harness import report

    try:
        log(f"report: {report.build([cfg.study.name], tracking_uri=uri, storage=cfg.study.storage or None)}")
    except Exception as e:
        log(store.redact(f"warning: the report could not be written ({type(e).__name__}: {e}); rebuild it with ")
            + store.command_line("python", "-m", "harness.report", "--study-name", cfg.study.name, "--tracking-uri", uri))




# ------------------------------------------------------------------------------------- cores, packing

def _worker_main(cfg, n_groups, worker, launcher=None):
    """Entry point of a spawned worker process: it dies with its launcher (cores.die_with_parent), then its thread
    budget (OMP_NUM_THREADS and OMP_WAIT_POLICY came with its environment, see cores.worker_env) and GPU memory share,
    then the context from the caches, then trials and the post-search units."""
    cores.die_with_parent(launcher)
    threads, why = cores.thread_budget(cfg)
    torch.set_num_threads(threads)
    device, share = train.pick_device(cfg.study.device), 1.0
    if device.type == "cuda":
        share = cores.GPU_SHARE / cfg.study.workers
        torch.cuda.set_per_process_memory_fraction(share, device.index)  # None: the current device
    env = " ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"))
    print(f"[w{worker}] pid {os.getpid()}: {torch.get_num_threads()} torch thread{'s' if threads > 1 else ''} ({why}), "
          f"{env}" + (f", {share:.2f} of the GPU's memory" if share < 1 else ""), flush=True)
    ctx = context.open_context(cfg, n_groups, log=lambda *_: None, memory_share=share)
    study = open_study(cfg, ctx.storage, create=False, worker=worker)
    if workers.work(ctx, study, worker)["stopped"] == "target":  # then the post-search units, shared with the others
        workers.post_search(ctx, study, lambda line: print(f"[w{worker}] {line}", flush=True), worker)


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
        baseline = t.user_attrs.get("baseline", "")
        p = trialmod.with_strategy(cfg, t.params, baseline)
        k, when = strategies.of(p, baseline).words(p, cfg.train.epochs)["cells"]  # its strategy in the two columns
        log(f"{t.number:>5} {t.user_attrs.get('baseline', ''):<13} {t.params.get('lr', float('nan')):>9.2e} {k:>6} {when:>8} "
            f"{', '.join(f'{v:.4f}' for v in t.values):>12} {t.user_attrs.get(schema.ID_ACC, float('nan')):>7.4f} "
            f"{t.user_attrs.get(schema.OOD_ACC_MEAN, float('nan')):>7.4f}")
    base = links.ui_base(ctx.uri)
    urls = ui_urls(ctx, study, base or links.local_base())
    where = "in the MLflow UI" if base else "in the MLflow UI once python -m harness.ui serves it"
    log(f"\nthe study's runs {where}:\n  {urls['runs']}"
        + (f"\nthe selected trial against the baselines:\n  {urls['compare']}" if "compare" in urls else ""))
    log(hints(cfg, ctx.uri))


def hints(cfg: config.Config, uri: str) -> str:
    """The commands that open the UI and rebuild the report, shell-quoted and redacted (a password shows as ***:
    put it back, or use a ~/.pgpass file / MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)."""
    report = ["python", "-m", "harness.report", "--study-name", cfg.study.name, "--tracking-uri", uri]
    report += ["--storage", cfg.study.storage] if cfg.study.storage else []
    note = ("\n(passwords are shown as ***)" if store.redact(uri + " " + cfg.study.storage) != uri + " " + cfg.study.storage
            else "")
    return ("\nopen the MLflow UI on this store:\n"
            f"  {store.command_line('python', '-m', 'harness.ui', '--tracking-uri', uri)}\n"
            f"  (or: {store.command_line('mlflow', 'ui', '--backend-store-uri', uri)})\n"
            f"rebuild the report:\n  {store.command_line(*report)}{note}")


def publish_model(ctx: context.Context, log=print) -> dict | None:
    """The selected trial's model, logged and registered (champion.publish). A failure costs a warning: the trials
    and the weights artifact are safe."""
    try:
        out = champion.publish(ctx, log)
    except Exception as e:  # noqa: BLE001
        log(f"warning: the selected model was not registered ({type(e).__name__}: {e})")
        return None
    if out and out["new"]:
        log(f"model: {out['name']} version {out['version']} (alias champion) from run {out['run_id']} "
            f"in {out['seconds']:.1f} s")
    return out


def selected_trial(ctx: context.Context, study: optuna.Study) -> dict | None:
    """The selected trial (the parent's harness.best_run_id) as the parent's description needs it."""
    run_id = ctx.client.get_run(ctx.parent_id).data.tags.get("harness.best_run_id")
    if not run_id:
        return None
    run = ctx.client.get_run(run_id)
    params = {k: v for k, v in run.data.params.items() if k in schema.TRIAL_PARAMS}  # strings; strategy() casts
    return {"run_id": run_id, "run_name": run.info.run_name,
            "strategy": records.strategy(params, ctx.cfg.train.epochs, ctx.n_groups,
                                         run.data.tags.get("harness.baseline", "")),
            **{k: run.data.metrics.get(k) for k in (schema.ID_ACC, schema.OOD_ACC_MEAN, schema.OOD_ACC_WORST)}}


def describe_parent(ctx: context.Context, study: optuna.Study, model: dict | None) -> None:
    """The parent run's description (mlflow.note.content): counts, selection, model, report."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    base = links.ui_base(ctx.uri)
    report = (links.artifact_url(base, ctx.exp_id, ctx.parent_id, "report/index.html") if base
              else "report/index.html") if ctx.cfg.study.report else None
    obj = "val_acc + ood_val_acc" if ctx.cfg.study.objective == "multi" else ctx.cfg.study.objective
    tracking.set_description(ctx.client, ctx.parent_id, records.study_description(
        ctx.cfg.study.name, counts, obj, selected_trial(ctx, study), model, report))


def ui_urls(ctx: context.Context, study: optuna.Study, base: str) -> dict:
    """The study's runs view and a comparison of the selected trial with the baselines, in the UI at `base`."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = ctx.client.get_run(ctx.parent_id).data.tags.get("harness.best_run_id")
    ids = ([best] if best else []) + [t.user_attrs["mlflow_run_id"] for t in done
                                      if t.user_attrs.get("baseline") and "mlflow_run_id" in t.user_attrs]
    order = schema.OOD_VAL_ACC if ctx.cfg.study.objective == "ood_val_acc" else schema.VAL_ACC_FINAL  # the objective
    out = {"runs": links.runs_url(base, ctx.exp_id, ctx.cfg.study.name, order)}
    if len(set(ids)) > 1:
        out["compare"] = links.compare_url(base, ctx.exp_id, ids)
    return out


def _run_workers(cfg: config.Config, n_groups: int, log) -> list[str]:
    """cfg.study.workers spawned processes on the study; each opens its own context from the caches. Returns the
    workers that ended abnormally (a signal such as SIGKILL or the OOM killer, or a nonzero exit), in words."""
    import multiprocessing as mp
    import signal

    spawn = mp.get_context("spawn")  # fresh interpreters: no forked torch threads or sqlite handles
    procs = [spawn.Process(target=_worker_main, args=(cfg, n_groups, i, os.getpid())) for i in range(cfg.study.workers)]
    with cores.environment(cores.worker_env(cores.thread_budget(cfg)[0])):
        for p in procs:
            p.start()
    for p in procs:
        p.join()
    crashed = [f"worker {i} pid {p.pid} " + (f"killed by {signal.Signals(-p.exitcode).name}" if p.exitcode < 0
                                              else f"exit code {p.exitcode}")
               for i, p in enumerate(procs) if p.exitcode]
    if crashed:
        log(f"warning: {', '.join(crashed)}; their trials are failed and re-queued")
    return crashed


# A study that reached its target while a --workers process crashed (killed, OOM): the numbers are complete, the
# machine is not healthy. Scripts test the exit code or grep the summary line "crashed workers: N".
EXIT_WORKER_CRASHED = 3


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
    log(f"cores: {cores.budget_line(cfg)}")
    if cfg.study.workers > 1:
        ctx.data = ctx.suite = None  # the workers load their own: no idle copy on the GPU meanwhile
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        crashed = _run_workers(cfg, n_groups, log)
        bookkeeping.recover_dead(study, ctx.client)
        bookkeeping.sweep_orphans(ctx.client, ctx.exp_id, ctx.parent_id, study)
        timed_out = bool(cfg.study.timeout) and time.perf_counter() - t0 > cfg.study.timeout
    else:
        before = torch.get_num_threads()
        torch.set_num_threads(cores.thread_budget(cfg)[0])
        try:
            crashed, timed_out = [], workers.work(ctx, study, 0, log)["stopped"] == "timeout"
        finally:
            torch.set_num_threads(before)  # run() may be called in-process (tests, bench): leave it as it was
    workers.backfill(ctx, study, log)  # trials that finished before the CE reference, e.g. in another worker or run
    workers.tag_best(ctx, study)
    model = publish_model(ctx, log)
    describe_parent(ctx, study, model)
    finished = bookkeeping.counts(study)[0]
    short = finished < cfg.study.n_trials and not timed_out
    if not short and not timed_out and cfg.study.replicates > 1:
        if ctx.data is None:  # the workers had them; what units remain (a dead worker's retry) run here too
            ctx = context.open_context(cfg, n_groups, log=lambda *_: None)
        workers.post_search(ctx, study, log)
    tracking.end_run(ctx.client, ctx.parent_id, "FAILED" if short else "FINISHED")
    summary(ctx, study, time.perf_counter() - t0, log)
    if cfg.study.workers > 1:
        log(f"crashed workers: {len(crashed)}" + (f" ({'; '.join(crashed)})" if crashed else ""))
    if cfg.study.report:
        _report(cfg, ctx.uri, log)
    if short:
        print(f"error: the study stopped at {finished} of {cfg.study.n_trials} finished trials (see the failures "
              f"above); re-run the same command to continue it", file=sys.stderr)
        return 1
    if crashed:
        print(f"error: the study reached its {cfg.study.n_trials} finished trials, but {len(crashed)} worker "
              f"process(es) crashed ({'; '.join(crashed)}); their trials were failed and retried (exit code "
              f"{EXIT_WORKER_CRASHED})", file=sys.stderr)
        return EXIT_WORKER_CRASHED
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args)
        n_groups = preflight(cfg)
    except ConfigError as e:
        print(store.redact(f"error: {e}"), file=sys.stderr)
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
        print(store.redact(f"error: {type(e).__name__}: {e}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

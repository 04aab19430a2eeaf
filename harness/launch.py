"""Launching a study: the checks before anything exists, the parent run and the baselines, the worker processes, the
search and the post-search units to their end."""

from __future__ import annotations

import dataclasses
import os
import time

import optuna
import torch

from harness import bookkeeping, closing, config, context, cores, data as datamod, fingerprint, models, records
from harness import sampling, shifts, stopping
from harness import schema, store, strategies, suite as suitemod, tracking, train, trial as trialmod, units, workers
from harness import budgets, domainfiles, flags, shiftfiles, soups
from harness.config import ConfigError


# ------------------------------------------------------------------------------------------ checks

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
    for choice in cfg.search.surgical_groups:
        try:
            strategies.choice_groups(choice, groups)
        except ValueError as e:
            raise ConfigError("search.surgical_groups", str(e)) from None
    if cfg.search.freeze_layers[1] > n_groups:
        raise ConfigError("search.freeze_layers", f"high bound {cfg.search.freeze_layers[1]} exceeds the "
                          f"{n_groups} layer groups of {cfg.model.name} ({', '.join(list(groups)[:-1])})")
    try:
        datamod.check(cfg.data, cfg.study.seed, store.cache_dir())
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as e:  # torchvision's own, reading the files: still data.path's fault
        raise ConfigError("data.path", str(e)) from None
    shiftfiles.check(cfg.shifts, datamod.n_classes(cfg.data))
    domainfiles.preflight(cfg)  # the domain folder's names and classes, its evaluated images decoded
    budgets.check(cfg, store.cache_dir())  # a budget above a class's training images (issue 25)
    train.pick_device(cfg.study.device)
    for flag, uri in (("--storage", cfg.study.storage), ("--tracking-uri", cfg.study.tracking_uri)):
        flags.check_url_syntax(flag, uri)
    store.check_uris(cfg.study.storage, cfg.study.tracking_uri)
    bound, why = cores.max_workers()
    if cfg.study.workers > bound:
        raise ConfigError("study.workers", f"at most {bound} on this machine ({why}), got {cfg.study.workers}")
    return n_groups


# ------------------------------------------------------------------------------------------ launch

def launch(ctx: context.Context, study: optuna.Study, log=print) -> None:
    """The launcher's part: log the study on its parent run, enqueue the baselines on a new study, say what it has."""
    cfg, data, info = ctx.cfg, ctx.data_cpu, ctx.info
    _log_study(ctx)
    tracking.log_inputs(ctx.client, ctx.parent_id, records.context_inputs(ctx))  # the data every trial reads
    def enqueue():  # skip_if_exists: a holder that died part-way enqueued some; exact, as one process holds the claim
        for b in trialmod.baselines(cfg, ctx.n_groups):
            study.enqueue_trial(b["params"], user_attrs={schema.ATTR_BASELINE: b["name"]}, skip_if_exists=True)
        for params in trialmod.surgical_sweep(cfg, ctx.n_groups):
            study.enqueue_trial(params, user_attrs={schema.ATTR_SURGICAL_SWEEP: True}, skip_if_exists=True)

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
    tags = {schema.TAG_GIT_SHA: tracking.git_sha(), schema.TAG_DEVICE: str(ctx.device),
            schema.TAG_LOAD_AVERAGE: ",".join(f"{v:.2f}" for v in os.getloadavg()), schema.TAG_CPU_COUNT: os.cpu_count(),
            schema.TAG_SAMPLER: cfg.study.sampler,
            schema.TAG_PRUNER: "none" if cfg.study.objective == "multi" else cfg.study.pruner,  # no pruning multi
            schema.TAG_SHIFTS_FAMILY: ",".join(f"{e.name}:{e.family}" for e in ctx.suite.selection + ctx.suite.test),
            schema.TAG_OBJECTIVE: cfg.study.objective, schema.TAG_SEED: cfg.study.seed,
            schema.TAG_N_TRIALS_TARGET: cfg.study.n_trials, schema.TAG_OPTUNA_STORAGE: store.redact(cfg.study.storage or "sqlite:///mlruns/optuna.db"),
            schema.TAG_SHIFTS_SELECTION: ",".join(cfg.shifts.selection),
            schema.TAG_SHIFTS_TEST: ",".join(e.name for e in ctx.suite.test if e.kind == "severity"),
            schema.TAG_TARGET_DOMAIN: ",".join(data.get("target_shift", [])) or "none",  # harness.target's parse
            schema.TAG_SHIFT_SUITE: suite_info["key"], schema.TAG_DATA: data["key"],
            schema.TAG_SHIFT_CONSTANTS: suite_info["constants"],
            # sample sizes behind every accuracy: the report's confidence intervals need them
            schema.TAG_N_TEST: len(data["test"][1]),
            schema.TAG_N_SHIFT_EVAL: len(ctx.suite.clean_test.labels),
            **{schema.version_tag(k): v for k, v in versions.items() if k in ("torch", "optuna", "mlflow", "python")}}
    logged_pretrain = None if created else client.get_run(run).data.tags.get(schema.TAG_PRETRAIN)
    tracking.set_tags(client, run, tags)
    if created:
        # params are immutable in MLflow: log the config once; later invocations log config/invocations/*.toml
        flat = {f"{s}.{k}": v for s, vals in config.to_dict(cfg).items() for k, v in vals.items()
                if s != "study" or k in ("sampler", "pruner", "objective", "seed")}
        tracking.log_params(client, run, flat)
    if pre_info and pre_info["key"] != logged_pretrain:  # once per parent run, not again on every resume
        tracking.set_tags(client, run, {schema.TAG_PRETRAIN: pre_info["key"]})
        tracking.log_json(client, run, pre_info, f"pretrain/{pre_info['key']}.json")
        for h in pre_info.get("history", []):
            tracking.log_metrics(client, run, {schema.PRETRAIN_LOSS: h["loss"],
                                               schema.PRETRAIN_SOURCE_VAL_ACC: h["val_acc"]}, step=h["epoch"])
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
            ax.imshow(datamod.pixels(img).float().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if c == 0 else f"severity {sev[c - 1]}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{e.name}\n({part})", fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------- workers

def _worker_main(cfg, n_groups, worker, launcher=None):
    """Entry point of a spawned worker process: it dies with its launcher (cores.die_with_parent), then its thread
    budget (OMP_NUM_THREADS and OMP_WAIT_POLICY came with its environment, see cores.worker_env) and GPU memory share,
    then the context from the caches, then trials and the post-search units."""
    cores.die_with_parent(launcher)
    stopping.install()
    with stopping.worker_exit():  # a signal: its trial failed and re-queued, exit 128 + signal, no traceback
        _work_in_worker(cfg, n_groups, worker)


def _work_in_worker(cfg, n_groups, worker):
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
    study = sampling.open_study(cfg, ctx.storage, create=False, worker=worker)
    stopping.watch(ctx, study)
    if workers.work(ctx, study, worker)["stopped"] == "target":  # then the post-search units, shared with the others
        workers.post_search(ctx, study, lambda line: print(f"[w{worker}] {line}", flush=True), worker)


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
    try:
        for p in procs:
            p.join()
    except stopping.Interrupted as e:  # forwarded, waited for, then killed: no worker outlives its launcher
        stopping.stop_workers(procs, e.signum)
        e.worker_pids = [p.pid for p in procs]  # wind_down fails what they still hold
        raise
    crashed = [f"worker {i} pid {p.pid} " + (f"killed by {signal.Signals(-p.exitcode).name}" if p.exitcode < 0
                                              else f"exit code {p.exitcode}")
               for i, p in enumerate(procs) if p.exitcode]
    if crashed:
        log(f"warning: {', '.join(crashed)}; their trials are failed and re-queued")
    return crashed


# A study that reached its target while a --workers process crashed (killed, OOM): the numbers are complete, the
# machine is not healthy. Scripts test the exit code or grep the summary line "crashed workers: N".
EXIT_WORKER_CRASHED = 3


@dataclasses.dataclass
class Outcome:
    """What run leaves to its caller (harness.study prints the summary from it, then exits with `code`)."""
    ctx: context.Context
    study: optuna.Study
    started: float  # time.perf_counter() when run began: the summary's wall time runs to when it prints
    finished: int  # finished trials of the study (completed or pruned)
    crashed: list[str]  # the --workers processes that ended abnormally, in words
    code: int  # 0; 1: stopped short of study.n_trials; EXIT_WORKER_CRASHED: the target reached, a worker crashed


def run(cfg: config.Config, n_groups: int, log=print, resume: fingerprint.Resume | None = None) -> Outcome:
    """The study to its end: context, study and parent run, recovery of a dead earlier run, the search (in this
    process or cfg.study.workers spawned ones), the end-of-study records, the post-search units, the parent run
    ended (FAILED when the study stopped short of its target)."""
    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = context.open_context(cfg, n_groups, log=log)
    study = sampling.open_study(cfg, ctx.storage, create=True)
    stopping.watch(ctx, study)  # a signal from here on winds the study down (harness.study)
    launch(ctx, study, log)
    fingerprint.record(ctx.client, ctx.parent_id, resume or fingerprint.Resume(fingerprint.of(cfg)), study, ctx.uri)
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
    finished = bookkeeping.counts(study)[0]
    short = finished < cfg.study.n_trials and not timed_out
    if not short and not timed_out:  # the grids' extensions and the finalists' seeds, before the selection reads them
        if ctx.data is None:  # the workers had them; what units remain (a dead worker's retry) run here too
            ctx = context.open_context(cfg, n_groups, log=lambda *_: None)
        workers.post_search(ctx, study, log)
        workers.backfill(ctx, study, log)
    workers.tag_best(ctx, study)  # harness.selection: the finalist with the best mean validation over seeds
    if not short and not timed_out:
        soups.after_search(ctx, study, log)  # WiSE-FT and the soups (issue 23); a winning soup is the champion
    if not short and not timed_out and cfg.study.label_budgets:  # learning curves: after the selection (issue 25)
        budgets.run(ctx, study, log)
    model = closing.publish_model(ctx, log, study)
    closing.describe_parent(ctx, study, model)
    tracking.end_run(ctx.client, ctx.parent_id, "FAILED" if short else "FINISHED")
    return Outcome(ctx, study, t0, finished, crashed, 1 if short else EXIT_WORKER_CRASHED if crashed else 0)

"""`python -m harness.study`: run (or resume) an Optuna study whose trials fine-tune for real, tracked in MLflow."""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import fcntl
import hashlib
import math
import os
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

import optuna
import psutil
import torch
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState

from harness import config, data as datamod, models, pretrain, shifts, suite as suitemod, tracking, train, trial as trialmod
from harness.config import ConfigError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# We drive trials with ask/tell (to stop at exactly N finished trials across workers) and beat the heartbeat
# ourselves, which Optuna warns about; the heartbeat/retry APIs are marked experimental since v2.8 but stable.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
HEARTBEAT_S, GRACE_S = 10, 60  # a worker silent for 60 s is dead; its trial is failed and retried


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
        datamod.check(cfg.data, cfg.study.seed, home() / "cache")
    except (ValueError, FileNotFoundError) as e:
        msg = str(e)
        raise ConfigError("data.path", msg.split(": ", 1)[1] if msg.startswith("data.path: ") else msg) from None
    try:
        train.pick_device(cfg.study.device)
    except ValueError as e:
        raise ConfigError("study.device", str(e).split(": ", 1)[-1]) from None
    if cfg.study.storage and not cfg.study.storage.startswith(("sqlite:///", "postgresql", "mysql")):
        raise ConfigError("--storage", f"unsupported URL {cfg.study.storage!r}; use sqlite:///PATH or "
                          f"postgresql://USER:PASSWORD@HOST/DB")
    uri = cfg.study.tracking_uri
    if uri and not uri.startswith(("sqlite:///", "http://", "https://", "postgresql", "mysql", "databricks")):
        raise ConfigError("--tracking-uri", f"unsupported URI {uri!r}; use sqlite:///PATH or http://HOST:PORT "
                          f"(MLflow 3 refuses the file store)")
    same = lambda a, b: a.startswith("sqlite:///") and b.startswith("sqlite:///") and \
        Path(a[len("sqlite:///"):]).resolve() == Path(b[len("sqlite:///"):]).resolve()
    if cfg.study.storage and (cfg.study.storage == uri or same(cfg.study.storage, uri or tracking.default_uri(home()))):
        raise ConfigError("--storage", "the Optuna storage must not be the MLflow database (their Alembic schema "
                          "checks clash, optuna#2866); give it its own file or database")
    return n_groups


# ------------------------------------------------------------------------------------------- setup

def home() -> Path:
    """Generated state (MLflow store, Optuna storage, caches) lives in ./mlruns, git-ignored."""
    return Path.cwd() / "mlruns"


def storage_of(cfg: config.Config, client=None) -> optuna.storages.RDBStorage:
    url = cfg.study.storage or f"sqlite:///{home() / 'optuna.db'}"
    if url.startswith("sqlite"):
        # several local workers share one file: wait for the lock instead of failing (optuna FAQ, optuna#820)
        engine = {"connect_args": {"timeout": 60}}
    else:
        engine = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S, heartbeat_stale_trial_callback=_retry_callback(client))
    except Exception as e:  # sqlalchemy OperationalError & co: say where, without the password
        raise ConnectionError(f"Optuna storage {tracking.redact(url)} is unreachable: {str(e).splitlines()[0][:300]}") from None


def _retry_callback(client):
    """A dead worker's trial: its MLflow run ends FAILED, and the same params are enqueued again."""
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)

    def callback(study, frozen):
        run_id = frozen.user_attrs.get("mlflow_run_id")
        if client is not None and run_id:
            tracking.fail_runs(client, [run_id], "worker died (stale heartbeat or dead process)")
        # the retry copies system attrs: drop the dead worker's identity and its fail reason
        clone = copy.deepcopy(frozen)
        clone.system_attrs = {k: v for k, v in frozen.system_attrs.items()
                              if not k.startswith("harness.") and k != "fail_reason"}
        retry(study, clone)

    return callback


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


def _sampler(cfg: config.Config, worker: int = 0):
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


def _pruner(cfg: config.Config):
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
        return optuna.create_study(storage=storage, study_name=cfg.study.name, sampler=_sampler(cfg, worker),
                                   pruner=_pruner(cfg), directions=directions, load_if_exists=True)
    return optuna.load_study(study_name=cfg.study.name, storage=storage, sampler=_sampler(cfg, worker),
                             pruner=_pruner(cfg))


def setup(cfg: config.Config, n_groups: int, launcher: bool, log=print, worker: int = 0) -> dict:
    """Everything a worker needs: device-resident data, pretrained weights, shift suite, MLflow ids, study.
    The launcher creates and logs; workers find the same things in the caches and stores."""
    root, device = home(), train.pick_device(cfg.study.device)
    train.setup_device(device)
    torch.manual_seed(cfg.study.seed)
    uri = cfg.study.tracking_uri or tracking.default_uri(root)
    root.mkdir(parents=True, exist_ok=True)
    client = tracking.connect(uri)  # fails fast on a dead server, before any training
    storage = storage_of(cfg, client)
    cache = root / "cache"

    t0 = time.perf_counter()
    data = datamod.load(cfg.data, cfg.study.seed, cache)
    pre_state, pre_info = None, None
    if cfg.model.weights == "pretrain":
        pre_state, pre_info = pretrain.pretrained(cfg, data, torch.device("cpu") if device.type == "cpu" else device,
                                                  cache, log=log if launcher else (lambda *_: None))
    suite, suite_info = suitemod.build(cfg.shifts, data, cache)
    data_dev = datamod.to_device(data, device)
    ctx = {"cfg": cfg, "device": device, "data": data_dev, "pretrained": pre_state, "suite": suitemod.to_device(suite, device),
           "n_groups": n_groups, "client": client, "uri": uri, "storage": storage, "setup_seconds": time.perf_counter() - t0}

    exp_id = tracking.experiment(client, cfg.study.name, root if uri.startswith("sqlite") else None)
    parent_id, created = tracking.parent_run(client, exp_id, cfg.study.name)
    ctx.update(exp_id=exp_id, parent_id=parent_id)
    study = open_study(cfg, storage, create=launcher, worker=worker)
    ctx["study"] = study
    if launcher:
        _log_study(ctx, created, pre_info, suite_info, data)
        if created or not study.trials:
            for b in trialmod.baselines(cfg, n_groups):
                study.enqueue_trial(b["params"], user_attrs={"baseline": b["name"]}, skip_if_exists=True)
        log(f"data: {len(data['train'][0])} train / {len(data['val'][0])} val / {len(data['test'][0])} test "
            f"images, {len(data['classes'])} classes; shifts: {suite_info['n_sets']} sets "
            f"({'cached' if suite_info['cached'] else 'built in %.1f s' % suite_info['seconds']}); device {device}")
    return ctx


def _log_study(ctx, created, pre_info, suite_info, data) -> None:
    cfg, client, run = ctx["cfg"], ctx["client"], ctx["parent_id"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tracking.log_text(client, run, config.to_toml(cfg), "config/resolved.toml")
    tracking.log_text(client, run, config.to_toml(cfg), f"config/invocations/{stamp}.toml")
    tracking.log_json(client, run, {"lr": {"low": cfg.search.lr[0], "high": cfg.search.lr[1], "log": True},
                                    "freeze_layers": cfg.search.freeze_layers, "unfreeze_epoch": cfg.search.unfreeze_epoch,
                                    "unfreeze_epoch_condition": "only when freeze_layers > 0; >= train.epochs means never"},
                      "search_space.json")
    versions = tracking.versions()
    tracking.log_json(client, run, versions, "versions.json")
    tags = {"harness.git_sha": tracking.git_sha(), "harness.device": str(ctx["device"]),
            "harness.sampler": cfg.study.sampler,
            "harness.pruner": "none" if cfg.study.objective == "multi" else cfg.study.pruner,  # Optuna cannot prune multi
            "harness.shifts.family": ",".join(f"{n}:{f}" for n, f in ctx["suite"]["family"].items()),
            "harness.objective": cfg.study.objective, "harness.seed": cfg.study.seed,
            "harness.n_trials_target": cfg.study.n_trials, "harness.optuna_storage": tracking.redact(cfg.study.storage or "sqlite:///mlruns/optuna.db"),
            "harness.shifts.selection": ",".join(cfg.shifts.selection), "harness.shifts.test": ",".join(cfg.shifts.test),
            "harness.shift_suite": suite_info["key"], "harness.data": data["key"],
            # sample sizes behind every accuracy: the report's confidence intervals need them
            "harness.n_test": len(data["test"][1]),
            "harness.n_shift_eval": len(ctx["suite"]["labels"].get("test", data["test"][1])),
            **{f"harness.version.{k}": v for k, v in versions.items() if k in ("torch", "optuna", "mlflow", "python")}}
    logged_pretrain = None if created else client.get_run(run).data.tags.get("harness.pretrain")
    tracking.set_tags(ctx["client"], run, tags)
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
        grid = _shift_grid(ctx)
        if grid is not None:
            tracking.log_figure(client, run, grid, "shift_examples.png")
            import matplotlib.pyplot as plt

            plt.close(grid)


def _shift_grid(ctx):
    """Rows: shifts (selection then test); columns: clean then severities. One example image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suite, cfg = ctx["suite"], ctx["cfg"]
    rows = [("selection", n) for n in suite["selection"]] + [("test", n) for n in suite["test"]]
    if not rows:
        return None
    sev = cfg.shifts.severities
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




# ------------------------------------------------------------------------------------------ workers

@contextlib.contextmanager
def _host_lock(name: str):
    """Serializes 'count, then ask' among this machine's workers so the study stops at exactly N."""
    path = home() / f".{name}.lock"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _heartbeat(storage, trial_id: int, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(Exception):  # a missed beat is retried; the grace period is 6 beats
            storage.record_heartbeat(trial_id)


def recover_dead(study: optuna.Study, client) -> int:
    """RUNNING trials whose worker process on this host is gone (kill -9, OOM, reboot): FAIL them now (not after
    the heartbeat grace period), end their MLflow runs FAILED, and enqueue the same params again."""
    host, n, callback = socket.gethostname(), 0, _retry_callback(client)
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.system_attrs.get("harness.host")
        if owner is None:  # asked, then its process died before it said who it was: give it the grace period
            if t.datetime_start is None or (now - t.datetime_start).total_seconds() < GRACE_S:
                continue
            reason = "worker died before it started the trial"
        elif owner != host:
            continue  # another machine's: failed by heartbeat (fail_stale_trials)
        else:
            pid, started = t.system_attrs.get("harness.pid"), t.system_attrs.get("harness.pid_start")
            alive = False
            with contextlib.suppress(psutil.Error, TypeError):
                alive = psutil.Process(pid).create_time() == started
            if alive:
                continue
            reason = f"worker pid {pid} on {host} died"
        try:  # the reason first: a finished trial can no longer be updated
            study._storage.set_trial_system_attr(t._trial_id, "fail_reason", reason)
            if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                callback(study, study._storage.get_trial(t._trial_id))
                n += 1
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process finished or failed it in between
    return n


def sweep_orphans(ctx: dict) -> int:
    """Child runs left RUNNING whose trial is not running any more (the process died between two writes): end
    each with the status its trial has in Optuna, so no run stays RUNNING after a resume."""
    # runs first, then states: a trial that starts in between has a state (RUNNING) and is left alone
    running = tracking.running_children(ctx["client"], ctx["exp_id"], ctx["parent_id"])
    state = {t.number: t.state for t in ctx["study"].get_trials(deepcopy=False)}
    status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}
    n = 0
    for number, run_id in running.items():
        if number in state and state[number] != TrialState.RUNNING:
            tracking.end_run(ctx["client"], run_id, status.get(state.get(number), "FAILED"),
                             {"harness.fail_reason": "worker died before the trial finished"}
                             if state.get(number) not in status else None)
            n += 1
    return n


def work(ctx: dict, worker: int = 0, log=print) -> dict:
    """Run trials until the study has n_trials finished ones (shared by all workers), the timeout, or too many
    failures in a row. Returns counts for this worker."""
    cfg, study, client = ctx["cfg"], ctx["study"], ctx["client"]
    storage, target, t0 = study._storage, cfg.study.n_trials, time.perf_counter()
    me = psutil.Process()
    done = {"complete": 0, "pruned": 0, "failed": 0, "stopped": "target"}
    fails_in_row = 0
    prefix = f"[w{worker}] " if cfg.study.workers > 1 else ""
    ctx["progress"] = _progress(ctx, prefix, log)
    ctx["on_complete"] = _save_if_best
    while True:
        if cfg.study.timeout and time.perf_counter() - t0 > cfg.study.timeout:
            log(f"{prefix}timeout of {cfg.study.timeout:.0f} s reached; not starting more trials")
            done["stopped"] = "timeout"
            break
        if fails_in_row >= max(3, target):
            log(f"{prefix}{fails_in_row} trials failed in a row; stopping (see the fail reasons above)")
            done["stopped"] = "failures"
            break
        with _host_lock(cfg.study.name):
            recover_dead(study, client)
            optuna.storages.fail_stale_trials(study)  # other machines' dead workers, by heartbeat
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if finished >= target:
                break
            if finished + running >= target:
                trial = None  # others are finishing the last trials; wait in case one fails
            else:
                trial = study.ask()
                # a first beat at once: Optuna never calls a trial stale before its first heartbeat, so a worker
                # dying in its first HEARTBEAT_S seconds would leave a RUNNING trial forever
                storage.record_heartbeat(trial._trial_id)
                for k, v in (("harness.host", socket.gethostname()), ("harness.pid", me.pid),
                             ("harness.pid_start", me.create_time()), ("harness.worker", worker)):
                    storage.set_trial_system_attr(trial._trial_id, k, v)
        if trial is None:
            time.sleep(1.0)
            continue
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(storage, trial._trial_id, stop), daemon=True)
        beat.start()
        try:
            value = trialmod.objective(trial, ctx)
            study.tell(trial, value)
            done["complete"] += 1
            fails_in_row = 0
        except optuna.TrialPruned as e:
            study.tell(trial, state=TrialState.PRUNED)
            done["pruned"] += 1
            fails_in_row = 0
            log(f"{prefix}trial {trial.number} {e}")
        except Exception as e:  # one trial's failure never stops the study
            study.tell(trial, state=TrialState.FAIL)
            done["failed"] += 1
            fails_in_row += 1
            log(f"{prefix}trial {trial.number} FAILED: {type(e).__name__}: {e}")
        finally:
            stop.set()
            beat.join()
        if trial.user_attrs.get("baseline") == "linear_probe" and done["complete"]:  # the CE reference exists now
            _backfill(ctx, log)
    return done


def _backfill(ctx: dict, log=print) -> None:
    try:
        trialmod.backfill_corruption_errors(ctx["study"], ctx["client"], ctx["cfg"].shifts.test)
    except Exception as e:  # a missing CE is worth a line, never a finished study
        log(f"warning: corruption errors not backfilled ({type(e).__name__}: {e})")


def _progress(ctx, prefix, log):
    cfg, study = ctx["cfg"], ctx["study"]
    tty = sys.stdout.isatty() and cfg.study.workers == 1  # workers share the terminal: plain lines

    def show(number, epoch, loss, val_acc):
        if epoch == 0:  # read the storage once a trial, not every epoch (each read is a query, ~10 ms on sqlite)
            show.finished = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
            show.best = _best_value(study)
        best = getattr(show, "best", None)
        best_txt = f"  best so far {best:.4f}" if best is not None else ""
        line = (f"{prefix}trial {number} ({getattr(show, 'finished', 0) + 1} of {cfg.study.n_trials})  epoch "
                f"{epoch + 1}/{cfg.train.epochs}  train_loss {loss:.4f}  val_acc {val_acc:.4f}{best_txt}")
        if tty:  # one line per trial, updated in place
            end = "\n" if epoch + 1 == cfg.train.epochs else ""
            sys.stdout.write("\r\033[K" + line + end)
            sys.stdout.flush()
        else:
            log(line)

    return show


def _best_value(study):
    vals = [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    return max(vals) if vals else None


def _save_if_best(trial, value, model, run_id):
    """The best trial's weights as a safetensors artifact on its run (only when it beats every finished trial)."""
    ctx = _save_if_best.ctx
    score = value[0] if isinstance(value, tuple) else value
    best = _best_value(ctx["study"])
    if best is not None and score <= best:
        return
    from safetensors.torch import save

    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    tracking.log_bytes(ctx["client"], run_id, save(state), "model/weights.safetensors")
    tracking.set_tags(ctx["client"], ctx["parent_id"], {"harness.best_trial": trial.number, "harness.best_run_id": run_id})


def _worker_main(cfg, n_groups, worker):
    """Entry point of a spawned worker process: rebuild the context from caches, run trials."""
    ctx = setup(cfg, n_groups, launcher=False, worker=worker)
    _save_if_best.ctx = ctx
    work(ctx, worker)


# -------------------------------------------------------------------------------------------- main

def summary(ctx: dict, wall: float, log=print) -> None:
    cfg, study = ctx["cfg"], ctx["study"]
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
        log(f"{t.number:>5} {t.user_attrs.get('baseline', ''):<13} {t.params['lr']:>9.2e} {t.params['freeze_layers']:>6} "
            f"{('never' if e >= cfg.train.epochs else e) if t.params['freeze_layers'] else '-':>8} "
            f"{', '.join(f'{v:.4f}' for v in t.values):>12} {t.user_attrs.get('id_acc', float('nan')):>7.4f} "
            f"{t.user_attrs.get('ood_acc_mean', float('nan')):>7.4f}")
    uri = ctx["uri"]
    log("\nopen the MLflow UI on this store:\n"
        f"  python -m harness.ui --tracking-uri {uri}\n  (or: mlflow ui --backend-store-uri {uri})\n"
        f"rebuild the report:\n  python -m harness.report --study-name {cfg.study.name} --tracking-uri {uri}"
        + (f" --storage {tracking.redact(cfg.study.storage)}" if cfg.study.storage else ""))


def run(cfg: config.Config, n_groups: int, log=print) -> int:
    t0 = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = setup(cfg, n_groups, launcher=True, log=log)
    _save_if_best.ctx = ctx
    n_dead = recover_dead(ctx["study"], ctx["client"])
    n_orphans = sweep_orphans(ctx)
    if n_dead or n_orphans:
        log(f"resume: {n_dead} trial(s) of dead workers failed and re-queued with the same params; "
            f"{n_orphans} orphan MLflow run(s) ended FAILED")
    timed_out = False
    if cfg.study.workers > 1:
        import multiprocessing as mp

        ctx.update(data=None, suite=None)  # the workers load their own: no idle copy on the GPU meanwhile
        if ctx["device"].type == "cuda":
            torch.cuda.empty_cache()
        spawn = mp.get_context("spawn")  # fresh interpreters: no forked torch threads or sqlite handles
        procs = [spawn.Process(target=_worker_main, args=(cfg, n_groups, i)) for i in range(cfg.study.workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        crashed = [f"worker {i} (exit code {p.exitcode})" for i, p in enumerate(procs) if p.exitcode]
        if crashed:
            log(f"warning: {', '.join(crashed)} ended abnormally; their trials are failed and re-queued")
        recover_dead(ctx["study"], ctx["client"])
        sweep_orphans(ctx)
        timed_out = bool(cfg.study.timeout) and time.perf_counter() - t0 > cfg.study.timeout
    else:
        timed_out = work(ctx, 0, log)["stopped"] == "timeout"
    _backfill(ctx, log)  # trials that finished before the linear probe, e.g. in another worker or run
    _tag_best(ctx)
    finished = sum(t.state in FINISHED for t in ctx["study"].get_trials(deepcopy=False))
    short = finished < cfg.study.n_trials and not timed_out
    tracking.end_run(ctx["client"], ctx["parent_id"], "FAILED" if short else "FINISHED")
    summary(ctx, time.perf_counter() - t0, log)
    if cfg.study.report:
        _report(cfg, ctx["uri"], log)
    if short:
        print(f"error: the study stopped at {finished} of {cfg.study.n_trials} finished trials (see the failures "
              f"above); re-run the same command to continue it", file=sys.stderr)
        return 1
    return 0


def _tag_best(ctx: dict) -> None:
    """The parent's best-trial tags, from the storage: with workers two trials may finish at once and the last to
    write its tag need not be the better one. The best's weights are on its run: no finished trial beat it when it
    completed. Ties go to the earliest completed (the one that uploaded)."""
    done = [t for t in ctx["study"].get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and "mlflow_run_id" in t.user_attrs]
    if done:
        best = min(done, key=lambda t: (-t.values[0], t.datetime_complete))
        tracking.set_tags(ctx["client"], ctx["parent_id"], {"harness.best_trial": best.number,
                                                            "harness.best_run_id": best.user_attrs["mlflow_run_id"]})


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args)
        n_groups = preflight(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if tracking.existing_role(cfg.study.tracking_uri or tracking.default_uri(home()), cfg.study.name) == "sustain":
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

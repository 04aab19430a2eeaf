"""One Optuna trial: sample how to fine-tune, fine-tune for real, report per epoch, evaluate on every shift."""

from __future__ import annotations

import dataclasses
import gc
import math
import resource
import time
import warnings

import optuna
import psutil
import torch

from harness import metrics, models, prefix, records, schema, shifts, store, tracking, train
from harness.config import Config, Model


def suggest(trial: optuna.Trial, cfg: Config, n_groups: int) -> dict:
    """The conditional space from [search]. With more than one search.strategy, `strategy` is a categorical and
    each strategy's parameters exist only for it: prefix -> freeze_layers, and unfreeze_epoch only when some groups
    are frozen; surgical -> tune_group (0..n_groups-1), tune_head; gradual -> gradual_every. Baselines are prefix
    trials whatever the strategies. A prefix-only study (the default) samples and returns what it always did."""
    q = cfg.search
    with warnings.catch_warnings():  # enqueued baselines may sit outside the bounds on purpose (e.g. never)
        warnings.simplefilter("ignore", UserWarning)
        lr = trial.suggest_float("lr", q.lr[0], q.lr[1], log=True)
        if trial.user_attrs.get("baseline") or q.strategy == ["prefix"]:
            strategy = "prefix"
        elif len(q.strategy) == 1:
            strategy = q.strategy[0]
        else:
            strategy = trial.suggest_categorical("strategy", q.strategy)
        named = {} if q.strategy == ["prefix"] else {"strategy": strategy}
        if strategy == "surgical":
            return {"lr": lr, **named, "tune_group": trial.suggest_int("tune_group", 0, n_groups - 1),
                    "tune_head": trial.suggest_categorical("tune_head", q.tune_head)}
        if strategy == "gradual":
            return {"lr": lr, **named,
                    "gradual_every": trial.suggest_int("gradual_every", q.gradual_every[0], q.gradual_every[1])}
        k = trial.suggest_int("freeze_layers", q.freeze_layers[0], q.freeze_layers[1])
        e = trial.suggest_int("unfreeze_epoch", q.unfreeze_epoch[0], q.unfreeze_epoch[1]) if k > 0 else 0
    return {"lr": lr, **named, "freeze_layers": min(k, n_groups), "unfreeze_epoch": e}


def recipe_settings(p: dict) -> dict:
    """A trial's params as train.Recipe fields (strategy and its own parameters; prefix when none is named)."""
    strategy = p.get("strategy", "prefix")
    if strategy == "surgical":
        return {"strategy": strategy, "tune_group": p["tune_group"], "tune_head": bool(p["tune_head"])}
    if strategy == "gradual":
        return {"strategy": strategy, "gradual_every": p["gradual_every"]}
    return {"strategy": "prefix", "freeze_layers": p["freeze_layers"], "unfreeze_epoch": p["unfreeze_epoch"]}


def first_prune(warmup: int, p: dict, epochs: int, n_groups: int) -> int:
    """prune_from for any strategy: prefix as prune_from; surgical trains the same groups throughout (warm-up only);
    gradual waits one epoch after its last unfreezing (n_groups * gradual_every), if that happens before the end."""
    strategy = p.get("strategy", "prefix")
    if strategy == "surgical":
        return warmup
    if strategy == "gradual":
        last = n_groups * p["gradual_every"]
        return max(warmup, last + 1 if last < epochs else 0)
    return prune_from(warmup, p["freeze_layers"], p["unfreeze_epoch"], epochs)


def baselines(cfg: Config, n_groups: int) -> list[dict]:
    """Full fine-tuning, linear probe, LP-FT (Kumar et al. 2022), all at the geometric middle of the lr range."""
    lr = math.sqrt(cfg.search.lr[0] * cfg.search.lr[1])
    epochs = cfg.train.epochs
    return [
        {"name": "full_ft", "params": {"lr": lr, "freeze_layers": 0}},
        {"name": "linear_probe", "params": {"lr": lr, "freeze_layers": n_groups, "unfreeze_epoch": epochs}},
        {"name": "lp_ft", "params": {"lr": lr, "freeze_layers": n_groups, "unfreeze_epoch": max(1, epochs // 2)}},
    ]


def surgical_sweep(cfg: Config, n_groups: int) -> list[dict]:
    """search.surgical_sweep: one trial per group, that group alone (head frozen), at the baselines' lr; Lee et al.
    2023's question of which block to tune. Enqueued after the baselines; [] when the key is off."""
    if not cfg.search.surgical_sweep:
        return []
    lr = math.sqrt(cfg.search.lr[0] * cfg.search.lr[1])
    named = {"strategy": "surgical"} if len(cfg.search.strategy) > 1 else {}
    return [{"lr": lr, **named, "tune_group": j, "tune_head": False} for j in range(n_groups)]


def prune_from(warmup: int, k: int, e: int, epochs: int) -> int:
    """How many epochs a trial runs before it may be pruned: prune_warmup, and for a trial that unfreezes at epoch e,
    e + 1 (one epoch with every group training): a frozen model looks worse early and must not be killed for it.
    The linear probe (never unfrozen) only waits the warm-up."""
    return max(warmup, e + 1 if 0 < k and e < epochs else 0)


def fresh_model(model_cfg: Model, num_classes: int, pretrained: dict | None, device, seed: int,
                compile: bool = False):
    """(model, groups): the pretrained model with a fresh head for the target classes (head init seeded by `seed`),
    on the device. `pretrained` is the source-task pretraining's body state; None loads model_cfg.weights."""
    model, groups = models.build(model_cfg.name, num_classes, seed=seed)
    if pretrained is not None:
        models.load_weights(model, groups, pretrained)
    else:
        models.initial_weights(model_cfg.name, model_cfg.weights, model, groups)
    return train.prepare(model, device, compile=compile), groups


def selection_metrics(model, suite: dict, val_y, batch_size, device) -> dict:
    """Accuracy on the selection shifts of the validation split: the only part of the suite model selection reads
    (suite["selection"] and its labels), so no held-out test shift can steer it."""
    sel, y = suite["selection"], suite["labels"].get("selection", val_y)
    accs = {name: {s: metrics.accuracy(train.predict(model, x, batch_size, device), y) for s, x in sev.items()}
            for name, sev in sel.items()}
    flat = [a for sev in accs.values() for a in sev.values()]
    return {"ood_val_acc": sum(flat) / len(flat) if flat else float("nan"), "per_shift": accs}


def test_metrics(model, suite: dict, data: dict, batch_size, device) -> tuple[dict, dict]:
    """Held-out evaluation: clean test set and every test shift. Returns (final metrics, per-shift curves)."""
    x, y = data["test"]
    final = {f"id_{k}": v for k, v in metrics.summarize(train.predict(model, x, batch_size, device), y).items()}
    y = suite.get("labels", {}).get("test", y)  # shifted sets hold a fixed subset of the test split
    curves = {}  # name -> {severity: {acc, ece, nll}}
    for name, sev in suite.get("test", {}).items():
        curves[name] = {s: metrics.summarize(train.predict(model, xs, batch_size, device), y) for s, xs in sev.items()}
    for name, sev in suite.get("files", {}).items():  # real corruption files (shifts.files): own labels per severity
        curves[name] = {s: metrics.summarize(train.predict(model, xs, batch_size, device), ys) for s, (xs, ys) in sev.items()}
    for name, (xs, ys) in suite.get("test_sets", {}).items():  # label / subpopulation shifts: own labels
        logits = train.predict(model, xs, batch_size, device)
        curves[name] = {1: metrics.summarize(logits, ys)}
    if curves:
        means = {n: sum(c["acc"] for c in cv.values()) / len(cv) for n, cv in curves.items()}
        final[schema.OOD_ACC_MEAN] = sum(means.values()) / len(means)
        final[schema.OOD_ACC_WORST] = min(means.values())  # the worst shift, each averaged over its severities
        for key in ("ece", "nll"):
            vals = [c[key] for cv in curves.values() for c in cv.values()]
            final[f"ood_{key}_mean"] = sum(vals) / len(vals)
        families = {}
        for n, m in means.items():
            families.setdefault(suite.get("family", {}).get(n, n), []).append(m)
        final.update({schema.family_key(f): sum(v) / len(v) for f, v in families.items()})
    return final, curves


def label_shift_metrics(model, suite: dict, data: dict, batch_size, device, val_logits=None) -> dict:
    """Label shift (Lipton et al. 2018): balanced accuracy on the prior-shifted test set, and how well black-box
    shift estimation recovers its class priors from the clean validation confusion matrix."""
    if "label_shift" not in suite.get("test_sets", {}):
        return {}
    xs, ys = suite["test_sets"]["label_shift"]
    k = len(data["classes"])
    vx, vy = data["val"]
    if val_logits is None:  # the trial passes its last epoch's validation logits: same model, same images
        val_logits = train.predict(model, vx, batch_size, device)
    conf = metrics.confusion(val_logits.argmax(1), vy, k)
    logits = train.predict(model, xs, batch_size, device)
    source_prior = torch.bincount(vy.cpu(), minlength=k).double() / len(vy)
    est = metrics.bbse_prior(conf, logits.argmax(1), source_prior)
    true = suite["priors"]["label_shift"].double().cpu()
    # BBSE correction: reweight the posteriors by w = q/p, then take the argmax
    w = (est / source_prior.clamp_min(1e-12)).float().to(logits.device)
    corrected = (logits.softmax(1) * w).argmax(1)
    return {"label_shift/balanced_acc": metrics.balanced_accuracy(logits, ys, k),
            "label_shift/acc_bbse_corrected": (corrected == ys).float().mean().item(),
            "label_shift/prior_l1_error": (est - true).abs().sum().item(),
            "label_shift/w_sq_error": ((est - true) / source_prior.clamp_min(1e-12)).pow(2).sum().item(),
            "priors": {"true": true.tolist(), "bbse": est.tolist()}}  # logged per class (step = class index)


def corruption_errors(id_acc: float, curves: dict, reference: dict | None) -> dict:
    """CE and relative CE per test shift (Hendrycks & Dietterich 2019), normalized by the study's linear-probe
    baseline instead of AlexNet: CE_c = sum_s E_s,c / sum_s E_lp_s,c; rCE_c subtracts each model's clean error.
    reference = {"id_acc": ..., "shift_acc": {name: {sev: acc}}} of the linear probe; None until it finished."""
    if not reference:
        return {}
    out, ces, rces = {}, [], []
    for name, cv in curves.items():
        ref = reference["shift_acc"].get(name)
        if not ref or set(map(str, cv)) != set(ref):
            continue
        err = sum(1 - c["acc"] for c in cv.values())
        ref_err = sum(1 - a for a in ref.values())
        rel = sum((1 - c["acc"]) - (1 - id_acc) for c in cv.values())
        ref_rel = sum((1 - a) - (1 - reference["id_acc"]) for a in ref.values())
        if ref_err > 0:
            out[schema.shift_key(name, "ce")] = err / ref_err
            ces.append(out[schema.shift_key(name, "ce")])
        if abs(ref_rel) > 1e-9:
            out[schema.shift_key(name, "rce")] = rel / ref_rel
            rces.append(out[schema.shift_key(name, "rce")])
    if ces:
        out["mce"] = sum(ces) / len(ces)
    if rces:
        out["relative_mce"] = sum(rces) / len(rces)
    # CIFAR-10-C's mCE proper: over its 15 benchmark corruptions, only when every one of them is a test shift
    # (and the same over the real files' c10c.<corruption> sets when shifts.files holds all 15)
    for prefix, suffix in (("", ""), ("c10c.", "_files")):
        for key, name in (("ce", "mce_benchmark"), ("rce", "relative_mce_benchmark")):
            vals = [out.get(schema.shift_key(prefix + c, key)) for c in shifts.BENCHMARK]
            if all(v is not None for v in vals):
                out[name + suffix] = sum(vals) / len(vals)
    return out


def _linear_probe_reference(trials) -> dict | None:
    for t in trials:
        if t.user_attrs.get("baseline") == "linear_probe" and "shift_acc" in t.user_attrs:
            return {"id_acc": t.user_attrs["id_acc"], "shift_acc": t.user_attrs["shift_acc"]}
    return None


def backfill_corruption_errors(study: optuna.Study, client, corruptions: list[str]) -> int:
    """CE needs the linear probe's errors, so trials that finished before it (full FT is trial 0; with --workers any
    trial may) got none. Once the linear probe has completed, log CE/mCE on their runs too. Returns how many."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ref = _linear_probe_reference(done)
    if ref is None:
        return 0
    n = 0
    for t in done:
        run_id = t.user_attrs.get("mlflow_run_id")
        if t.user_attrs.get("ce_logged") or "shift_acc" not in t.user_attrs or not run_id:
            continue
        if "mce" in client.get_run(run_id).data.metrics:  # an earlier backfill did it
            continue
        curves = {name: {sev: {"acc": a} for sev, a in accs.items()}
                  for name, accs in t.user_attrs["shift_acc"].items() if name in corruptions}
        ce = corruption_errors(t.user_attrs["id_acc"], curves, ref)
        if ce:
            tracking.log_metrics(client, run_id, ce)
            n += 1
    return n


@dataclasses.dataclass
class Progress:
    """What the training of one trial has reached: the failure and pruning tags name the epoch."""
    epoch: int = -1
    val: dict | None = None  # the last epoch's validation: acc, loss, logits (reused by BBSE)
    view: prefix.View | None = None  # the model seen through the prefix cache: what validation and evaluation run
    train_seconds: float = 0.0


def train_trial(trial: optuna.Trial, ctx, p: dict, run_id: str, at: Progress, progress=None):
    """Fine-tune the trial's model: per epoch, validate, log, show progress, report and maybe prune. Returns
    (model, groups) after the last epoch; raises optuna.TrialPruned or FloatingPointError (a diverged loss)."""
    cfg, device, t = ctx.cfg, ctx.device, ctx.cfg.train
    t0 = time.perf_counter()
    model, groups = fresh_model(cfg.model, len(ctx.data["classes"]), ctx.pretrained, device, cfg.study.seed,
                                compile=t.compile)
    recipe = train.Recipe(lr=p["lr"], epochs=t.epochs, batch_size=t.batch_size, optimizer=t.optimizer,
                          momentum=t.momentum, weight_decay=t.weight_decay, schedule=t.schedule, augment=t.augment,
                          **recipe_settings(p))
    prune_at = first_prune(cfg.study.prune_warmup, p, t.epochs, len(groups) - 1)
    # Every trial sees the same head init and batch order (the study seed): differences between trials come from
    # the hyperparameters alone, and a re-run reproduces the same curve on CPU.
    at.view = prefix.for_trial(ctx, model, groups)  # frozen groups' outputs computed once per worker, not per epoch
    for epoch, loss, frozen, lr in train.fit(model, groups, *ctx.data["train"], recipe, cfg.study.seed, device,
                                             at.view):
        at.epoch = epoch
        at.val = train.evaluate(at.view, *ctx.data["val"], t.eval_batch_size, device)
        # async: off the training loop (bench (b)); rss_mb after each epoch, pruned trials too: it must not grow
        # across trials (optuna#1224)
        tracking.log_metrics(ctx.client, run_id, {"train_loss": loss, "val_acc": at.val["acc"],
                                                  "val_loss": at.val["loss"], "frozen_layers": frozen,
                                                  "rss_mb": psutil.Process().memory_info().rss / 2**20, "lr": lr},
                             step=epoch, wait=False)
        if progress is not None:
            progress(trial.number, epoch, loss, at.val["acc"])
        if cfg.study.objective != "multi":  # Optuna cannot prune multi-objective studies
            trial.report(at.val["acc"], epoch)
            if epoch + 1 >= prune_at and epoch + 1 < t.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: val_acc {at.val['acc']:.4f} below the median")
    at.train_seconds = time.perf_counter() - t0
    return model, groups


def evaluate_trial(model, ctx, val: dict, baseline: str, study: optuna.Study) -> tuple[dict, dict, dict]:
    """Selection shifts, the clean test split, every test shift, label shift and corruption errors.
    Returns (final metrics, series {key: {step: value}}, the selection metrics)."""
    device, bs, suite, data = ctx.device, ctx.cfg.train.eval_batch_size, ctx.suite, ctx.data
    t1 = time.perf_counter()
    sel = selection_metrics(model, suite, data["val"][1], bs, device)
    final, curves = test_metrics(model, suite, data, bs, device)
    label = label_shift_metrics(model, suite, data, bs, device, val["logits"])
    priors = label.pop("priors", None)
    final.update(label)
    shift_acc = {n: {str(s): c["acc"] for s, c in cv.items()} for n, cv in curves.items()}
    own = {"id_acc": final["id_acc"], "shift_acc": shift_acc}
    ref = own if baseline == "linear_probe" else _linear_probe_reference(
        study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    corrupted = set(suite["test"]) | set(suite.get("files", {}))
    final.update(corruption_errors(final["id_acc"], {n: cv for n, cv in curves.items() if n in corrupted}, ref))
    final.update(val_acc_final=val["acc"], eval_seconds=time.perf_counter() - t1,
                 peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if device.type == "cuda":
        final["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if sel["per_shift"]:
        final["ood_val_acc"] = sel["ood_val_acc"]
    series = {schema.shift_key(name, "acc"): sev for name, sev in sel["per_shift"].items()}  # step = severity
    series.update({schema.shift_key(name, key): {s: c[key] for s, c in cv.items()}
                   for name, cv in curves.items() for key in ("acc", "ece", "nll")})
    series.update({f"label_shift/prior_{key}": dict(enumerate(prior)) for key, prior in (priors or {}).items()})
    return final, series, {**sel, "shift_acc": shift_acc}


def log_trial(trial: optuna.Trial, ctx, run_id: str, final: dict, series: dict, sel: dict):
    """Final metrics and series on the trial's run, what later trials need in its user attrs; returns the
    objective value: val_acc, ood_val_acc, or both (multi), all from validation data."""
    tracking.log_metrics(ctx.client, run_id, final, series=series)
    trial.set_user_attr(schema.ID_ACC, final[schema.ID_ACC])
    trial.set_user_attr("ce_logged", "mce" in final or "relative_mce" in final)
    if schema.OOD_ACC_MEAN in final:
        trial.set_user_attr(schema.OOD_ACC_MEAN, final[schema.OOD_ACC_MEAN])
    trial.set_user_attr("shift_acc", sel["shift_acc"])
    objective = ctx.cfg.study.objective
    if objective == "multi":
        return final[schema.VAL_ACC_FINAL], sel["ood_val_acc"]
    return sel["ood_val_acc"] if objective == "ood_val_acc" else final[schema.VAL_ACC_FINAL]


def objective(trial: optuna.Trial, ctx, progress=None, on_complete=None):
    """One trial: train, evaluate, log, on its own MLflow child run, which ends FINISHED, KILLED (pruned) or FAILED
    with the reason. on_complete(trial, value, model, run_id) runs before the run ends (the study keeps the best
    weights)."""
    cfg, client = ctx.cfg, ctx.client
    p = suggest(trial, cfg, ctx.n_groups)
    baseline = trial.user_attrs.get("baseline", "")
    run_id = tracking.child_run(client, ctx.exp_id, ctx.parent_id, cfg.study.name, trial.number, p,
                                {"harness.baseline": baseline} if baseline else {})
    trial.set_user_attr("mlflow_run_id", run_id)
    sampler = records.start(ctx, run_id, p, baseline)  # description, dataset inputs, system metrics
    at, model, groups = Progress(), None, None
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)  # gpu_peak_mb is this trial's peak, not the process's
    try:
        model, groups = train_trial(trial, ctx, p, run_id, at, progress)
        final, series, sel = evaluate_trial(at.view, ctx, at.val, baseline, trial.study)
        final["train_seconds"] = at.train_seconds
        value = log_trial(trial, ctx, run_id, final, series, sel)
        if on_complete is not None:
            on_complete(trial, value, model, run_id)
        records.stop(sampler)
        tracking.end_run(client, run_id, "FINISHED")
        return value
    except optuna.TrialPruned as err:
        trial.set_user_attr("pruned_epoch", at.epoch)
        tracking.end_run(client, run_id, "KILLED", {"harness.pruned_epoch": at.epoch,
                                                    "harness.pruned_reason": str(err)})
        raise
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        trial.set_user_attr("fail_reason", store.redact(reason))
        tracking.end_run(client, run_id, "FAILED", {"harness.fail_reason": reason, "harness.failed_epoch": at.epoch})
        raise
    finally:
        records.stop(sampler)  # no-op when already stopped
        # free this trial's model now: memory must not grow across trials (optuna#1224)
        model = groups = at.view = None  # groups and the view hold the modules too
        gc.collect()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()

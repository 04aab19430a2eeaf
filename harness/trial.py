"""One Optuna trial: sample how to fine-tune, fine-tune for real, report per epoch, evaluate on every shift."""

from __future__ import annotations

import gc
import math
import resource
import time
import warnings

import optuna
import psutil
import torch

from harness import metrics, models, tracking, train
from harness.config import Config


def suggest(trial: optuna.Trial, cfg: Config, n_groups: int) -> dict:
    """The conditional space from [search]: unfreeze_epoch exists only when some groups are frozen."""
    q = cfg.search
    with warnings.catch_warnings():  # enqueued baselines may sit outside the bounds on purpose (e.g. never)
        warnings.simplefilter("ignore", UserWarning)
        lr = trial.suggest_float("lr", q.lr[0], q.lr[1], log=True)
        k = trial.suggest_int("freeze_layers", q.freeze_layers[0], q.freeze_layers[1])
        e = trial.suggest_int("unfreeze_epoch", q.unfreeze_epoch[0], q.unfreeze_epoch[1]) if k > 0 else 0
    return {"lr": lr, "freeze_layers": min(k, n_groups), "unfreeze_epoch": e}


def baselines(cfg: Config, n_groups: int) -> list[dict]:
    """Full fine-tuning, linear probe, LP-FT (Kumar et al. 2022), all at the geometric middle of the lr range."""
    lr = math.sqrt(cfg.search.lr[0] * cfg.search.lr[1])
    epochs = cfg.train.epochs
    return [
        {"name": "full_ft", "params": {"lr": lr, "freeze_layers": 0}},
        {"name": "linear_probe", "params": {"lr": lr, "freeze_layers": n_groups, "unfreeze_epoch": epochs}},
        {"name": "lp_ft", "params": {"lr": lr, "freeze_layers": n_groups, "unfreeze_epoch": max(1, epochs // 2)}},
    ]


def prune_from(warmup: int, k: int, e: int, epochs: int) -> int:
    """How many epochs a trial runs before it may be pruned: prune_warmup, and for a trial that unfreezes at epoch e,
    e + 1 (one epoch with every group training): a frozen model looks worse early and must not be killed for it.
    The linear probe (never unfrozen) only waits the warm-up."""
    return max(warmup, e + 1 if 0 < k and e < epochs else 0)


def fresh_model(ctx: dict):
    """The pretrained model with a fresh head for the target classes, on the device."""
    cfg = ctx["cfg"]
    model, groups = models.build(cfg.model.name, len(ctx["data"]["classes"]), seed=cfg.study.seed)
    if ctx.get("pretrained") is not None:
        models.load_weights(model, groups, ctx["pretrained"])
    else:
        models.initial_weights(cfg.model.name, cfg.model.weights, model, groups)
    return train.prepare(model, ctx["device"], compile=cfg.train.compile), groups


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
    for name, (xs, ys) in suite.get("test_sets", {}).items():  # label / subpopulation shifts: own labels
        logits = train.predict(model, xs, batch_size, device)
        curves[name] = {1: metrics.summarize(logits, ys)}
    if curves:
        means = {n: sum(c["acc"] for c in cv.values()) / len(cv) for n, cv in curves.items()}
        final["ood_acc_mean"] = sum(means.values()) / len(means)
        final["ood_acc_worst"] = min(means.values())  # the worst shift, each averaged over its severities
        for key in ("ece", "nll"):
            vals = [c[key] for cv in curves.values() for c in cv.values()]
            final[f"ood_{key}_mean"] = sum(vals) / len(vals)
        families = {}
        for n, m in means.items():
            families.setdefault(suite.get("family", {}).get(n, n), []).append(m)
        final.update({f"ood_acc/{f}": sum(v) / len(v) for f, v in families.items()})
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
            out[f"shift/{name}/ce"] = err / ref_err
            ces.append(out[f"shift/{name}/ce"])
        if abs(ref_rel) > 1e-9:
            out[f"shift/{name}/rce"] = rel / ref_rel
            rces.append(out[f"shift/{name}/rce"])
    if ces:
        out["mce"] = sum(ces) / len(ces)
    if rces:
        out["relative_mce"] = sum(rces) / len(rces)
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


def objective(trial: optuna.Trial, ctx: dict):
    cfg, device, data, client = ctx["cfg"], ctx["device"], ctx["data"], ctx["client"]
    t = cfg.train
    p = suggest(trial, cfg, ctx["n_groups"])
    k, e = p["freeze_layers"], p["unfreeze_epoch"]
    baseline = trial.user_attrs.get("baseline", "")
    run_id = tracking.child_run(client, ctx["exp_id"], ctx["parent_id"], cfg.study.name, trial.number, p,
                                {"harness.baseline": baseline} if baseline else {})
    trial.set_user_attr("mlflow_run_id", run_id)
    progress = ctx.get("progress", lambda *a: None)
    epoch, t0 = -1, time.perf_counter()
    model = groups = opt = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # gpu_peak_mb is this trial's peak, not the process's
    try:
        model, groups = fresh_model(ctx)
        opt = train.make_optimizer(model, t.optimizer, p["lr"], t.momentum, t.weight_decay)
        # Every trial sees the same head init and batch order (the study seed): differences between
        # trials come from the hyperparameters alone, and a re-run reproduces the same curve on CPU.
        gen = torch.Generator().manual_seed(cfg.study.seed)
        x, y = data["train"]
        total, step = t.epochs * -(-len(x) // t.batch_size), 0
        first_prune = prune_from(cfg.study.prune_warmup, k, e, t.epochs)
        for epoch in range(t.epochs):
            frozen = k if epoch < e else 0
            loss, step = train.train_one_epoch(model, groups, frozen, opt, x, y, t.batch_size, gen, step, total,
                                               p["lr"], t.schedule, device)
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite train_loss ({loss}) at epoch {epoch}")
            val = train.evaluate(model, *data["val"], t.eval_batch_size, device)
            tracking.log_metrics(client, run_id, {"train_loss": loss, "val_acc": val["acc"], "val_loss": val["loss"],
                                                  "frozen_layers": frozen,
                                                  # process memory after each epoch, pruned trials too: it must
                                                  # not grow across trials (optuna#1224)
                                                  "rss_mb": psutil.Process().memory_info().rss / 2**20,
                                                  "lr": train.lr_at(step, total, p["lr"], t.schedule)}, step=epoch,
                                 wait=False)  # async: off the training loop (bench (b))
            progress(trial.number, epoch, loss, val["acc"])
            if cfg.study.objective != "multi":  # Optuna cannot prune multi-objective studies
                trial.report(val["acc"], epoch)
                if epoch + 1 >= first_prune and epoch + 1 < t.epochs and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}: val_acc {val['acc']:.4f} below the median")
        train_seconds = time.perf_counter() - t0

        t1 = time.perf_counter()
        sel = selection_metrics(model, ctx["suite"], data["val"][1], t.eval_batch_size, device)
        final, curves = test_metrics(model, ctx["suite"], data, t.eval_batch_size, device)
        label = label_shift_metrics(model, ctx["suite"], data, t.eval_batch_size, device, val["logits"])
        priors = label.pop("priors", None)
        final.update(label)
        shift_acc = {n: {str(s): c["acc"] for s, c in cv.items()} for n, cv in curves.items()}
        own = {"id_acc": final["id_acc"], "shift_acc": shift_acc}
        ref = own if baseline == "linear_probe" else _linear_probe_reference(
            trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        ce = corruption_errors(final["id_acc"], {n: cv for n, cv in curves.items() if n in ctx["suite"]["test"]}, ref)
        final.update(ce)
        final.update(val_acc_final=val["acc"], train_seconds=train_seconds, eval_seconds=time.perf_counter() - t1,
                     peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        if device.type == "cuda":
            final["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if sel["per_shift"]:
            final["ood_val_acc"] = sel["ood_val_acc"]
        series = {f"shift/{name}/acc": sev for name, sev in sel["per_shift"].items()}  # step = severity
        series.update({f"shift/{name}/{key}": {s: c[key] for s, c in cv.items()}
                       for name, cv in curves.items() for key in ("acc", "ece", "nll")})
        series.update({f"label_shift/prior_{key}": dict(enumerate(prior)) for key, prior in (priors or {}).items()})
        tracking.log_metrics(client, run_id, final, series=series)
        trial.set_user_attr("id_acc", final["id_acc"])
        trial.set_user_attr("ce_logged", bool(ce))
        if "ood_acc_mean" in final:
            trial.set_user_attr("ood_acc_mean", final["ood_acc_mean"])
        trial.set_user_attr("shift_acc", shift_acc)

        if cfg.study.objective == "multi":
            value = (val["acc"], sel["ood_val_acc"])  # ID and OOD, both from validation data
        elif cfg.study.objective == "ood_val_acc":
            value = sel["ood_val_acc"]
        else:
            value = val["acc"]
        ctx.get("on_complete", lambda *a: None)(trial, value, model, run_id)
        tracking.end_run(client, run_id, "FINISHED")
        return value
    except optuna.TrialPruned as err:
        trial.set_user_attr("pruned_epoch", epoch)
        tracking.end_run(client, run_id, "KILLED", {"harness.pruned_epoch": epoch, "harness.pruned_reason": str(err)})
        raise
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        trial.set_user_attr("fail_reason", reason)
        tracking.end_run(client, run_id, "FAILED", {"harness.fail_reason": reason, "harness.failed_epoch": epoch})
        raise
    finally:
        # free this trial's model and optimizer now: memory must not grow across trials (optuna#1224)
        model = groups = opt = None  # groups holds the modules too
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

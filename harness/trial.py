"""One Optuna trial: sample how to fine-tune, fine-tune for real, report per epoch, evaluate on every shift."""

from __future__ import annotations

import dataclasses
import math
import resource
import time
import warnings

import optuna
import psutil
import torch

from harness import (baseline_grid, corruption_error, metrics, models, prefix, probe as probemod, runs, schema, stats,
                     strategies, suite as suitemod, tracking, train)
from harness.config import Config, Model


def suggest(trial: optuna.Trial, cfg: Config, n_groups: int) -> dict:
    """The conditional space from [search]: lr (unless the entry has none: the linear probe's head is a logistic
    regression, lr None, never sampled), then, with more than one search.strategy, `strategy` as a categorical, then
    the strategy's own parameters (harness.strategies: each exists only for its strategy). Baselines are prefix
    trials whatever the strategies, through their family's entry. A prefix-only study (the default) samples and
    returns what it always did, no `strategy` (with_strategy: its runs still log it)."""
    q = cfg.search
    baseline = trial.user_attrs.get(schema.ATTR_BASELINE)
    with warnings.catch_warnings():  # enqueued baselines may sit outside the bounds on purpose (e.g. never)
        warnings.simplefilter("ignore", UserWarning)
        entry = strategies.of({}, baseline) if baseline else None
        lr = trial.suggest_float("lr", q.lr[0], q.lr[1], log=True) if entry is None or entry.lr else None
        if baseline or len(q.strategy) == 1:
            strategy = "prefix" if baseline else q.strategy[0]
        else:
            strategy = trial.suggest_categorical("strategy", q.strategy)
        own = (entry or strategies.get(strategy)).suggest(trial, q, n_groups)
    return {"lr": lr, **({} if q.strategy == ["prefix"] else {"strategy": strategy}), **own, **bn_param(trial, cfg)}


def bn_param(trial, cfg: Config) -> dict:
    """The trial's BatchNorm mode (train.bn, issue 23) as a param: sampled where search.bn lists several (not for an
    enqueued baseline: train.bn), search.bn's one mode, else train.bn; {} for the default (train, no search.bn), so
    the studies from before log what they did."""
    q, baseline = cfg.search, trial.user_attrs.get(schema.ATTR_BASELINE)
    if len(q.bn) > 1 and not baseline:
        return {"bn": trial.suggest_categorical("bn", q.bn)}
    mode = q.bn[0] if q.bn and not baseline else cfg.train.bn
    return {"bn": mode} if q.bn or mode != "train" else {}


def with_strategy(cfg: Config, p: dict, baseline: str = "") -> dict:
    """A trial's params as its runs log them and train from: `strategy` always, which Optuna samples only when
    search.strategy lists several (suggest names it whenever the study is not prefix-only; a baseline is prefix)."""
    return {"strategy": "prefix" if baseline else cfg.search.strategy[0], **p}


def source_params(cfg: Config, source: dict, n_groups: int) -> dict:
    """A finished trial's params as its run logged them, from its Optuna params and baseline ({"params", "baseline"}):
    suggest again on them (a FixedTrial), so its replicates log and train what it did (lr None for the probe,
    unfreeze_epoch 0 when nothing was frozen, the strategy of a one-strategy study that Optuna never sampled)."""
    fixed = optuna.trial.FixedTrial(source["params"])
    if source["baseline"]:
        fixed.set_user_attr(schema.ATTR_BASELINE, source["baseline"])
    return with_strategy(cfg, suggest(fixed, cfg, n_groups), source["baseline"])


def baseline_lrs(cfg: Config) -> list[float]:
    """Full FT's lr sweep (harness.baseline_grid.full_grid: study.baseline_lrs, else 5 log-spaced points); the surgical
    sweep's lrs. One guess per baseline against TPE over lr is not a fair comparison (issues 11, 22)."""
    return baseline_grid.full_grid(cfg)


def baselines(cfg: Config, n_groups: int) -> list[dict]:
    """The enqueued baselines, each family on its own grid (harness.baseline_grid.baselines)."""
    return baseline_grid.baselines(cfg, n_groups)


def surgical_sweep(cfg: Config, n_groups: int) -> list[dict]:
    """search.surgical_sweep: each surgical choice (search.surgical_groups, else each group alone, head frozen) at each
    of the baselines' sweep lrs (the same tuning budget as full FT, issue 11), crossed with each mode of search.bn
    where it lists several (only the search.bn_contrast choices, when it names some); Lee et al. 2023's question of which block to tune. Enqueued after the baselines; [] when
    the key is off. The replicates re-run the best lr of each (choice, bn) on validation (workers.sources)."""
    q = cfg.search
    if not q.surgical_sweep:
        return []
    named = {"strategy": "surgical"} if len(q.strategy) > 1 else {}
    choices = ([{"tune_set": c} for c in q.surgical_groups] if q.surgical_groups else
               [{"tune_group": j, "tune_head": False} for j in range(n_groups)])
    modes = [{"bn": m} for m in q.bn] if len(q.bn) > 1 else [{}]

    def modes_of(c):  # search.bn_contrast: only those choices at every mode, the others at train.bn
        if q.bn_contrast and c.get("tune_set") not in q.bn_contrast:
            return [{"bn": cfg.train.bn}] if len(q.bn) > 1 else [{}]
        return modes
    return [{"lr": lr, **named, **c, **m} for c in choices for m in modes_of(c) for lr in baseline_lrs(cfg)]


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


def selection_metrics(model, suite, batch_size, device) -> dict:
    """Accuracy on the selection shifts of the validation split: the only part of the suite (harness.suite.Suite)
    model selection reads (suite.selection, each set with its labels), so no held-out test shift can steer it."""
    hits = {e.name: {s: train.predict(model, x, batch_size, device).argmax(1) == e.labels for s, x in e.at()}
            for e in suite.selection}  # per image: the selection bootstrap resamples them (harness.selection)
    accs = {n: {s: h.double().mean().item() for s, h in sev.items()} for n, sev in hits.items()}
    flat = [a for sev in accs.values() for a in sev.values()]
    bits = {n: {str(s): "".join("1" if v else "0" for v in h.tolist()) for s, h in sev.items()} for n, sev in hits.items()}
    return {schema.OOD_VAL_ACC: sum(flat) / len(flat) if flat else float("nan"), "per_shift": accs, "bits": bits}


def _summary(logits, y) -> dict:
    """metrics.summarize plus the per-image correctness (bool, on the CPU) that paired comparisons resample and the
    top-1 confidences (pooled_calibration)."""
    return {**metrics.summarize(logits, y), "correct": (logits.argmax(1) == y).cpu(),
            "conf": torch.softmax(logits.detach().double(), 1).max(1).values.cpu()}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def ood_metrics(curves: dict, suite) -> dict:
    """The OOD numbers, each over the held-out severity shifts (suite.shifted: the clean test subset shifted, every
    severity) and nothing else (schema.FINAL states each once): ood_acc_mean (the mean over shifts of each shift's
    severity mean), ood_acc_worst, ood_ece_mean and ood_nll_mean (over every shift and severity), ood_acc/<family>;
    the label-shift, subpopulation and clean sets under their own names (schema.SET_ACC); shifts.files' corruptions
    as files/acc_mean and files/acc_worst. {} parts for sets the suite lacks."""
    final = {}
    shifted = [e.name for e in suite.shifted]
    if shifted:
        means = {n: _mean(c["acc"] for c in curves[n].values()) for n in shifted}
        final[schema.OOD_ACC_MEAN] = _mean(means.values())
        final[schema.OOD_ACC_WORST] = min(means.values())
        for key in ("ece", "nll"):
            final[schema.ood_mean(key)] = _mean(c[key] for n in shifted for c in curves[n].values())
        families = {}
        for e in suite.shifted:
            families.setdefault(e.family, []).append(means[e.name])
        final.update({schema.family_key(f): _mean(v) for f, v in families.items()})
    files = {e.name: _mean(c["acc"] for c in curves[e.name].values()) for e in suite.files}
    if files:
        final[schema.FILES_ACC_MEAN], final[schema.FILES_ACC_WORST] = _mean(files.values()), min(files.values())
    final.update({schema.SET_ACC[e.family]: curves[e.name][1]["acc"] for e in suite.test
                  if e.kind != "severity" and e.family in schema.SET_ACC})
    domains = [curves[e.name][1]["acc"] for e in suite.domains]  # real domains: their own family, each its own set
    if domains:
        final[schema.DOMAINS_ACC_MEAN], final[schema.DOMAINS_ACC_WORST] = _mean(domains), min(domains)
    return final


def test_metrics(model, suite, data: dict, batch_size, device, hits: dict | None = None) -> tuple[dict, dict, dict | None]:
    """Held-out evaluation: clean test set, the clean test subset (the images every held-out severity shift shifts:
    a curve's severity-0 point and every drop use it) and every test set of the suite, in its order, summarized by
    ood_metrics. Returns (final metrics, per-set curves {name: {step: {acc, ece, nll, brier, correct}}}, the clean
    subset's summary or None). A target-domain study's clean set is a curve like any other; the clean subset is not
    one. hits: a dict that gets the test split's per-image correctness under "test" (a bool tensor on the CPU)."""
    x, y = data["test"]
    logits = train.predict(model, x, batch_size, device)
    final = {schema.id_key(k): v for k, v in metrics.summarize(logits, y).items()}
    if hits is not None:
        hits["test"] = (logits.argmax(1) == y.to(logits.device)).cpu()
    clean_summary = None
    if suite.shifted:
        clean = suite.clean_test
        clean_summary = _summary(train.predict(model, clean.images, batch_size, device), clean.labels)
        final[schema.CLEAN_SUBSET_ACC] = clean_summary["acc"]
        final[schema.CLEAN_SUBSET_ECE] = clean_summary["ece"]
    curves = {e.name: {s: _summary(train.predict(model, xs, batch_size, device), e.labels) for s, xs in e.at()}
              for e in suite.test}  # name -> {step: {acc, ece, nll, brier, correct}}
    final.update(ood_metrics(curves, suite))
    return final, curves, clean_summary


def correctness(curves: dict, names, clean: dict | None, domains=()) -> dict:
    """The per-image correctness of the severity shifts `names` and of their clean subset, as '0'/'1' strings (one
    character per image, in the fixed order of the shifted sets, the same images at every severity):
    {"clean": ..., "shifts": {name: {severity: ...}}}, and of the real domains `domains` (their own images, step 1)
    under "domains" in the same form, when the study has any. The report's paired bootstrap resamples these images
    (harness.stats.paired_bootstrap); 11 shifts x 5 severities x 200 images is ~11 kB a trial."""
    bits = lambda c: "".join("1" if v else "0" for v in c["correct"].tolist())
    out = {"clean": bits(clean) if clean is not None else None,
           "shifts": {n: {str(s): bits(c) for s, c in curves[n].items()} for n in names if n in curves}}
    if domains:
        out["domains"] = {n: {str(s): bits(c) for s, c in curves[n].items()} for n in domains if n in curves}
    return out


def label_shift_metrics(model, suite, data: dict, batch_size, device, val_logits=None) -> dict:
    """Label shift (Lipton et al. 2018): balanced accuracy on the prior-shifted test set (the suite's set with a class
    prior), and how well black-box shift estimation recovers its class priors from the clean validation confusion
    matrix."""
    shifted = next((e for e in suite.test if e.prior is not None), None)
    if shifted is None:
        return {}
    xs, ys = shifted.images[0], shifted.labels
    k = len(data["classes"])
    vx, vy = data["val"]
    if val_logits is None:  # the trial passes its last epoch's validation logits: same model, same images
        val_logits = train.predict(model, vx, batch_size, device)
    conf = metrics.confusion(val_logits.argmax(1), vy, k)
    logits = train.predict(model, xs, batch_size, device)
    source_prior = torch.bincount(vy.cpu(), minlength=k).double() / len(vy)
    est = metrics.bbse_prior(conf, logits.argmax(1), source_prior)
    true = shifted.prior.double().cpu()
    # BBSE correction: reweight the posteriors by w = q/p, then take the argmax
    w = (est / source_prior.clamp_min(1e-12)).float().to(logits.device)
    corrected = (logits.softmax(1) * w).argmax(1)
    return {schema.LABEL_SHIFT_BALANCED_ACC: metrics.balanced_accuracy(logits, ys, k),
            schema.LABEL_SHIFT_ACC_BBSE: (corrected == ys).float().mean().item(),
            schema.LABEL_SHIFT_PRIOR_L1_ERROR: (est - true).abs().sum().item(),
            schema.LABEL_SHIFT_W_SQ_ERROR: ((est - true) / source_prior.clamp_min(1e-12)).pow(2).sum().item(),
            "priors": {"true": true.tolist(), "bbse": est.tolist()}}  # logged per class (step = class index)


def files_clean_acc(model, ctx, batch_size, device) -> float | None:
    """Accuracy on the clean images of the shifts.files sets (clean_files_acc): the clean test split's rows those
    sets hold (suite.file_rows), when the files were made from that split in order (CIFAR-10-C from CIFAR-10's test
    split), checked on the labels; None without files or when the labels there differ. The whole split is predicted
    (a stable tensor: the prefix cache keeps its outputs) and the rows read from it."""
    files = [e for e in ctx.suite.test if e.provenance.source]
    if not files:
        return None
    x, y = ctx.data.get("clean_test", ctx.data["test"])
    rows = suitemod.file_rows(ctx.cfg.shifts, y.cpu())
    if len(rows) != len(files[0].labels) or not torch.equal(y.cpu()[rows], files[0].labels.cpu()):
        return None
    hits = (train.predict(model, x, batch_size, device).argmax(1) == y.to(device)).cpu()
    return hits[rows].double().mean().item()


def pooled_calibration(curves: dict, sets) -> dict:
    """Calibration at its sample size (issue 22): the severity sets' images at each set's highest severity pooled,
    their plug-in and debiased ECE and the ECE a calibrated model scores on them (stats.calibration_at_n), as
    schema.ECE_POOLED's metrics; {} without severity sets."""
    top = [curves[e.name][max(e.severities)] for e in sets if e.name in curves]
    if not top:
        return {}
    out = stats.calibration_at_n(torch.cat([c["conf"] for c in top]), torch.cat([c["correct"] for c in top]))
    return {schema.ECE_POOLED[k]: v for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class Fitted:
    """What fine-tuning a trial's model produced (train_trial)."""
    model: torch.nn.Module
    groups: dict
    view: prefix.View  # the model seen through the prefix cache: what validation and evaluation run
    val: dict  # the reported epoch's validation: acc, loss, logits (reused by BBSE)
    train_seconds: float  # from building the model to the last validation
    epoch: int | None = None  # train.select_epoch = "best_val": the epoch whose weights the model holds (else None)


def _epoch_metrics(loss, val, frozen, lr=None) -> dict:
    # rss_mb after each epoch, pruned trials too: it must not grow across trials (optuna#1224)
    return {schema.TRAIN_LOSS: loss, schema.VAL_ACC: val["acc"], schema.VAL_LOSS: val["loss"],
            schema.FROZEN_LAYERS: frozen,
            schema.RSS_MB: psutil.Process().memory_info().rss / 2**20, schema.LR: lr}


def train_trial(trial: optuna.Trial | None, ctx, p: dict, run: runs.Run, progress=None, baseline: str = "",
                seed: int | None = None) -> Fitted:
    """Build the trial's model and fine-tune it: per epoch, validate, log on the run, show progress, report and maybe
    prune (trial None: a seed replicate, never pruned). The linear probe fits its head by logistic regression instead
    (no epochs: one step-0 record, never pruned); LP-FT fine-tunes from that head. Raises optuna.TrialPruned or
    FloatingPointError (a diverged loss)."""
    cfg, device, t = ctx.cfg, ctx.device, ctx.cfg.train
    seed = cfg.study.seed if seed is None else seed
    number = trial.number if trial is not None else -1
    prunes = trial is not None and cfg.study.objective != "multi"  # Optuna cannot prune multi-objective studies
    t0 = time.perf_counter()
    # Every trial sees the same head init and batch order (the study seed): differences between trials come from
    # the hyperparameters alone, and a re-run reproduces the same curve on CPU. Replicates change the seed only.
    model, groups = fresh_model(cfg.model, len(ctx.data["classes"]), ctx.pretrained, device, seed, compile=t.compile)
    view = prefix.for_trial(ctx, model, groups, seed)  # frozen groups' outputs computed once per worker, not per epoch
    entry = strategies.of(p, baseline)
    if entry.probe_head:
        probe = probemod.fitted(ctx, model, groups)
        probemod.set_head(groups, probe)
        tracking.log_params(ctx.client, run.id, {"probe_c": probe.c})
    if entry.trains:
        recipe = train.Recipe(lr=p["lr"], epochs=t.epochs, batch_size=t.batch_size, optimizer=t.optimizer,
                              momentum=t.momentum, weight_decay=t.weight_decay, schedule=t.schedule, augment=t.augment,
                              **strategies.recipe_settings(p, baseline, names=list(groups)))
        epochs = train.fit(model, groups, *ctx.data["train"], recipe, seed, device, view)
        prune_at = entry.first_prune(cfg.study.prune_warmup, p, t.epochs, len(groups) - 1)
    else:  # the probe alone: its fit is one record at step 0 (lr None: not logged), reported, never pruned
        epochs, prune_at = [(0, probe.train_loss, ctx.n_groups, None)], t.epochs
    best = None  # best_val: (epoch, its validation, a copy of its weights), the first epoch of the highest val acc
    for epoch, loss, frozen, lr in epochs:
        run.epoch = epoch  # a pruned or failed run's tags name it
        val = train.evaluate(view, *ctx.data["val"], t.eval_batch_size, device)
        if t.select_epoch == "best_val" and (best is None or val["acc"] > best[1]["acc"]):
            best = (epoch, val, {k: v.detach().clone() for k, v in model.state_dict().items()})
        # async: off the training loop (bench (b))
        tracking.log_metrics(ctx.client, run.id, _epoch_metrics(loss, val, frozen, lr), step=epoch, wait=False)
        if progress is not None:
            progress(number, epoch, loss, val["acc"])
        if prunes:
            trial.report(val["acc"], epoch)
            if prune_at <= epoch + 1 < t.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: val_acc {val['acc']:.4f} below the median")
    seconds = time.perf_counter() - t0
    if best is None:
        return Fitted(model, groups, view, val, seconds)
    # the groups frozen throughout are the same in every epoch's weights, so the prefix cache still serves them
    model.load_state_dict(best[2])
    return Fitted(model, groups, view, best[1], seconds, best[0])


def evaluate_trial(fitted: Fitted, ctx, reference: dict | None) -> tuple[dict, dict, dict]:
    """The fitted model on the selection shifts, the clean test split, every test shift (and their clean subset),
    label shift, and its corruption errors against `reference` (corruption_error.ce_reference; None: none yet).
    Returns (final metrics, series {key: {step: value}}, the selection metrics with shift_acc, the per-image
    correctness and the CE reference's run id)."""
    device, bs, suite, data, val = ctx.device, ctx.cfg.train.eval_batch_size, ctx.suite, ctx.data, fitted.val
    view = fitted.view  # the model, its frozen groups' outputs on each evaluation set computed once per worker
    t1 = time.perf_counter()
    sel = selection_metrics(view, suite, bs, device)
    test_hits = {}
    final, curves, clean = test_metrics(view, suite, data, bs, device, test_hits)
    label = label_shift_metrics(view, suite, data, bs, device, val["logits"])
    priors = label.pop("priors", None)
    final.update(label)
    correct = correctness(curves, [e.name for e in suite.shifted], clean, [e.name for e in suite.domains])
    # the test split (a target-domain study's target test images): paired comparisons on it (harness.reproduction)
    bits = lambda hits: "".join("1" if v else "0" for v in hits.tolist())
    correct["test"] = bits(test_hits["test"])
    # the one-step sets (a target-domain study's clean images, label shift, subpopulation), image by image
    correct["sets"] = {e.name: bits(c["correct"]) for e in suite.test if e.kind != "severity"
                       for c in curves[e.name].values() if len(curves[e.name]) == 1}
    shift_acc = {n: {str(s): c["acc"] for s, c in cv.items()} for n, cv in curves.items()}
    corruptions = [e for e in suite.test if e.kind == "severity"]  # files: their clean error is clean_files_acc's
    files_clean = files_clean_acc(view, ctx, bs, device)
    if files_clean is not None:
        final[schema.CLEAN_FILES_ACC] = files_clean
    ce = corruption_error.corruption_errors(final.get(schema.CLEAN_SUBSET_ACC),
                                            {e.name: curves[e.name] for e in corruptions}, reference,
                                            files_clean, {e.name for e in corruptions if not e.paired})
    final.update(ce)
    final.update(pooled_calibration(curves, corruptions))
    final.update({schema.VAL_ACC_FINAL: val["acc"], schema.EVAL_SECONDS: time.perf_counter() - t1,
                  schema.PEAK_RSS_MB: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    if device.type == "cuda":
        final[schema.GPU_PEAK_MB] = torch.cuda.max_memory_allocated() / 2**20
    if sel["per_shift"]:
        final[schema.OOD_VAL_ACC] = sel[schema.OOD_VAL_ACC]
    final[schema.TRAIN_SECONDS] = fitted.train_seconds
    if fitted.epoch is not None:
        final[schema.SELECTED_EPOCH] = fitted.epoch
    series = {schema.shift_key(name, "acc"): sev for name, sev in sel["per_shift"].items()}  # step = severity
    series.update({schema.shift_key(name, key): {s: c[key] for s, c in cv.items()}
                   for name, cv in curves.items() for key in ("acc", "ece", "nll")})
    series.update({schema.label_prior(key): dict(enumerate(prior)) for key, prior in (priors or {}).items()})
    sel_bits = sel.pop("bits")
    val_bits = "".join("1" if v else "0" for v in (val["logits"].argmax(1).cpu() == data["val"][1].cpu()).tolist())
    return final, series, {**sel, "shift_acc": shift_acc, "correct": correct,
                           "val_correct": {"val": val_bits, "selection": sel_bits},
                           "ce_reference": reference["run_id"] if ce and reference else None}


def log_run(ctx, run_id: str, final: dict, series: dict, sel: dict) -> None:
    """A finished trial's or replicate's final metrics, series, per-image correctness (correct.json) and CE reference
    tag on its run."""
    tracking.log_metrics(ctx.client, run_id, final, series=series)
    tracking.log_json(ctx.client, run_id, sel["correct"], schema.CORRECT_ARTIFACT)
    tracking.log_json(ctx.client, run_id, sel["val_correct"], schema.VAL_CORRECT_ARTIFACT)
    if sel["ce_reference"]:
        tracking.set_tags(ctx.client, run_id, {schema.TAG_CE_REFERENCE: sel["ce_reference"]})


def log_trial(trial: optuna.Trial, ctx, run_id: str, final: dict, series: dict, sel: dict):
    """The run (log_run), what later trials need in the trial's user attrs; returns the objective value: val_acc,
    ood_val_acc, or both (multi), all from validation data."""
    log_run(ctx, run_id, final, series, sel)
    for key in (schema.ID_ACC, schema.OOD_ACC_MEAN, schema.VAL_ACC_FINAL, schema.CLEAN_SUBSET_ACC,
                schema.CLEAN_FILES_ACC):
        if key in final:
            trial.set_user_attr(key, final[key])
    trial.set_user_attr(schema.ATTR_CE_REFERENCE, sel["ce_reference"])
    trial.set_user_attr(schema.ATTR_SHIFT_ACC, sel["shift_acc"])
    objective = ctx.cfg.study.objective
    if objective == "multi":
        return final[schema.VAL_ACC_FINAL], sel[schema.OOD_VAL_ACC]
    return sel[schema.OOD_VAL_ACC] if objective == schema.OOD_VAL_ACC else final[schema.VAL_ACC_FINAL]


@runs.frees_memory
def objective(trial: optuna.Trial, ctx, progress=None, on_complete=None):
    """One trial: suggest -> build and fit, validating, reporting and maybe pruning each epoch (train_trial) ->
    evaluate (evaluate_trial) -> log (log_trial), on its own MLflow child run (runs.trial_run: it ends FINISHED,
    KILLED when pruned, FAILED with the reason). on_complete(trial, value, model, run_id) runs before the run ends
    (the study keeps the best weights). Returns the objective value; the model is freed (runs.frees_memory)."""
    baseline = trial.user_attrs.get(schema.ATTR_BASELINE, "")
    p = with_strategy(ctx.cfg, suggest(trial, ctx.cfg, ctx.n_groups), baseline)
    with runs.trial_run(ctx, trial, p, baseline) as run:
        fitted = train_trial(trial, ctx, p, run, progress, baseline)
        reference = corruption_error.ce_reference(trial.study.get_trials(deepcopy=False))
        final, series, sel = evaluate_trial(fitted, ctx, reference)
        value = log_trial(trial, ctx, run.id, final, series, sel)
        if on_complete is not None:
            on_complete(trial, value, fitted.model, run.id)
        return value


@runs.frees_memory
def replicate(ctx, source: dict, seed: int, reference: dict | None, on_run=None) -> str:
    """Re-run a finished trial with another training seed (head init and batch order; the data, suite, pretrained
    body, params and recipe stay), on its own child run tagged with the source trial and the seed (runs.replicate_run:
    FINISHED, or FAILED with the reason, re-raised). source = {"number", "params", "baseline"}. Returns the run id."""
    p = source_params(ctx.cfg, source, ctx.n_groups)
    with runs.replicate_run(ctx, source, seed, p, on_run) as run:
        fitted = train_trial(None, ctx, p, run, baseline=source["baseline"], seed=seed)
        log_run(ctx, run.id, *evaluate_trial(fitted, ctx, reference))
        return run.id

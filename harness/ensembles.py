"""Weight-space ensembles (issue 23): interpolating and averaging state dicts of models fine-tuned from one start, the
greedy soup rule, and evaluating a state as a trial is evaluated. The study's uses are harness.wise (WiSE-FT) and
harness.soups (model soups); this module knows nothing of Optuna or MLflow.

Every floating tensor of a state dict is interpolated or averaged, BatchNorm's running_mean and running_var
included (the statistics move with the weights: Wortsman et al. 2022 interpolate the whole state; no
recomputation on the training split). Integer tensors (BatchNorm's num_batches_tracked, which eval-mode outputs
never read) are taken from the nearer endpoint, and from the first ingredient of an average."""

from __future__ import annotations

import torch

from harness import probe as probemod, schema, train, trial as trialmod


# ------------------------------------------------------------------------------------------------ the arithmetic

def interpolate(theta0: dict, theta1: dict, alpha: float) -> dict:
    """theta(alpha) = (1 - alpha) theta0 + alpha theta1, tensor by tensor (the same keys). Written as
    theta0 * (1 - alpha) + theta1 * alpha, so alpha = 0 and alpha = 1 give theta0 and theta1 bit for bit
    (x * 1 + y * 0 = x in floating point)."""
    if set(theta0) != set(theta1):
        raise ValueError(f"the two states differ in keys: {sorted(set(theta0) ^ set(theta1))[:5]}")
    out = {}
    for k, a in theta0.items():
        b = theta1[k]
        if a.is_floating_point():
            out[k] = a * (1.0 - alpha) + b.to(a.dtype) * alpha
        else:
            out[k] = (b if alpha >= 0.5 else a).clone()
    return out


def average(states: list[dict]) -> dict:
    """The uniform average of states (a soup): floating tensors summed in float64 and divided, cast back."""
    if not states:
        raise ValueError("no state to average")
    out = {}
    for k, first in states[0].items():
        if first.is_floating_point():
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(first.dtype)
        else:
            out[k] = first.clone()
    return out


def greedy(candidates: list[tuple], score) -> dict:
    """The greedy soup (Wortsman et al. 2022, Recipe 1): candidates [(key, validation value)] sorted by that value,
    best first (ties: the smaller key); the soup starts as the best and each next candidate joins when the soup's
    validation score with it, score(keys) (the average of those keys' states), is >= the score without it.
    Returns {"ingredients": keys in the order added, "tried": [(key, score with it, kept)], "score"}."""
    order = sorted(candidates, key=lambda c: (-c[1], c[0]))
    if not order:
        return {"ingredients": [], "tried": [], "score": None}
    soup = [order[0][0]]
    best = score(soup)
    tried = [(order[0][0], best, True)]
    for key, _ in order[1:]:
        s = score(soup + [key])
        kept = s >= best
        tried.append((key, s, kept))
        if kept:
            soup, best = soup + [key], s
    return {"ingredients": soup, "tried": tried, "score": best}


# ------------------------------------------------------------------------------------------------ states of a study

def cpu_state(model) -> dict:
    """A model's state dict as float32 CPU tensors (integers kept): what runs keep and soups average."""
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
            for k, v in model.state_dict().items()}


def fresh(ctx, device=None):
    """(model, groups): the study's architecture with its pretrained body and the study seed's head, on `device`."""
    return trialmod.fresh_model(ctx.cfg.model, len(ctx.data_cpu["classes"]), ctx.pretrained,
                                device or ctx.device, ctx.cfg.study.seed)


def probe_state(ctx) -> dict:
    """theta_0 of WiSE-FT: the pretrained body with the converged linear probe as its head (harness.probe, the
    study's cached fit): the linear-probe baseline's model exactly."""
    model, groups = fresh(ctx)
    probemod.set_head(groups, probemod.fitted(ctx, model, groups))
    return cpu_state(model)


def model_of(ctx, state: dict):
    """(model, groups) holding `state`, on the study's device, eval mode."""
    model, groups = fresh(ctx)
    model.load_state_dict({k: v.to(ctx.device) for k, v in state.items()})
    return model.eval(), groups


def fitted(ctx, state: dict) -> trialmod.Fitted:
    """`state` as a fitted trial (harness.trial.Fitted): evaluate_trial evaluates it as any trial, on the plain
    model (no frozen-prefix cache: its groups hold weights no trial trained)."""
    model, groups = model_of(ctx, state)
    val = train.evaluate(model, *ctx.data["val"], ctx.cfg.train.eval_batch_size, ctx.device)
    return trialmod.Fitted(model, groups, model, val, 0.0)


def quick_eval(ctx, state: dict) -> dict:
    """A WiSE-FT point: validation accuracy (clean; on the selection shifts only when the study's objective is
    ood_val_acc: they were a quarter of a point's evaluation on the default study), test accuracy (id_acc,
    ood_acc_mean) and the per-image correctness of the held-out severity shifts (trial.correctness), without
    evaluate_trial's label-shift, corruption-error and calibration extras."""
    model, _ = model_of(ctx, state)
    bs, dev, suite = ctx.cfg.train.eval_batch_size, ctx.device, ctx.suite
    val = train.evaluate(model, *ctx.data["val"], bs, dev)
    sel = (trialmod.selection_metrics(model, suite, bs, dev) if ctx.cfg.study.objective == schema.OOD_VAL_ACC
           else {schema.OOD_VAL_ACC: None})
    final, curves, clean = trialmod.test_metrics(model, suite, ctx.data, bs, dev)
    return {schema.VAL_ACC: val["acc"], schema.OOD_VAL_ACC: sel[schema.OOD_VAL_ACC], schema.ID_ACC: final.get(schema.ID_ACC),
            schema.OOD_ACC_MEAN: final.get(schema.OOD_ACC_MEAN),
            "correct": trialmod.correctness(curves, [e.name for e in suite.shifted], clean)}

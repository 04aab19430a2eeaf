"""WiSE-FT (Wortsman et al. 2022) on a study's models: theta(alpha) = (1 - alpha) theta_0 + alpha theta_ft along
alpha = 0, 0.1, ..., 1, for the selected configuration and each baseline family's best, with theta_0 the linear probe
(the pretrained body and the converged probe head: the zero-shot endpoint's analogue for a supervised backbone).

BatchNorm's running statistics are interpolated like the weights (harness.ensembles); alpha is chosen on validation
(the study objective: val_acc, or ood_val_acc; ties go to the larger alpha, the nearer to the fine-tuned model). Each
point is evaluated on the same held-out images as the trials, with their per-image correctness, so the report
compares the chosen alpha with alpha = 1 paired (harness.ensemble_numbers). theta_ft is the search-time run's
weights (workers.save_if_best keeps every finalist's): one seed, so its intervals are image noise only. The curves go
to the parent run as ensembles/wise_ft.json."""

from __future__ import annotations

import time

from harness import ensembles, results, schema, strategies, tracking, workers

ALPHAS = tuple(i / 10 for i in range(11))
WEIGHTS = "model/weights.safetensors"  # workers.save_if_best's artifact
BN = "BatchNorm running statistics interpolated like the weights (not recomputed)"


def run_state(ctx, run_id: str) -> dict | None:
    """A run's kept weights (workers.save_if_best) as a CPU state dict; None when the run has none."""
    from safetensors.torch import load

    blob = results.artifact(ctx.client, run_id, WEIGHTS)
    return load(blob) if blob is not None else None


def targets(ctx, study) -> list[dict]:
    """The configurations WiSE-FT interpolates: the selected trial, then each baseline family's best that trains
    (the linear probe is theta_0 itself), each once: [{"number", "baseline", "run_id", "role"}]."""
    from harness import selection

    search, families, run_ids = workers.searched(study)
    chosen = workers.selected(ctx, study)
    trains = lambda fam: not fam or strategies.get(strategies.BASELINES[fam].strategy).trains  # noqa: E731
    out = ([{"number": chosen, "baseline": families.get(chosen, ""), "role": "selected"}]
           if chosen is not None and trains(families.get(chosen, "")) else [])  # the probe selected: it is theta_0
    for fam, n in selection.family_bests(search, families).items():
        if trains(fam) and all(o["number"] != n for o in out):
            out.append({"number": n, "baseline": fam, "role": "family best"})
    return [{**o, "run_id": run_ids[o["number"]]} for o in out]


def choose(points: list[dict], key: str) -> float:
    """The alpha of the highest validation value `key` (ties: the larger alpha)."""
    return max(points, key=lambda p: (round(p[key], 12), p["alpha"]))["alpha"]


def curve(ctx, theta0: dict, theta_ft: dict, alphas=ALPHAS) -> list[dict]:
    """Every alpha's point (ensembles.quick_eval of the interpolated state), with its alpha."""
    return [{"alpha": a, **ensembles.quick_eval(ctx, ensembles.interpolate(theta0, theta_ft, a))} for a in alphas]


def run(ctx, study, log=print) -> dict:
    """The WiSE-FT curves of the study's targets, logged on the parent run (ensembles/wise_ft.json) and returned."""
    t0 = time.perf_counter()
    key = schema.OOD_VAL_ACC if ctx.cfg.study.objective == schema.OOD_VAL_ACC else schema.VAL_ACC
    theta0 = ensembles.probe_state(ctx)
    out = []
    for t in targets(ctx, study):
        theta_ft = run_state(ctx, t["run_id"])
        if theta_ft is None:
            log(f"wise-ft: trial {t['number']} has no kept weights; skipped")
            continue
        points = curve(ctx, theta0, theta_ft)
        alpha = choose(points, key)
        at = {p["alpha"]: p for p in points}
        log(f"wise-ft: trial {t['number']} ({t['baseline'] or 'searched'}): alpha {alpha:.1f} on validation; "
            f"ood_acc_mean {at[alpha][schema.OOD_ACC_MEAN]:.4f} vs {at[1.0][schema.OOD_ACC_MEAN]:.4f} at alpha 1")
        out.append({**t, "chosen": alpha, "points": points})
    record = {"alphas": list(ALPHAS), "chosen_on": key, "bn": BN, "configs": out,
              "seconds": time.perf_counter() - t0}
    tracking.log_json(ctx.client, ctx.parent_id, record, schema.WISE_FT_ARTIFACT)
    return record

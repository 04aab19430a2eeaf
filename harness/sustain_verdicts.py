"""The sustain verdicts (issue 24): paired policy comparisons on the same streams and images, drift gain against the
no-drift control's gain, and the cost-accuracy frontier. JSON in, JSON out (no MLflow, no torch).

Inputs are sustain_numbers' policy groups; each run's accuracy_matrix.json holds stream_correct[t][i], whether the
model in service when period t arrived got its evaluation image i right, and eval_idx[t][i], that image's position in
the test split. A policy's mean stream accuracy on a seed is the mean of its stream_correct (every period has the same
number of images), so a paired difference of two policies is the mean over seeds and (period, image) cells of the
per-cell difference on the same seed's stream: the same images, the same shifts, the same labelled batches."""

from __future__ import annotations

from harness import schema
from harness.conditions import ALPHA
from harness.stats import holm, seed_interval, two_level_bootstrap


def cells(rows: list[dict]) -> dict:
    """seed -> (flattened stream_correct as floats, flattened eval_idx) of the runs that logged them."""
    out = {}
    for r in rows:
        m = r.get("matrix") or {}
        if r.get("seed") is not None and m.get("stream_correct"):
            out[r["seed"]] = ([float(v) for row in m["stream_correct"] for v in row],
                              [i for row in m.get("eval_idx") or [] for i in row])
    return out


def paired_difference(terms: list[tuple[int, list[dict]]], resamples: int = 2000) -> dict | None:
    """The paired difference sum_k sign_k * policy_k of mean stream accuracy, e.g. [(+1, A), (-1, B)] for A - B, or
    [(+1, A), (-1, never), (-1, A control), (+1, never control)] for drift gain minus control gain. Per seed that all
    terms ran, the per-cell combination d[s][i]; its mean with the two-level bootstrap over seeds and images
    (stats.two_level_bootstrap of d against zeros: the seeds are paired, so only d's seeds are resampled) when every
    term evaluated the same images in the same cells on every seed (crossed), else the t interval over the per-seed
    means (a class-prior stream and its control draw different images; an eval_size below the reported half draws
    other images per seed). None without a common seed."""
    per = [cells(rows) for _, rows in terms]
    seeds = sorted(set.intersection(*(set(p) for p in per))) if per else []
    seeds = [s for s in seeds if len({len(p[s][0]) for p in per}) == 1]
    if not seeds:
        return None
    d = [[sum(sign * p[s][0][i] for (sign, _), p in zip(terms, per)) for i in range(len(per[0][s][0]))]
         for s in seeds]
    same_images = all(len({tuple(p[s][1]) for p in per}) == 1 and per[0][s][1] for s in seeds) and \
        len({tuple(per[0][s][1]) for s in seeds}) == 1
    if same_images:
        boot = two_level_bootstrap(d, [[0.0] * len(d[0]) for _ in d], resamples)
        return {"diff": boot["diff"], "ci": boot["ci"], "p": boot["p"], "n_seeds": len(seeds),
                "n_images": boot["n_images"], "level": boot["level"], "seeds": seeds, "resamples": resamples}
    iv = seed_interval([sum(row) / len(row) for row in d])
    p = None
    if iv["ci"] is not None and iv["sd"]:
        from scipy.stats import t

        p = float(2 * t.sf(abs(iv["mean"]) / (iv["sd"] / len(d) ** 0.5), len(d) - 1))
    return {"diff": iv["mean"], "ci": iv["ci"], "p": p, "n_seeds": len(seeds), "n_images": len(d[0]),
            "level": "seeds only (the evaluation images differ between seeds or terms)", "seeds": seeds, "resamples": None}


def _cost(g: dict, key: str):
    return (g["metrics"].get(key) or {}).get("mean")


def comparisons(groups: list[dict], resamples: int = 2000) -> list[dict]:
    """Every pair of policies (A after B in the groups' order, 'never' first), "A beats B": pass when the paired
    interval of A - B excludes 0 in A's favour (Holm-adjusted p < ALPHA over the pairs) and A's updates cost no more
    (images x epochs) than B's; fail when it excludes 0 in B's favour; inconclusive otherwise, i.e. when the interval
    covers 0, or A is more accurate but costs more (a trade-off along the frontier, not a win at matched cost)."""
    out = []
    for j, a in enumerate(groups):
        for b in groups[:j]:
            d = paired_difference([(1, a["rows"]), (-1, b["rows"])], resamples)
            if d is not None:
                out.append({"a": a["key"], "b": b["key"], **d,
                            "cost_a": _cost(a, schema.UPDATE_EXAMPLES), "cost_b": _cost(b, schema.UPDATE_EXAMPLES),
                            "seconds_a": _cost(a, schema.UPDATE_SECONDS), "seconds_b": _cost(b, schema.UPDATE_SECONDS)})
    ps = [c["p"] if c["p"] is not None else 1.0 for c in out]
    for c, ph in zip(out, holm(ps) if ps else []):
        c["p_holm"] = ph
        significant = ph < ALPHA
        cheaper = (c["cost_a"] or 0) <= (c["cost_b"] or 0)
        if significant and c["diff"] < 0:
            c["outcome"], c["detail"] = "fail", f"{c['b']} is more accurate"
        elif significant and cheaper:
            c["outcome"], c["detail"] = "pass", "interval excludes 0 at matched or lower update cost"
        elif significant:
            c["outcome"], c["detail"] = "inconclusive", "more accurate but its updates cost more"
        else:
            c["outcome"], c["detail"] = "inconclusive", "the interval covers 0"
    return out


def drift_vs_control(groups: list[dict], controls: dict, resamples: int = 2000) -> list[dict]:
    """Per policy with a control: drift gain (its mean stream accuracy minus never's, on the drifting stream), control
    gain (the same on the no-drift control) and their difference, the gain from adapting to drift, paired per seed
    and image. `controls`: policy key -> the control group."""
    never = next((g for g in groups if g["policy"] == "never"), None)
    if never is None or never["key"] not in controls:
        return []
    nc = controls[never["key"]]

    def mean(g):
        return (g["metrics"].get(schema.STREAM_ACC_MEAN) or {}).get("mean")

    out = []
    for g in groups:
        c = controls.get(g["key"])
        if c is None or g is never:
            continue
        row = {"policy": g["key"], "drift_acc": mean(g), "control_acc": mean(c),
               "drift": paired_difference([(1, g["rows"]), (-1, never["rows"])], resamples),
               "control": paired_difference([(1, c["rows"]), (-1, nc["rows"])], resamples),
               "difference": paired_difference([(1, g["rows"]), (-1, never["rows"]), (-1, c["rows"]),
                                                (1, nc["rows"])], resamples)}
        out.append(row)
    return out


def frontier(groups: list[dict]) -> dict:
    """Per cost measure (update_examples: images x epochs; update_seconds: wall clock), the policies by mean cost, each
    with the most accurate policy costing no more: which policy is best at each budget."""
    out = {}
    for key in (schema.UPDATE_EXAMPLES, schema.UPDATE_SECONDS):
        pts = sorted(((_cost(g, key), -(_cost(g, schema.STREAM_ACC_MEAN) or 0), g["key"]) for g in groups
                      if _cost(g, key) is not None and _cost(g, schema.STREAM_ACC_MEAN) is not None))
        rows, best = [], None
        for cost, neg_acc, name in pts:
            if best is None or -neg_acc > best[1]:
                best = (name, -neg_acc)
            rows.append({"budget": cost, "policy": name, "acc": -neg_acc, "best": best[0], "best_acc": best[1]})
        out[key] = rows
    return out

"""Learning curves (issue 25): ID and mean OOD accuracy against labels per class for each strategy, from the label
budget runs (harness.budgets), with seed intervals, and where one strategy stops beating another (the crossover),
with a paired two-level bootstrap interval. Pure Python and numpy: the budget runner picks each family's best with
family_bests, the report reads the same runs back from MLflow and calls the same function, so both name one lr.

The arms: each baseline family (its best lr at the budget, on validation of the first budget seed) and the selected
configuration of the full-budget search (study parent's best-trial tag). A point is an arm's mean over its FINISHED
seeds at a budget, with the 95% t interval over seeds (stats.seed_interval); a seed also redraws the labelled
subset, so the interval covers which images were labelled. ood is ood_acc_mean (schema.FINAL: the held-out severity
shifts' mean) and id is id_acc, as every run logs them.

The crossover of arms a and b, on one metric: the budgets in increasing labels per class (0, all labels, last); the
sign of the paired difference a - b at the smallest budget says who leads there; the crossover is the first budget
where the sign turns. Its interval: one resample draws the test images and each arm's seeds once for every budget
(the same images, and the same seed rows, since seed s is the same draw at every budget), the crossover is found
within the resample, and the 2.5 / 97.5 percentiles of its position in the budget order are reported (the end of the
range, "none", when a resample never turns). Per image, ood is each image's correctness averaged over the held-out
shifts and severities (comparisons.per_seed), id the same images clean.
"""

from __future__ import annotations

import math

import numpy as np

from harness import comparisons, schema, selection, stats, strategies

SELECTED = "selected"
NONE = "none"  # no crossover within the budgets studied


def family_bests(rows: list[dict], first_seed: int) -> dict[tuple[int, str], int]:
    """{(budget, family): its best trial number}: among the FINISHED runs on the first seed with a finite value,
    selection's rule (highest value, then the lower trial number). rows: {"budget", "number", "seed", "baseline",
    "status", "value"}."""
    out = {}
    for b in sorted({r["budget"] for r in rows}):
        for fam in sorted({r["baseline"] for r in rows if r["baseline"]}):
            vals = {r["number"]: [r["value"]] for r in rows
                    if r["budget"] == b and r["baseline"] == fam and r["seed"] == first_seed and r["status"] == "FINISHED"
                    and r["value"] is not None and math.isfinite(r["value"])}
            if vals:
                out[(b, fam)] = selection.ranked(vals)[0]
    return out


def _row(t: dict, key: str) -> dict:
    tags, m = t["tags"], t["metrics"]
    return {"budget": int(schema.tag(tags, schema.TAG_LABEL_BUDGET)), "number": t["replicate_of"], "seed": t["seed"],
            "baseline": t["baseline"], "status": t["status"], "value": m.get(key),
            "train_labels": int(schema.tag(tags, schema.TAG_TRAIN_LABELS, "0") or 0),
            "id": m.get(schema.ID_ACC), "ood": m.get(schema.OOD_ACC_MEAN), "correct": t.get("correct"),
            "run_id": t["run_id"]}


def order(budgets) -> list[int]:
    """Budgets in increasing labels: 0 (all labels) last."""
    return sorted(budgets, key=lambda b: (b == 0, b))


def arms(rows: list[dict], selected: int | None, first_seed: int) -> dict[str, dict[int, list[dict]]]:
    """{arm: {budget: its FINISHED runs, in seed order}}: each family's best trial at the budget, and the selected
    trial's runs."""
    done = [r for r in rows if r["status"] == "FINISHED"]
    out: dict[str, dict[int, list[dict]]] = {}
    for (b, fam), n in family_bests(rows, first_seed).items():
        out.setdefault(fam, {})[b] = sorted((r for r in done if r["budget"] == b and r["number"] == n),
                                            key=lambda r: r["seed"])
    if selected is not None:
        for b in {r["budget"] for r in done if r["number"] == selected}:
            out.setdefault(SELECTED, {})[b] = sorted((r for r in done if r["budget"] == b and r["number"] == selected),
                                                     key=lambda r: r["seed"])
    return {a: out[a] for a in [*strategies.BASELINES, SELECTED] if a in out}


def _point(runs: list[dict], key: str) -> dict:
    return stats.seed_interval([r[key] for r in runs if r[key] is not None], bounds=(0.0, 1.0))  # accuracies


def crossover(a: dict[int, list], b: dict[int, list], resamples: int = stats.BOOTSTRAP, seed: int = 0) -> dict | None:
    """The crossover of two arms from their per-seed per-image values {budget: [[per image] per seed]} (the same
    images at every budget and on both sides): {"budgets" (in order), "diffs" (point, a - b), "cis", "leader" ("a" or
    "b" at the smallest budget), "at" (the first budget where the sign turns, or NONE), "ci" ([low, high], budgets or
    NONE), "share_none" (resamples that never turn)}. None with fewer than two common budgets."""
    common = order(set(a) & set(b))
    if len(common) < 2:
        return None
    tests = {k: stats.two_level_bootstrap(a[k], b[k], resamples, seed) for k in common}
    diffs = [tests[k]["diff"] for k in common]
    lead = 1.0 if diffs[0] >= 0 else -1.0
    turn = lambda ds: next((i for i, d in enumerate(ds) if d * lead < 0), len(common))
    at = turn(diffs)
    # one seed for every budget: the same image and seed draws at each (the arrays have the same shapes)
    boot = np.stack([stats.bootstrap_differences(a[k], b[k], resamples, seed) for k in common], axis=1)
    where = np.array([turn(row) for row in boot])
    lo, hi = np.percentile(where, [2.5, 97.5], method="lower"), np.percentile(where, [2.5, 97.5], method="higher")[1]
    name = lambda i: common[int(i)] if i < len(common) else NONE
    return {"budgets": common, "diffs": diffs, "cis": [tests[k]["ci"] for k in common],
            "leader": "a" if lead > 0 else "b", "at": name(at), "ci": [name(lo[0]), name(hi)],
            "share_none": float((where == len(common)).mean()), "resamples": resamples,
            "seeds": [min(tests[k]["seeds_a"], tests[k]["seeds_b"]) for k in common]}


def summarize(study: dict, names: list[str], objective: str) -> dict | None:
    """The report's learning-curve block, or None when the study has no budget run: {"first_seed", "labels" {budget:
    labels per class on the x axis (0: the train split's mean per class)}, "curves" {arm: {budget: {"number", "id",
    "ood" (seed_interval), "seeds"}}}, "crossovers" [{"a", "b", "metric", ...crossover()}]}."""
    runs = study.get("budgets") or []
    if not runs:
        return None
    key = schema.OBJECTIVE_METRICS.get(objective, schema.VAL_ACC_FINAL)
    rows = [_row(t, key) for t in runs]
    first = min(r["seed"] for r in rows)
    best = schema.tag(study["parent"]["tags"], schema.TAG_BEST_TRIAL, "")
    groups = arms(rows, int(best) if str(best).isdigit() else None, first)
    n_cls = next((r["train_labels"] // r["budget"] for r in rows if r["budget"] and r["train_labels"]), None)
    all_labels = next((r["train_labels"] for r in rows if r["budget"] == 0 and r["train_labels"]), None)
    # x positions: a budget's labels per class; all labels (0) at the train split's mean per class
    labels = {b: b if b else (all_labels / n_cls if all_labels and n_cls else None) for b in {r["budget"] for r in rows}}
    curves = {arm: {b: {"number": rs[0]["number"] if rs else None, "seeds": len(rs), "id": _point(rs, "id"),
                        "ood": _point(rs, "ood"), "run_ids": [r["run_id"] for r in rs]}
                    for b, rs in sorted(per.items(), key=lambda kv: (kv[0] == 0, kv[0]))} for arm, per in groups.items()}
    per_image = {arm: {b: comparisons.per_seed([r["correct"] for r in rs], names) for b, rs in per.items() if rs}
                 for arm, per in groups.items()}
    out = []
    names_ = list(groups)
    same = lambda x, y: all(curves[x][b]["number"] == curves[y].get(b, {}).get("number") for b in curves[x])
    twin = lambda x: any(same(x, f) and same(f, x) for f in curves if f != x)
    for i, x in enumerate(names_):
        for y in names_[i + 1:]:
            if any(a == SELECTED and twin(a) for a in (x, y)):  # the selected trial is a family's best: one arm
                continue
            for metric, field in (("ood", "ood"), ("id", "clean")):
                ax = {b: d[field] for b, d in per_image[x].items() if d and d.get(field)}
                ay = {b: d[field] for b, d in per_image[y].items() if d and d.get(field)}
                c = crossover(ax, ay)
                if c is not None:
                    out.append({"a": x, "b": y, "metric": metric, **c})
    for arm in curves:  # the selected trial as a family's best at every budget: drawn once, named both
        twins = [f for f in curves if f != arm and same(arm, f) and same(f, arm)]
        for b in curves[arm]:
            curves[arm][b]["same_as"] = twins
    return {"first_seed": first, "labels": labels, "budgets": order({r["budget"] for r in rows}),
            "curves": curves, "crossovers": out,
            "note": "per arm and budget: mean over seeds (each seed its own labelled subset) with the 95% t interval; "
                    "ood = ood_acc_mean, id = id_acc; crossover differences on the paired images (ood: the held-out "
                    "shifts' images averaged over shifts and severities; id: the same images clean)"}

"""Paired comparisons on the same images: per-seed per-image accuracy, two-level bootstrap intervals, Holm, budgets."""

from __future__ import annotations

import math

from harness import schema, stats
from harness.stats import BOOTSTRAP, CLAIM_SEEDS as MIN_SEEDS  # a "beats" claim needs >= 3 seeds on each side


# ------------------------------------------------------------------------------------------------ intervals

def bootstrap(a: list[list[float]], b: list[list[float]]) -> dict | None:
    """The paired comparison mean(a) - mean(b) of two configurations, each a list over its seeds of per-image values
    on the same images: stats.two_level_bootstrap (seeds and images resampled, its two-sided p-value under "p"),
    with "n" = its n_images. None when a side is empty or the sides are ragged."""
    if not a or not b or any(len(x) != len(a[0]) for x in a + b):
        return None
    out = stats.two_level_bootstrap(a, b, resamples=BOOTSTRAP, seed=0)
    return {**out, "n": out["n_images"]} if out else None


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values over the comparisons of a page (stats.holm)."""
    return stats.holm(pvalues)


# ------------------------------------------------------------------------------------------ per-image data

def fresh_seeds(reps: list[dict], number) -> list[dict]:
    """A configuration's fresh-seed runs: its FINISHED replicate runs, one per seed (the earliest started: a unit
    whose worker died after its run ended runs again), in seed order (the seed bootstrap draws seed indices, so the
    order is part of the result)."""
    first = {}
    for r in sorted(reps, key=lambda r: (r["start_time"] or 0, r["run_id"])):
        if r["replicate_of"] == number and r["status"] == "FINISHED":
            first.setdefault(r["seed"], r)
    return [first[k] for k in sorted(first, key=lambda k: (k is None, k or 0))]


def seed_corrects(trials: list[dict], reps: list[dict], number) -> list:
    """correct.json of the runs that report a configuration's test numbers: its fresh seeds when it has any (the
    search-time run is left out: it won a maximum over the search on validation, and its test numbers carry that
    winner's curse), else the trial's own run (one seed: "image noise only")."""
    fresh = fresh_seeds(reps, number)
    if fresh:
        return [r["correct"] for r in fresh]
    run = next((t for t in trials if t["number"] == number), None)
    return [run["correct"]] if run is not None else []


def per_seed(corrects: list, names: list[str]) -> dict | None:
    """Per seed, per image: "ood" (correctness averaged over the held-out severity shifts `names` and their
    severities), "clean" (the same images clean; None when not logged) and "shift" {name: averaged over its
    severities}. None when a run lacks correct.json or no shift is common to every run."""
    cs = [c for c in corrects if c and c.get("shifts")]
    if not cs or len(cs) != len(corrects):
        return None
    keys = [(n, sev) for n in names for sev in cs[0]["shifts"].get(n, {}) if all(sev in c["shifts"].get(n, {}) for c in cs)]
    if not keys:
        return None
    n_img = len(cs[0]["shifts"][keys[0][0]][keys[0][1]])

    def avg(c, ks):
        return [sum(c["shifts"][n][sev][i] == "1" for n, sev in ks) / len(ks) for i in range(n_img)]

    clean = ([[float(ch == "1") for ch in c["clean"]] for c in cs]
             if all(c.get("clean") and len(c["clean"]) == n_img for c in cs) else None)
    shifts = {n: [avg(c, [k for k in keys if k[0] == n]) for c in cs] for n in dict.fromkeys(n for n, _ in keys)}
    return {"ood": [avg(c, keys) for c in cs], "clean": clean, "shift": shifts, "seeds": len(cs), "n": n_img}


def mean_of(values: list[list[float]]) -> float:
    """The mean over seeds and images (every seed sees the same images)."""
    return sum(map(sum, values)) / (len(values) * len(values[0]))


def image_accuracy(corrects: list, names: list[str]) -> tuple[list | None, list | None]:
    """(per-image accuracy under shift, per-image clean accuracy), each averaged over seeds (the figures' view)."""
    d = per_seed(corrects, names)
    if d is None:
        return None, None
    avg = [sum(col) / len(col) for col in zip(*d["ood"])]
    return avg, ([sum(col) / len(col) for col in zip(*d["clean"])] if d["clean"] else None)


# ---------------------------------------------------------------------------------------- the comparisons

def hindsight_best(done: list[dict], trials: list[dict], reps: list[dict], names: list[str]) -> tuple:
    """(row, its per-seed data) of the completed trial with the highest mean OOD accuracy over the paired images
    (the metric the regret compares on; ties: the lower trial number); (None, None) without per-image data."""
    best = None
    for r in done:
        d = per_seed(seed_corrects(trials, reps, r["number"]), names)
        if d is None:
            continue
        key = (mean_of(d["ood"]), -(r["number"] or 0))
        if best is None or key > best[0]:
            best = (key, r, d)
    return (best[1], best[2]) if best else (None, None)


def paired(best: dict | None, oracle: dict | None, baselines: dict, trials: list[dict], reps: list[dict],
           names: list[str]) -> dict:
    """The selected configuration against the best of every baseline family (its own family included, when it
    is not the selected trial itself), OOD and clean subset, and the hindsight-best against the selected one (the
    regret). OOD comparisons carry Holm-adjusted p-values over the m OOD comparisons of the page."""
    if best is None:
        return {}
    sel = per_seed(seed_corrects(trials, reps, best["number"]), names)
    if sel is None:
        return {}
    out = {"n": sel["n"], "resamples": BOOTSTRAP, "selected": best["number"], "selected_seeds": sel["seeds"],
           "baselines": {}, "oracle": None}
    for fam, r in baselines.items():
        if r is None or r["number"] == best["number"]:
            continue
        d = per_seed(seed_corrects(trials, reps, r["number"]), names)
        if d is None or d["n"] != sel["n"]:
            continue
        out["baselines"][fam] = {"number": r["number"], "seeds": d["seeds"], "ood": bootstrap(sel["ood"], d["ood"]),
                                 "clean": bootstrap(sel["clean"], d["clean"]) if sel["clean"] and d["clean"] else None}
    if oracle is not None and oracle["number"] != best["number"]:
        d = per_seed(seed_corrects(trials, reps, oracle["number"]), names)
        if d is not None and d["n"] == sel["n"]:
            out["oracle"] = {"number": oracle["number"], "seeds": d["seeds"], "ood": bootstrap(d["ood"], sel["ood"])}
    rows = [c["ood"] for c in out["baselines"].values() if c["ood"]] + ([out["oracle"]["ood"]] if out["oracle"] else [])
    for c, adj in zip(rows, holm([c["p"] for c in rows])):
        c["p_holm"], c["m"] = adj, len(rows)
    return out


def drops(best: dict, trials: list[dict], reps: list[dict], names: list[str]) -> dict:
    """The selected configuration's clean-minus-shifted differences on the same images: "mean" (over every held-out
    severity shift) and "worst" (the held-out shift with the lowest mean accuracy), each a bootstrap result."""
    d = per_seed(seed_corrects(trials, reps, best["number"]), names)
    if d is None or not d["clean"]:
        return {}
    worst = min(d["shift"], key=lambda n: (mean_of(d["shift"][n]), n))
    return {"mean": bootstrap(d["clean"], d["ood"]), "worst": bootstrap(d["clean"], d["shift"][worst]),
            "worst_shift": worst, "seeds": d["seeds"], "n": d["n"]}


# ------------------------------------------------------------------------------------------------- budgets

def budgets(rows: list[dict], baselines: dict) -> dict:
    """What each compared family was given, from the stored trials: trials (finished, complete, pruned), epochs
    trained in all, the lr grid points tried, and whether its best lr (on validation) sits on the grid's edge."""
    out = {}
    for fam in list(baselines) + ["search"]:  # "search": the sampled (non-baseline) trials
        rs = [r for r in rows if r["baseline"] == ("" if fam == "search" else fam)]
        if not rs:
            continue
        lrs = sorted({r["lr"] for r in rs if isinstance(r.get("lr"), (int, float))})
        best = baselines.get(fam)
        best_lr = best["lr"] if best and isinstance(best.get("lr"), (int, float)) else None
        edge = None if best_lr is None or len(lrs) < 2 else ("low" if best_lr == lrs[0] else
                                                              "high" if best_lr == lrs[-1] else "inside")
        out[fam] = {"trials": len(rs), "complete": sum(r["state"] == "complete" for r in rs),
                    "pruned": sum(r["state"] == "pruned" for r in rs), "failed": sum(r["state"] == "failed" for r in rs),
                    "epochs": sum(len(r["curves"].get(schema.VAL_ACC, [])) for r in rs),
                    "lr_grid": lrs, "best_lr": best_lr, "best_lr_edge": edge, "extended": None}
    return out


def fisher_r2(r2: float | None, slope: float | None, k: int) -> list[float] | None:
    """95% interval of a fit's R^2 over k points through Fisher's z of r = sign(slope) sqrt(R^2); None below 4."""
    if r2 is None or slope is None or k < 4:
        return None
    r = math.copysign(math.sqrt(max(min(r2, 1.0), 0.0)), slope)
    z, half = math.atanh(min(r, 0.999999)), stats.Z95 / math.sqrt(k - 3)
    lo, hi = math.tanh(z - half), math.tanh(z + half)
    # R^2 = r^2: an interval of r that spans 0 puts the lower bound of R^2 at 0
    return [0.0 if lo < 0 < hi else min(lo * lo, hi * hi), max(lo * lo, hi * hi)]

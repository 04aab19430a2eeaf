"""Statistics of the report, pure functions of numbers: intervals, probit fits, Pareto fronts, sample sizes, fANOVA."""

from __future__ import annotations

import math
from statistics import NormalDist

from harness import schema
from harness.strategies import PARAMS, PREFIX_AXES

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(p: float | None, n: int | None, z: float = Z95) -> list[float] | None:
    """Wilson score interval of a binomial proportion p observed on n trials (better than p +- z*se near 0 and 1
    and at the ~100-image test sets of a tiny study)."""
    if p is None or not n or not math.isfinite(p):
        return None
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / den
    return [max(0.0, centre - half), min(1.0, centre + half)]


def probit(p: float, n: int | None) -> float:
    """Phi^-1(p) with p clipped to [1/(2n), 1 - 1/(2n)] (Miller et al. 2021): 0% or 100% would be infinite."""
    eps = 1 / (2 * n) if n else 1e-4
    return NormalDist().inv_cdf(min(max(p, eps), 1 - eps))


def fit_line(xs: list[float], ys: list[float]) -> dict | None:
    """Least squares y = slope * x + intercept with R^2; None below 3 points or without spread in x."""
    k = len(xs)
    if k < 3:
        return None
    mx, my = sum(xs) / k, sum(ys) / k
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx < 1e-12:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"slope": slope, "intercept": intercept, "r2": 1 - ss_res / ss_tot if ss_tot > 1e-12 else None, "n": k}


def on_the_line(points: dict, n: int | None) -> dict | None:
    """Accuracy-on-the-line for {trial: (id_acc, ood_acc)}: the probit fit and each trial's effective robustness
    ood - Phi(slope * probit(id) + intercept), in accuracy units (Taori et al. 2020; Miller et al. 2021)."""
    keys = [t for t, (x, y) in points.items() if x is not None and y is not None]
    fit = fit_line([probit(points[t][0], n) for t in keys], [probit(points[t][1], n) for t in keys])
    if fit is None:
        return None
    nd = NormalDist()
    fit["effective_robustness"] = {t: points[t][1] - nd.cdf(fit["slope"] * probit(points[t][0], n) + fit["intercept"])
                                   for t in keys}
    return fit


def pareto(points: dict) -> list:
    """Keys of the non-dominated points of {key: (id, ood)} (both maximized)."""
    return sorted(k for k, (a, b) in points.items()
                  if not any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for a2, b2 in points.values()))


def infer_test_size(values: list[float], limit: int = 20000) -> int | None:
    """The smallest n for which every accuracy is a multiple of 1/n: the test-set size, which the study does not
    log. Needs >= 3 distinct values; below n = 10 the guess is refused (an accuracy of 0.5 fits n = 2)."""
    vals = sorted({v for v in values if v is not None and 0 < v < 1})
    if len(vals) < 3:
        return None
    for n in range(10, limit + 1):
        if all(abs(v * n - round(v * n)) < 1e-6 for v in vals):
            return n
    return None


def mean_sd(values: list) -> dict:
    """Mean and sample sd (n - 1; None below 2 values) of the non-missing values, which are kept as they are."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "sd": None, "n": 0, "values": []}
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return {"mean": mean, "sd": sd, "n": len(vals), "values": vals}


def importances(rows: list[dict], search: dict, axes=PREFIX_AXES) -> dict:
    """fANOVA importances (Optuna) of the hyperparameter axes (strategies.PARAMS names; a study's come from its
    strategies' entries) for ID and for OOD accuracy of report rows ({id_acc, ood_acc_mean, and a value per axis}).
    Every trial enters one search space: an axis a trial lacks, or a conditional one whose condition it fails
    (unfreeze_epoch without frozen groups), takes the axis's absent value (0: the value MLflow logs for
    unfreeze_epoch); a trial without a value for an axis that has none (lr: the linear probe) is left out. Tiny studies
    get a note, not an error."""
    import optuna

    done = [r for r in rows if r[schema.ID_ACC] is not None and all(_axis_value(r, a) is not None for a in axes)]
    out = {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line per target
    try:
        for target in (schema.ID_ACC, schema.OOD_ACC_MEAN):
            out[target] = _fanova(done, search, target, axes)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return out


def _axis_value(r: dict, name: str):
    """A row's value on an axis as fANOVA reads it (its own, else the axis's absent value; None: left out)."""
    p, v = PARAMS[name], r.get(name)
    if p.when and not r.get(p.when):
        return p.absent
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (p.log and v <= 0):
        return p.absent
    return int(v) if p.kind == "int" else v


def _distribution(name: str, values: list, search: dict):
    """An axis's distribution: an int's spans its trials' values; a float's also its search_space.json bounds
    ({"low", "high"}, or an older [low, high])."""
    from optuna.distributions import FloatDistribution, IntDistribution

    p = PARAMS[name]
    if p.kind == "int":
        return IntDistribution(min(values), max(values))
    space = search.get(name) or {}
    bounds = [space.get("low"), space.get("high")] if isinstance(space, dict) else list(space)[:2]
    vals = values + [v for v in bounds if isinstance(v, (int, float)) and not isinstance(v, bool)
                     and (v > 0 or not p.log)]
    return FloatDistribution(min(vals), max(vals), log=p.log and min(vals) > 0)  # an absent 0: a linear scale


def _fanova(done: list[dict], search: dict, target: str, axes) -> dict:
    import optuna

    use = [r for r in done if r[target] is not None]
    if len(use) < 3:
        return {"note": f"needs at least 3 completed trials, has {len(use)}"}
    try:
        values = {a: [_axis_value(r, a) for r in use] for a in axes}
        dists = {a: _distribution(a, vals, search) for a, vals in values.items()}
        varying = [a for a, vals in values.items() if len(set(vals)) > 1]
        if not varying:
            return {"note": "no hyperparameter varies across the completed trials"}
        mem = optuna.create_study(direction="maximize")
        mem.add_trials([optuna.trial.create_trial(
            params={a: values[a][i] for a in axes}, distributions=dists,
            value=r[target], user_attrs={target: r[target]}) for i, r in enumerate(use)])
        imp = optuna.importance.get_param_importances(
            mem, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=varying,
            target=lambda t, key=target: t.user_attrs[key])
        return {"values": {k: float(v) for k, v in imp.items()}, "n": len(use)}
    except Exception as e:  # fANOVA on a handful of points can fail in many ways; the page says which
        return {"note": f"importance could not be computed ({type(e).__name__}: {e})"}


# two-sided 95% Student t quantiles t_{0.975, df}, df = 1..10 (replicates are few: 3 seeds have df = 2)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t975(df: int) -> float:
    """t_{0.975, df}: the table above, then Cornish-Fisher's first correction to the normal quantile (error < 0.01)."""
    if df <= len(T975):
        return T975[df - 1]
    return Z95 + (Z95 ** 3 + Z95) / (4 * df)


def seed_interval(values: list) -> dict:
    """Mean, sample sd and the 95% t interval of the mean over seed replicates (None below 2 values)."""
    out = mean_sd(values)
    if out["n"] >= 2:
        half = t975(out["n"] - 1) * out["sd"] / math.sqrt(out["n"])
        out["ci"] = [out["mean"] - half, out["mean"] + half]
        out["half"] = half
    else:
        out["ci"] = out["half"] = None
    return out


BOOTSTRAP = 2000  # resamples: the 2.5% / 97.5% percentiles move by ~0.2 points between seeds of the resampling


def paired_bootstrap(a: list[float], b: list[float], resamples: int = BOOTSTRAP, seed: int = 0) -> dict | None:
    """Paired bootstrap over images of mean(a) - mean(b), where a[i] and b[i] are two configurations' accuracy on
    image i (averaged over shifts, severities and seeds): numpy default_rng(seed) draws a (resamples x n) matrix of
    image indices, the difference of means on each row, and the 2.5 / 97.5 percentiles (linear interpolation) are the
    95% interval. Significant when the interval excludes 0."""
    import numpy as np

    if not a or len(a) != len(b):
        return None
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    boot = d[idx].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"diff": float(d.mean()), "ci": [float(lo), float(hi)], "n": len(d), "resamples": resamples,
            "significant": bool(lo > 0 or hi < 0)}

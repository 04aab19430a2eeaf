"""Statistics of the report, pure functions of numbers: intervals (Wilson, t, paired bootstraps), Holm, probit fits,
Pareto fronts, sample sizes, fANOVA, the ECE a calibrated model scores."""

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


def t975(df: int) -> float:
    """t_{0.975, df}, the two-sided 95% Student t quantile (scipy.stats.t; t_{0.975, 2} = 4.303 for 3 seeds)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def seed_interval(values: list, bounds: tuple[float, float] | None = None) -> dict:
    """Mean, sample sd and the 95% t interval of the mean over seed replicates (None below 2 values). With `bounds`
    (an accuracy's (0, 1)), the interval is cut to them: the mean lies within, so the cut interval covers it whenever
    the t interval does (the label-budget study's LP-FT at 50 labels a class, 3 seeds, printed 81.9 [24.1, 139.6]%
    before); "half" stays the t half-width."""
    out = mean_sd(values)
    if out["n"] >= 2:
        half = t975(out["n"] - 1) * out["sd"] / math.sqrt(out["n"])
        lo, hi = bounds or (-math.inf, math.inf)
        out["ci"] = [max(lo, out["mean"] - half), min(hi, out["mean"] + half)]
        out["half"] = half
    else:
        out["ci"] = out["half"] = None
    return out


BOOTSTRAP = 2000  # resamples: the 2.5% / 97.5% percentiles move by ~0.2 points between seeds of the resampling
CLAIM_SEEDS = 3  # seeds each side needs before a difference may be claimed (issue 22): 2 seeds give 1 df of spread


def _resampled_differences(a, b, resamples: int, seed: int):
    """The bootstrap distribution of mean(a) - mean(b) for (seeds x images) arrays a and b on the same images: each
    resample draws n image indices (shared by both sides: paired), then a's seeds and b's seeds, each with
    replacement, in that order from numpy default_rng(seed); the statistic averages the drawn seeds' rows over the
    drawn images. Vectorised through counts: with w the seed counts and c the image counts of a resample,
    mean = (w @ a @ c) / (seeds * n), so 2000 resamples x 3 seeds x 1000 images is a few (2000 x 1000) arrays."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = a.shape[1]
    images = rng.integers(0, n, size=(resamples, n))
    seeds_a = rng.integers(0, a.shape[0], size=(resamples, a.shape[0]))
    seeds_b = rng.integers(0, b.shape[0], size=(resamples, b.shape[0]))

    def counts(idx, k):  # (resamples, k): how often each index was drawn in each resample
        rows = np.arange(len(idx))[:, None] * k
        return np.bincount((idx + rows).ravel(), minlength=len(idx) * k).reshape(len(idx), k).astype(float)

    c = counts(images, n)

    def side(x, drawn):
        return ((counts(drawn, x.shape[0]) @ x) * c).sum(1) / (x.shape[0] * n)

    return side(a, seeds_a) - side(b, seeds_b)


def bootstrap_differences(a: list, b: list, resamples: int = BOOTSTRAP, seed: int = 0):
    """The resampled differences two_level_bootstrap takes its interval from (numpy array, one per resample): for
    callers that need the joint distribution of several comparisons drawn alike (the same seed gives the same image
    and seed draws to arrays of the same shapes: harness.budget_curves' crossover)."""
    return _resampled_differences(_matrix(a, "side a"), _matrix(b, "side b"), resamples, seed)


def _matrix(x, what: str):
    import numpy as np

    try:
        m = np.asarray(x, dtype=float)
    except ValueError:
        raise ValueError(f"{what}: every seed needs the same number of per-image values") from None
    if m.ndim != 2 or 0 in m.shape or not np.isfinite(m).all():
        raise ValueError(f"{what}: need a non-empty list of seeds, each a list of finite per-image values; "
                         f"got shape {m.shape}")
    return m


def two_level_bootstrap(a: list, b: list, resamples: int = BOOTSTRAP, seed: int = 0) -> dict | None:
    """Paired two-level bootstrap of mean(a) - mean(b), a[s][i] and b[s][i] being side a's and side b's value
    (correctness 0/1, or a mean over shifts and severities) on image i under training seed s, the same images i on
    both sides, any number of seeds per side. Seeds and images are crossed factors (every seed sees every image), so
    each resample draws images (shared by both sides) and, independently per side, seeds, with replacement
    (_resampled_differences): Owen 2007's "pigeonhole" bootstrap of crossed random effects, mildly conservative by
    his analysis. The 95% interval is the 2.5 / 97.5 percentiles (numpy, linear interpolation).
    The p-value is the percentile bootstrap's two-sided one, p = 2 min(P*(d <= 0), P*(d >= 0)), each tail with the
    +1 of a Monte Carlo test (Davison & Hinkley 1997, ch. 4) so it is never 0: (1 + #{d* <= 0}) / (R + 1); p < 0.05
    iff the interval excludes 0, up to that +1. A side with one seed has no seed level (level "image noise only": its
    training randomness is missing from the interval); a claim needs CLAIM_SEEDS seeds on each side ("claimable").
    Returns None when either side is empty; raises ValueError on ragged or mismatched sides."""
    import numpy as np

    if not len(a) or not len(b) or not len(a[0]) or not len(b[0]):
        return None
    x, y = _matrix(a, "side a"), _matrix(b, "side b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"paired bootstrap: side a has {x.shape[1]} images, side b {y.shape[1]}; the same images "
                         f"are needed on both sides")
    boot = _resampled_differences(x, y, resamples, seed)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    tail = min(int((boot <= 0).sum()), int((boot >= 0).sum()))
    sa, sb = x.shape[0], y.shape[0]
    return {"diff": float(x.mean() - y.mean()), "ci": [float(lo), float(hi)], "n_images": x.shape[1],
            "seeds_a": sa, "seeds_b": sb, "resamples": resamples,
            "level": "seeds and images" if min(sa, sb) >= 2 else "image noise only",
            "claimable": sa >= CLAIM_SEEDS and sb >= CLAIM_SEEDS, "significant": bool(lo > 0 or hi < 0),
            "p": min(1.0, 2 * (1 + tail) / (resamples + 1))}


def paired_bootstrap(a: list[float], b: list[float], resamples: int = BOOTSTRAP, seed: int = 0) -> dict | None:
    """The one-level paired bootstrap over images of mean(a) - mean(b), a[i] and b[i] two configurations' value on
    image i (seeds averaged first, so training randomness is left out): two_level_bootstrap with one seed a side,
    which draws the same image indices as before it existed. {"diff", "ci", "n", "resamples", "significant", "p"}."""
    if not a or len(a) != len(b):
        return None
    out = two_level_bootstrap([a], [b], resamples, seed)
    return {"diff": out["diff"], "ci": out["ci"], "n": out["n_images"], "resamples": resamples,
            "significant": out["significant"], "p": out["p"]}


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in the input's order: sort ascending, p_(j) * (k - j + 1)
    (j = 1..k), made non-decreasing by a running maximum and capped at 1. Rejecting where adjusted < alpha controls
    the family-wise error at alpha over the k comparisons of a page. "Beats every baseline" is an
    intersection-union claim, which unadjusted tests already protect (Berger 1982); Holm is the stricter choice and
    also covers each row of the table read alone, so the report applies it to the two-sided bootstrap p-values
    (two_level_bootstrap's "p") of the selected configuration against every family."""
    k = len(pvalues)
    order = sorted(range(k), key=lambda i: pvalues[i])
    out, running = [0.0] * k, 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (k - j) * pvalues[i]))
        out[i] = running
    return out


ECE_SIMS = 1000  # simulated outcomes: the 95% quantile of a calibrated model's ECE moves by ~1% of itself between seeds


def calibrated_ece_reference(confidences, n_bins: int = 15, q: float = 0.95, sims: int = ECE_SIMS, seed: int = 0,
                             debiased: bool = False) -> float:
    """The q-quantile of the ECE that a perfectly calibrated model with these top-1 confidences scores on this many
    images: correctness ~ Bernoulli(confidence), drawn `sims` times (torch.Generator seeded by `seed`), the plug-in
    15-bin ECE of each draw (metrics.binned_ece; debiased: metrics.debiased_ece). Bröcker & Smith 2007's consistency
    resampling: at 60 images a calibrated model's mean plug-in ECE is ~0.12 (issue 22), so a fixed "ECE < 0.10" rule
    measures the sample size; "ECE <= this reference" says the ECE is no worse than calibration explains at this n.
    Simulated in blocks of <= 2e7 draws (190k pooled images x 1000 sims would be 1.5 GB at once)."""
    import torch

    from harness import metrics

    conf = torch.as_tensor(confidences, dtype=torch.float64).flatten()
    if not len(conf) or not bool(((conf >= 0) & (conf <= 1)).all()):
        raise ValueError(f"calibrated_ece_reference: need confidences in [0, 1], got {len(conf)} values")
    gen = torch.Generator().manual_seed(seed)
    block = max(1, min(sims, 20_000_000 // len(conf)))
    out = []
    for start in range(0, sims, block):
        correct = (torch.rand(min(block, sims - start), len(conf), generator=gen, dtype=torch.float64) < conf).double()
        if debiased:
            out += [metrics.debiased_ece(conf, c, n_bins) for c in correct]
        else:
            out.append(metrics.binned_ece(conf, correct, n_bins))
    values = torch.tensor(out, dtype=torch.float64) if debiased else torch.cat(out)
    return float(torch.quantile(values, q))


def calibration_at_n(confidences, correct, n_bins: int = 15, q: float = 0.95) -> dict:
    """A pool's calibration judged at its sample size: {"ece": plug-in ECE, "ece_debiased" (Kumar et al. 2019),
    "ece_calibrated_q": calibrated_ece_reference's q-quantile of the plug-in ECE at these confidences, "n"}. A rule
    passes the plug-in ECE when it is <= ece_calibrated_q (nothing beyond what calibration explains at this n)."""
    import torch

    from harness import metrics

    conf = torch.as_tensor(confidences, dtype=torch.float64).flatten()
    hits = torch.as_tensor(correct, dtype=torch.float64).flatten()
    return {"ece": metrics.binned_ece(conf, hits, n_bins).item(),
            "ece_debiased": metrics.debiased_ece(conf, hits, n_bins),
            "ece_calibrated_q": calibrated_ece_reference(conf, n_bins, q), "n": len(conf)}

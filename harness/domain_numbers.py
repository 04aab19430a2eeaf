"""Real domains in the report (shifts.domains): each domain's accuracy, its paired comparisons, its accuracy-on-the-line
fit, and how well the trials' ranking under the simulated shifts predicts their ranking on it (Spearman, bootstrap)."""

from __future__ import annotations

import numpy as np

from harness import comparisons, schema
from harness.stats import BOOTSTRAP, on_the_line

DOMAIN_FAMILY = "domain"  # harness.suite.FAMILIES' family of a shifts.domains set (read from the parent's tag)


def names(shifts: dict) -> list[str]:
    """The study's real domains (sets of family domain, domain.<name>), in logged order."""
    return [n for n in shifts["sets"] if shifts["families"].get(n) == DOMAIN_FAMILY]


def spearman(x: list[float], y: list[float]) -> float | None:
    """scipy.stats.spearmanr's rho of two paired lists; None below 3 pairs or when one side is constant (undefined)."""
    from scipy import stats as sps

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(sps.spearmanr(x, y).statistic)


def _row_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of a and b ([B, T]): the Pearson correlation of average ranks (ties share
    their mean rank); NaN for a row with no spread on one side."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    den = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, (ra * rb).sum(1) / np.where(den > 1e-12, den, 1), np.nan)


def spearman_bootstrap(sim: np.ndarray, dom: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 0) -> dict | None:
    """95% percentile interval of Spearman's rho between the trials' simulated-shift accuracy and their accuracy on a
    domain, both sources of its noise resampled: the trials (T drawn with replacement: which configurations a study
    happened to try) and, within each, the images of each side (the same draw for every trial: paired), as a study
    with other trials and other test images would see it. sim [T, n_sim] and dom [T, n_dom]: per-trial, per-image
    accuracy (one column each when only the accuracies are known). Resamples where a side has no spread (rho
    undefined) are left out and counted."""
    sim, dom = np.asarray(sim, dtype=float), np.asarray(dom, dtype=float)
    t = len(sim)
    if t < 3 or len(dom) != t:
        return None
    rng = np.random.default_rng(seed)
    trials = rng.integers(0, t, size=(resamples, t))

    def accs(m: np.ndarray) -> np.ndarray:  # [B, T]: each resample's per-trial accuracy on its drawn images
        n = m.shape[1]
        counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])  # [B, n]
        return (counts @ m.T) / n

    a, b = accs(sim), accs(dom)
    rows = np.arange(resamples)[:, None]
    rho = _row_spearman(a[rows, trials], b[rows, trials])
    ok = rho[np.isfinite(rho)]
    if len(ok) < resamples / 2:  # mostly undefined: no interval to speak of
        return None
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return {"ci": [float(lo), float(hi)], "resamples": resamples, "undefined": int(resamples - len(ok)), "seed": seed}


def _bits(text: str | None) -> list[float] | None:
    return [float(ch == "1") for ch in text] if text else None


def _per_image(t: dict, test: list[str], name: str) -> tuple[list | None, list | None]:
    """A trial run's per-image accuracy under the simulated test shifts (averaged over shifts and severities: its
    mean is ood_acc_mean) and its per-image correctness on domain `name`; None where correct.json lacks them."""
    c = t.get("correct") or {}
    d = comparisons.per_seed([c], test) if c.get("shifts") else None
    return (d["ood"][0] if d else None), _bits(((c.get("domains") or {}).get(name) or {}).get("1"))


def ranking(done: list[dict], trials: list[dict], test: list[str], name: str) -> dict | None:
    """Does the ranking of the completed trials by mean accuracy under the simulated held-out shifts (ood_acc_mean)
    predict their ranking on domain `name`? Spearman's rho (scipy) over the trials' search-time runs, its bootstrap
    interval over trials and images (spearman_bootstrap), and the best trial by each."""
    by_number = {t["number"]: t for t in trials}
    pts = [(r["number"], r[schema.OOD_ACC_MEAN], r["shift_mean"].get(name)) for r in done
           if r[schema.OOD_ACC_MEAN] is not None and r["shift_mean"].get(name) is not None]
    if len(pts) < 3:
        return None
    sim, dom = [p[1] for p in pts], [p[2] for p in pts]
    images = [_per_image(by_number.get(n, {}), test, name) for n, _, _ in pts]
    paired_images = all(s is not None and d is not None for s, d in images) and len({len(s) for s, _ in images}) == 1 \
        and len({len(d) for _, d in images}) == 1
    if paired_images:
        boot = spearman_bootstrap(np.array([s for s, _ in images]), np.array([d for _, d in images]))
    else:  # no per-image correctness (an older study): the trials alone are resampled
        boot = spearman_bootstrap(np.array(sim)[:, None], np.array(dom)[:, None])
    best = lambda i: max(pts, key=lambda p: (p[i], -p[0]))[0]  # ties: the lower trial number
    return {"rho": spearman(sim, dom), "ci": boot["ci"] if boot else None, "bootstrap": boot, "trials": len(pts),
            "resampled": "trials and images" if paired_images else "trials",
            "best_simulated": best(1), "best_domain": best(2),
            "points": [{"number": n, "simulated": s, "domain": d} for n, s, d in pts]}


def _as_shift(correct: dict | None, name: str) -> dict | None:
    """correct.json with domain `name` in the place of the shifts (step 1), so comparisons.paired reads it."""
    dom = ((correct or {}).get("domains") or {}).get(name)
    return {"clean": None, "shifts": {name: dom}} if dom else None


def summarize(done: list[dict], trials: list[dict], reps: list[dict], best: dict | None, baselines: dict,
              shifts: dict, n_shift) -> dict:
    """Per real domain: the selected trial's accuracy, its paired comparisons with each baseline family's best on the
    domain's images (comparisons.paired: fresh seeds, two-level bootstrap, Holm), the accuracy-on-the-line fit of
    domain against ID accuracy (probit, n = the domain's images), and the ranking figures (ranking). {} without
    real domains."""
    out = {}
    for name in names(shifts):
        t_d = [{**t, "correct": _as_shift(t.get("correct"), name)} for t in trials]
        r_d = [{**r, "correct": _as_shift(r.get("correct"), name)} for r in reps]
        sizes = {len(c["shifts"][name]["1"]) for c in (t["correct"] for t in t_d) if c}
        n = sizes.pop() if len(sizes) == 1 else n_shift
        accs = [r["shift_mean"].get(name) for r in done if r["shift_mean"].get(name) is not None]
        out[name] = {
            "name": name.split(".", 1)[1] if "." in name else name, "n": n,
            "selected_acc": best["shift_mean"].get(name) if best else None,
            "mean_acc": sum(accs) / len(accs) if accs else None,
            "paired": comparisons.paired(best, None, baselines, t_d, r_d, [name]),
            "on_the_line": on_the_line({r["number"]: (r[schema.ID_ACC], r["shift_mean"].get(name)) for r in done}, n),
            "ranking": ranking(done, trials, shifts["test"], name),
        }
    return out

"""The report's statistics: Wilson intervals, probit fits, Pareto fronts, test-set sizes, fANOVA importances."""

from __future__ import annotations

import math

import pytest

from harness import stats


def test_statistics_helpers():
    """Wilson matches the textbook value; probit clips at 1/(2n); the line fit recovers a known line with R^2 = 1
    and zero effective robustness; the Pareto front keeps the non-dominated points; the test-set size is the
    smallest n making every accuracy a multiple of 1/n."""
    lo, hi = stats.wilson(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert stats.probit(1.0, 50) == pytest.approx(stats.probit(1 - 1 / 100, 50))
    assert math.isfinite(stats.probit(0.0, 50))
    nd = stats.NormalDist()
    pts = {i: (x, nd.cdf(0.8 * nd.inv_cdf(x) - 0.2)) for i, x in enumerate([0.3, 0.5, 0.7, 0.9])}
    fit = stats.on_the_line(pts, 10_000)
    assert fit["slope"] == pytest.approx(0.8) and fit["r2"] == pytest.approx(1.0)
    assert all(abs(v) < 1e-9 for v in fit["effective_robustness"].values())
    assert stats.on_the_line({0: (0.5, 0.4), 1: (0.6, 0.5)}, 100) is None  # 2 points: no fit
    assert stats.pareto({"a": (0.9, 0.5), "b": (0.8, 0.6), "c": (0.7, 0.5), "d": (0.9, 0.4)}) == ["a", "b"]
    assert stats.infer_test_size([43 / 180, 17 / 180, 93 / 180, 1 / 180]) == 180
    assert stats.infer_test_size([0.5, 0.25]) is None  # too few distinct values to tell


def test_importances_note_instead_of_crash():
    """Parameter importances: a study with too few trials, or with nothing varying, gets a note; a real spread
    gets a number per varying hyperparameter that sum to 1, with unfreeze_epoch included although conditional."""
    few = [{"id_acc": 0.5, "ood_acc_mean": 0.4, "lr": 0.01, "freeze_layers": 0, "unfreeze_epoch": 0}] * 2
    assert "note" in stats.importances(few, {})["id_acc"]
    same = [{"id_acc": 0.5 + i / 100, "ood_acc_mean": 0.4, "lr": 0.01, "freeze_layers": 0, "unfreeze_epoch": 0}
            for i in range(5)]
    assert "note" in stats.importances(same, {})["ood_acc_mean"]
    rows = [{"id_acc": 0.3 + 0.05 * k + 0.01 * i, "ood_acc_mean": 0.2 + 0.03 * e, "lr": 10 ** (-3 + i / 4),
             "freeze_layers": k, "unfreeze_epoch": e if k else 0}
            for i, (k, e) in enumerate([(0, 0), (1, 1), (2, 2), (3, 1), (4, 3), (2, 3), (1, 2), (0, 0)])]
    imp = stats.importances(rows, {})
    vals = imp["id_acc"]["values"]
    assert set(vals) == {"lr", "freeze_layers", "unfreeze_epoch"} and sum(vals.values()) == pytest.approx(1.0)


def test_quantiles_and_intervals_match_scipy_and_tables():
    """t975 is scipy's t.ppf(0.975, df) and the printed table (t_{0.975, 11} = 2.2010, 2 -> 4.3027); seed_interval is
    mean +- t * sd / sqrt(n) with numpy's sd; Z95 is scipy's normal quantile; the closed-form Wilson interval equals
    scipy's binomtest(k, n).proportion_ci(method="wilson") at integer counts."""
    import numpy as np
    from scipy.stats import binomtest, norm, t

    assert stats.t975(11) == pytest.approx(2.2010, abs=5e-5) and stats.t975(2) == pytest.approx(4.3027, abs=5e-5)
    assert stats.t975(30) == pytest.approx(2.0423, abs=5e-5)
    for df in (1, 2, 5, 11, 40, 200):
        assert stats.t975(df) == pytest.approx(t.ppf(0.975, df), rel=1e-12)
    vals = [0.81, 0.84, 0.79, 0.86]
    out = stats.seed_interval(vals)
    half = t.ppf(0.975, 3) * np.std(vals, ddof=1) / 2
    assert out["ci"] == pytest.approx([np.mean(vals) - half, np.mean(vals) + half])
    assert out["half"] == pytest.approx(half)
    assert stats.seed_interval([0.8])["ci"] is None
    # an accuracy's interval cut to [0, 1]; the half-width stays scipy's t half-width
    wide = [0.99, 1.0, 0.55]
    half = t.ppf(0.975, 2) * np.std(wide, ddof=1) / np.sqrt(3)
    cut = stats.seed_interval(wide, bounds=(0.0, 1.0))
    assert np.mean(wide) + half > 1 and cut["ci"] == pytest.approx([np.mean(wide) - half, 1.0])
    assert cut["half"] == pytest.approx(half) and stats.seed_interval(wide)["ci"][1] > 1
    assert stats.Z95 == pytest.approx(norm.ppf(0.975), rel=1e-14)
    for k, n in ((0, 20), (3, 60), (30, 60), (57, 60), (60, 60), (912, 1000)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert stats.wilson(k / n, n) == pytest.approx([ci.low, ci.high], abs=1e-12)


def test_holm_against_hand_computation():
    """Holm on (0.01, 0.04, 0.03, 0.005, 0.2): sorted 0.005, 0.01, 0.03, 0.04, 0.2 times 5, 4, 3, 2, 1 = 0.025, 0.04,
    0.09, 0.08, 0.2, running maximum 0.025, 0.04, 0.09, 0.09, 0.2, returned in the input's order; capped at 1."""
    assert stats.holm([0.01, 0.04, 0.03, 0.005, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.2])
    assert stats.holm([0.3, 0.6]) == pytest.approx([0.6, 0.6]) and stats.holm([0.9, 0.8]) == [1.0, 1.0]
    assert stats.holm([]) == []


A = [[1, 0, 1], [1, 1, 0]]  # side a: 2 seeds x 3 images
B = [[0, 0, 1], [1, 0, 0]]


def _loop_bootstrap(a, b, resamples, seed):
    """The two-level bootstrap written out: per resample the same rng draws as documented (images, a's seeds,
    b's seeds, as whole matrices), then the plain mean over the drawn seeds' rows at the drawn images."""
    import numpy as np

    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, a.shape[1], size=(resamples, a.shape[1]))
    sa = rng.integers(0, a.shape[0], size=(resamples, a.shape[0]))
    sb = rng.integers(0, b.shape[0], size=(resamples, b.shape[0]))
    out = []
    for r in range(resamples):
        ma = sum(a[s, i] for s in sa[r] for i in imgs[r]) / (len(sa[r]) * len(imgs[r]))
        mb = sum(b[s, i] for s in sb[r] for i in imgs[r]) / (len(sb[r]) * len(imgs[r]))
        out.append(ma - mb)
    return np.array(out)


def test_two_level_bootstrap_against_a_loop_and_the_exact_distribution():
    """On 2 seeds x 3 images a side: the interval is the percentiles of the explicit loop's distribution (same draws);
    the point estimate is the plain difference of means (4/6 - 2/6); over many resamples the distribution's mean and
    sd match the exact one, enumerated over all 3^3 image draws x 2^2 seed draws a side (432 equally likely)."""
    import itertools

    import numpy as np

    out = stats.two_level_bootstrap(A, B, resamples=400, seed=3)
    loop = _loop_bootstrap(A, B, 400, 3)
    assert out["ci"] == pytest.approx(list(np.percentile(loop, [2.5, 97.5])), abs=1e-12)
    assert out["diff"] == pytest.approx(4 / 6 - 2 / 6)
    assert (out["n_images"], out["seeds_a"], out["seeds_b"], out["level"], out["claimable"]) == (
        3, 2, 2, "seeds and images", False)
    tail = min((loop <= 0).sum(), (loop >= 0).sum())
    assert out["p"] == pytest.approx(min(1, 2 * (1 + tail) / 401))
    a, b = np.asarray(A, float), np.asarray(B, float)
    exact = [a[np.ix_(sa, im)].mean() - b[np.ix_(sb, im)].mean()
             for im in itertools.product(range(3), repeat=3)
             for sa in itertools.product(range(2), repeat=2) for sb in itertools.product(range(2), repeat=2)]
    boot = stats._resampled_differences(a, b, 200_000, 0)
    assert boot.mean() == pytest.approx(np.mean(exact), abs=0.003)
    assert boot.std() == pytest.approx(np.std(exact), rel=0.01)


def test_seed_noise_widens_the_interval_and_labels():
    """Three seeds whose accuracies differ by a whole offset (seed noise) on 400 images: the two-level interval is
    wider than the one-level bootstrap of the seed-averaged images; one seed a side is "image noise only" and
    not claimable; ragged or mismatched sides are errors; 2000 x 3 x 1000 takes well under a second."""
    import time

    import numpy as np

    rng = np.random.default_rng(0)
    a = [(rng.random(400) < p).astype(float) for p in (0.70, 0.85, 0.78)]
    b = [(rng.random(400) < p).astype(float) for p in (0.72, 0.60, 0.66)]
    two = stats.two_level_bootstrap(a, b)
    one = stats.paired_bootstrap(list(np.mean(a, 0)), list(np.mean(b, 0)))
    assert two["diff"] == pytest.approx(one["diff"]) and two["claimable"] and two["level"] == "seeds and images"
    assert two["ci"][1] - two["ci"][0] > 1.3 * (one["ci"][1] - one["ci"][0])
    single = stats.two_level_bootstrap(a[:1], b)
    assert single["level"] == "image noise only" and not single["claimable"]
    # one seed a side is the one-level bootstrap, drawing the same images
    assert stats.two_level_bootstrap([a[0]], [b[0]])["ci"] == stats.paired_bootstrap(list(a[0]), list(b[0]))["ci"]
    with pytest.raises(ValueError, match="same images"):
        stats.two_level_bootstrap(a, [x[:-1] for x in b])
    with pytest.raises(ValueError, match="side a"):
        stats.two_level_bootstrap([a[0], a[1][:-1]], b)
    assert stats.two_level_bootstrap([], b) is None
    big_a, big_b = (rng.random((3, 1000)) < 0.8).astype(float), (rng.random((3, 1000)) < 0.7).astype(float)
    stats.two_level_bootstrap(big_a, big_b, resamples=10)  # imports
    t0 = time.perf_counter()
    assert stats.two_level_bootstrap(big_a, big_b)["significant"]
    assert time.perf_counter() - t0 < 1.0

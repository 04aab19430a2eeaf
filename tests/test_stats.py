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

"""The numbers the report derives from a study read back from MLflow (harness.numbers on the shared tiny study)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from harness import numbers

pytestmark = pytest.mark.slow


def test_summary_numbers_match_mlflow_and_the_test_split(shared, loaded):
    """summarize(): trials ranked by the objective (val_acc_final), ID/OOD numbers equal to MLflow's, the test-set
    size inferred from the accuracies equals the real test split, Wilson intervals contain the estimate, the
    baselines are found, and a study with 3 completed trials still gets an accuracy-on-the-line fit."""
    from harness import config, data

    s = numbers.summarize(loaded)
    cfg = config.load(f"{shared['root']}/tiny.toml")
    n_test = len(data.load(cfg.data, cfg.study.seed)["test"][1])
    assert (s["n_test"], s["n_test_source"]) == (n_test, "logged")
    assert s["n_shift_eval"] == min(cfg.shifts.eval_images or n_test, n_test) < n_test  # the tiny study subsets

    client = MlflowClient(shared["uri"])
    done = sorted((r for r in s["trials"] if r.get("rank")), key=lambda r: r["rank"])
    assert len(done) == 3
    objectives = [client.get_run(r["run_id"]).data.metrics["val_acc_final"] for r in done]
    assert objectives == sorted(objectives, reverse=True)
    for r in done:
        m = client.get_run(r["run_id"]).data.metrics
        assert (r["id_acc"], r["ood_acc_mean"], r["ood_acc_worst"]) == (m["id_acc"], m["ood_acc_mean"], m["ood_acc_worst"])
        lo, hi = r["id_acc_ci"]
        assert lo <= r["id_acc"] <= hi and 0 <= lo and hi <= 1
        assert r["worst_shift"] in ("gaussian_noise", "contrast", "label_shift")
    assert s["best"] == done[0]["number"]
    assert set(s["baselines"]) == {"full_ft", "linear_probe", "lp_ft"} and None not in s["baselines"].values()
    fit = s["on_the_line"]["mean"]
    assert fit is not None and fit["n"] == 3
    assert all(c["outcome"] in ("pass", "fail", "inconclusive", "n/a") for c in s["conditions"])
    json.dumps(s, allow_nan=False, default=lambda o: None)  # JSON-able


# ------------------------------------------------------------------ conditions on hand-made summaries (fast, no study)

from harness import comparisons, conditions  # noqa: E402


def _row(number, baseline="", entry="prefix", freeze=2):
    return {"number": number, "baseline": baseline, "entry": entry, "freeze_layers": freeze, "shift_ece": {},
            "final": {}}


def _boot(diff, lo, hi, p=None, claimable=True, n=200):
    """A comparison as comparisons.bootstrap returns it, written by hand."""
    return {"diff": diff, "ci": [lo, hi], "n": n, "n_images": n, "seeds_a": 3 if claimable else 1, "seeds_b": 3,
            "level": "seeds and images" if claimable else "image noise only", "claimable": claimable,
            "significant": lo > 0 or hi < 0, "p": p if p is not None else (0.001 if lo > 0 or hi < 0 else 0.5)}


def _paired(best, fams: dict, oracle=None):
    rows = [c for c in fams.values()] + ([oracle[1]] if oracle else [])
    for c, adj in zip(rows, comparisons.holm([c["p"] for c in rows])):
        c["p_holm"], c["m"] = adj, len(rows)
    return {"n": 200, "selected": best["number"], "selected_seeds": 3,
            "baselines": {f: {"number": i + 10, "seeds": 3, "ood": c, "clean": None} for i, (f, c) in enumerate(fams.items())},
            "oracle": {"number": oracle[0]["number"], "seeds": 1, "ood": oracle[1]} if oracle else None}


def _evaluate(best, paired, oracle=None, drops=None, baselines=None):
    baselines = baselines or {f: _row(c["number"], f) for f, c in paired["baselines"].items()}
    return {c["name"].split(" ")[0] + " " + c["name"].split(" ")[1]: c for c in conditions.evaluate(
        best, oracle or best, baselines, None, 0, 5, paired, drops or {}, 200)}


def _by_prefix(conds, prefix):
    return next(c for k, c in conds.items() if k.startswith(prefix))


@pytest.mark.parametrize("ci, want", [((0.04, 0.08), "pass"), ((0.12, 0.18), "fail"), ((0.06, 0.14), "inconclusive")])
def test_drop_rule_needs_its_interval_on_one_side_of_the_margin(ci, want):
    """OOD drop (margin 10 points): pass only when the whole interval is under 10, fail when it is all above."""
    best = _row(1)
    drops = {"mean": _boot(sum(ci) / 2, *ci), "worst": _boot(0.5, 0.45, 0.55), "worst_shift": "contrast",
             "seeds": 3, "n": 200}
    conds = _evaluate(best, _paired(best, {"full_ft": _boot(0.05, 0.02, 0.08)}), drops=drops)
    assert _by_prefix(conds, "OOD accuracy")["outcome"] == want
    assert _by_prefix(conds, "Worst-shift")["outcome"] == "fail"  # 45-55 points against a 20-point margin
    c = _by_prefix(conds, "OOD accuracy")
    assert c["interval"] == list(ci) and c["n"] == {"images": 200, "seeds": 3} and "10 points" in c["rule"]


@pytest.mark.parametrize("ci, want", [((-0.01, 0.015), "pass"), ((0.025, 0.06), "fail"), ((0.0, 0.04), "inconclusive")])
def test_selection_regret_passes_only_under_its_margin(ci, want):
    best, oracle = _row(1), _row(7)
    paired = _paired(best, {"full_ft": _boot(0.05, 0.02, 0.08)}, oracle=(oracle, _boot(sum(ci) / 2, *ci)))
    c = _by_prefix(_evaluate(best, paired, oracle=oracle), "Selection regret")
    assert c["outcome"] == want and c["interval"] == list(ci)
    assert "chosen by that same metric" in c["statistic"]


def test_selection_regret_is_zero_when_the_selected_trial_is_the_hindsight_best():
    best = _row(1)
    c = _by_prefix(_evaluate(best, _paired(best, {"full_ft": _boot(0.05, 0.02, 0.08)})), "Selection regret")
    assert (c["outcome"], c["value"]) == ("pass", 0.0)


def test_beats_every_baseline_three_outcomes_and_its_caveats():
    best = _row(1)
    supports = {"full_ft": _boot(0.05, 0.02, 0.08), "lp_ft": _boot(0.04, 0.01, 0.07)}
    assert _by_prefix(_evaluate(best, _paired(best, supports)), "Beats")["outcome"] == "pass"
    contradicts = {"full_ft": _boot(0.05, 0.02, 0.08), "lp_ft": _boot(-0.04, -0.07, -0.01)}
    assert _by_prefix(_evaluate(best, _paired(best, contradicts)), "Beats")["outcome"] == "fail"
    unsure = {"full_ft": _boot(0.05, 0.02, 0.08), "lp_ft": _boot(0.01, -0.02, 0.04)}
    assert _by_prefix(_evaluate(best, _paired(best, unsure)), "Beats")["outcome"] == "inconclusive"
    # one side with a single seed: image noise only, never a pass
    noise = {"full_ft": _boot(0.05, 0.02, 0.08), "lp_ft": _boot(0.04, 0.01, 0.07, claimable=False)}
    c = _by_prefix(_evaluate(best, _paired(best, noise)), "Beats")
    assert c["outcome"] == "inconclusive" and "image noise only" in c["detail"]
    # Holm: two p-values of 0.03 each pass alone but not adjusted over the 2 comparisons (0.06)
    holm = {"full_ft": _boot(0.05, 0.001, 0.1, p=0.03), "lp_ft": _boot(0.04, 0.001, 0.08, p=0.03)}
    c = _by_prefix(_evaluate(best, _paired(best, holm)), "Beats")
    assert c["outcome"] == "inconclusive" and "Holm p 0.06" in c["detail"]


def test_a_selected_baseline_never_passes_beats_every_baseline():
    """The selection is the linear probe itself: 'the search found nothing better than linear probe', fail; a
    sampled trial with full FT's recipe (freeze nothing) beating everything significantly: inconclusive."""
    best = _row(1, "linear_probe", "linear_probe")
    supports = {"full_ft": _boot(0.05, 0.02, 0.08), "lp_ft": _boot(0.04, 0.01, 0.07)}
    c = _by_prefix(_evaluate(best, _paired(best, supports), baselines={"full_ft": _row(10, "full_ft"),
                   "linear_probe": best, "lp_ft": _row(11, "lp_ft")}), "Beats")
    assert c["outcome"] == "fail" and "the search found nothing better than linear probe" in c["detail"]
    fam = _row(4, "", "prefix", freeze=0)
    c = _by_prefix(_evaluate(fam, _paired(fam, dict(supports))), "Beats")
    assert c["outcome"] == "inconclusive" and "nothing better than full FT" in c["detail"]


def test_holm_equals_its_definition():
    """Holm's adjusted p_(k) = max_{j <= k} min(1, (m - j + 1) p_(j)), against the formula written out."""
    import numpy as np

    rng = np.random.default_rng(3)
    for m in (1, 2, 5, 9):
        p = list(rng.uniform(0, 0.2, m))
        order = np.argsort(p)
        want = np.empty(m)
        for k in range(m):
            want[order[k]] = max(min(1.0, (m - j) * p[order[j]]) for j in range(k + 1))
        assert np.allclose(comparisons.holm(p), want)


def test_fisher_interval_of_r2_matches_scipy():
    from scipy.stats import norm
    import math

    for r2, k in ((0.81, 10), (0.25, 6), (0.95, 30)):
        r = math.sqrt(r2)
        lo, hi = (math.tanh(math.atanh(r) + s * norm.ppf(0.975) / math.sqrt(k - 3)) for s in (-1, 1))
        want = [0.0 if lo < 0 else lo * lo, hi * hi]
        assert comparisons.fisher_r2(r2, 1.0, k) == pytest.approx(want)
    assert comparisons.fisher_r2(0.9, 1.0, 3) is None  # 3 points: no interval
    assert conditions.judge(comparisons.fisher_r2(0.99, 1.0, 40), 0.7, smaller_is_better=False) == "pass"


def test_per_seed_image_accuracy_by_hand():
    """Two seeds, 3 images, shifts a (severities 1, 3) and b (severity 1): each image's accuracy by hand."""
    c1 = {"clean": "111", "shifts": {"a": {"1": "110", "3": "100"}, "b": {"1": "011"}}}
    c2 = {"clean": "101", "shifts": {"a": {"1": "111", "3": "000"}, "b": {"1": "000"}}}
    d = comparisons.per_seed([c1, c2], ["a", "b"])
    assert d["ood"] == [[2 / 3, 2 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3]]
    assert d["clean"] == [[1, 1, 1], [1, 0, 1]] and d["shift"]["b"] == [[0, 1, 1], [0, 0, 0]]
    assert comparisons.per_seed([c1, None], ["a"]) is None


def two_level(a, b, resamples=2000, seed=0):
    """The two-level bootstrap written out with numpy: per resample, n image indices shared by both sides, then each
    side's seeds, drawn with replacement in that order from default_rng(seed); the statistic is the mean over the drawn
    seeds and images; (diff, 2.5th, 97.5th percentile, p = 2 (1 + smaller tail count) / (R + 1))."""
    import numpy as np

    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    img = rng.integers(0, a.shape[1], size=(resamples, a.shape[1]))
    sa, sb = (rng.integers(0, x.shape[0], size=(resamples, x.shape[0])) for x in (a, b))

    def side(x, s):
        return np.take_along_axis(x[s], img[:, None, :].repeat(x.shape[0], 1), axis=2).mean(axis=(1, 2))

    boot = side(a, sa) - side(b, sb)
    tail = min((boot <= 0).sum(), (boot >= 0).sum())
    return a.mean() - b.mean(), *np.percentile(boot, [2.5, 97.5]), min(1.0, 2 * (1 + tail) / (resamples + 1))


def test_bootstrap_against_a_two_level_bootstrap_written_out():
    """comparisons.bootstrap (stats.two_level_bootstrap) equals the numpy resampling above: 3 seeds against 1 and
    3 against 3; one seed on a side is image noise only and never claimable."""
    import numpy as np

    rng = np.random.default_rng(1)
    a = [list(rng.integers(0, 2, 80) * 1.0) for _ in range(3)]
    for b in ([list(rng.integers(0, 2, 80) * 1.0)], [list(rng.integers(0, 2, 80) * 1.0) for _ in range(3)]):
        got = comparisons.bootstrap(a, b)
        d, lo, hi, p = two_level(a, b)
        assert got["diff"] == pytest.approx(d) and got["ci"] == pytest.approx([lo, hi]) and got["p"] == pytest.approx(p)
        assert got["n"] == 80 and got["claimable"] == (len(b) >= 3)
        assert got["level"] == ("seeds and images" if len(b) >= 2 else "image noise only")


@pytest.mark.parametrize("ece, debiased, q95, want", [(0.05, 0.02, 0.07, "pass"), (0.25, 0.2, 0.08, "fail"),
                                                      (0.11, 0.03, 0.12, "inconclusive"), (0.15, 0.05, 0.08, "inconclusive")])
def test_ece_rule_is_judged_at_its_sample_size(ece, debiased, q95, want):
    """Pass: within what a calibrated model scores at this n, and that reference resolves 0.10; fail: beyond it and
    the debiased ECE above 0.10; a calibrated-looking ECE at too small an n (reference 0.12) is inconclusive."""
    from harness import schema

    best = _row(1)
    best["final"] = {schema.OOD_ECE_POOLED: ece, schema.OOD_ECE_POOLED_DEBIASED: debiased,
                     schema.OOD_ECE_POOLED_CALIBRATED_Q95: q95, schema.OOD_ECE_POOLED_N: 330}
    c = _by_prefix(_evaluate(best, _paired(best, {"full_ft": _boot(0.05, 0.02, 0.08)})), "Calibrated at")
    assert c["outcome"] == want and c["n"]["images"] == 330 and c["value"] == ece

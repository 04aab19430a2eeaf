"""The one selection rule (harness.selection), the baselines' grids and their extension (harness.baseline_grid), and
the pruner that never prunes a baseline (harness.sampling): each against a hand computation (issue 22)."""

from __future__ import annotations

import itertools

import optuna
import pytest

from harness import baseline_grid, config, sampling, selection

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ------------------------------------------------------------------------------------------------------ the rule

def test_tie_rule_mean_then_seeds_then_lower_number():
    """Finalists: the top 2 by search-time value (ties to the lower number) plus each family's best. Selection on the
    mean over seeds; equal means go to more seeds, then to the lower number; completion order plays no part."""
    search = {0: 0.80, 1: 0.95, 2: 0.95, 3: 0.90, 4: 0.70, 5: 0.75}
    families = {0: "full_ft", 4: "lp_ft", 5: "lp_ft"}
    # by hand: order 1, 2 (tie, lower first), 3, 0, 5, 4; top 2 = [1, 2]; full_ft's best 0, lp_ft's best 5
    assert selection.finalists(search, families, 2) == [1, 2, 0, 5]
    assert selection.family_bests(search, families) == {"full_ft": 0, "lp_ft": 5}
    # no fresh seeds: the tie 1 vs 2 goes to the lower number
    assert selection.select(search, families, 2) == 1
    # 2 gains a seed of equal value: same mean (0.95), more seeds -> 2
    assert selection.select(search, families, 2, {2: [0.95]}) == 2
    # both get a seed: 1 -> mean 0.925, 2 -> mean 0.90; 0 (full FT) -> (0.80 + 0.99 + 0.99) / 3 = 0.926...
    assert selection.select(search, families, 2, {1: [0.90], 2: [0.85], 0: [0.99, 0.99]}) == 0
    # a non-finalist's seeds are never read: 3 is not in the pool
    assert selection.select(search, families, 2, {3: [1.0, 1.0]}) == 1
    # identical evidence, identical rank: the lower number
    assert selection.ranked({7: [0.5, 0.6], 4: [0.6, 0.5], 9: [0.55]}) == [4, 7, 9]


def test_in_pool_keeps_every_possible_selection():
    """A trial that is a finalist at the end was one when it finished: replay every completion order of a fixture
    and check that in_pool said True for each final finalist (so its weights were saved)."""
    search = {0: 0.9, 1: 0.95, 2: 0.95, 3: 0.7, 4: 0.945}
    families = {3: "lp_ft"}
    final = set(selection.finalists(search, families, 2))
    for order in itertools.permutations(search):
        done = {}
        kept = set()
        for n in order:
            if selection.in_pool(search[n], n, families.get(n, ""), done, families, 2):
                kept.add(n)
            done[n] = search[n]
        assert final <= kept


def test_fresh_runs_one_per_seed_finished_only():
    reps = [{"of": 3, "seed": 1, "status": "FINISHED", "value": 0.8, "start": 10, "run_id": "a"},
            {"of": 3, "seed": 1, "status": "FINISHED", "value": 0.9, "start": 20, "run_id": "b"},  # a re-run: dropped
            {"of": 3, "seed": 2, "status": "FAILED", "value": 0.99, "start": 5, "run_id": "c"},
            {"of": 3, "seed": 2, "status": "FINISHED", "value": 0.7, "start": 30, "run_id": "d"},
            {"of": 5, "seed": 1, "status": "FINISHED", "value": None, "start": 1, "run_id": "e"}]
    assert selection.fresh_values(reps) == {3: [0.8, 0.7]}
    assert [r["run_id"] for r in selection.fresh_runs(reps)[3]] == ["a", "d"]


def test_image_scores_per_objective():
    vc = {"val": "1011", "selection": {"blur": {"1": "110", "3": "100"}, "noise": {"1": "010", "3": "000"}}}
    assert selection.image_scores(vc, "val_acc") == [1.0, 0.0, 1.0, 1.0]
    assert selection.image_scores(vc, "multi") == [1.0, 0.0, 1.0, 1.0]  # the first objective: val_acc
    assert selection.image_scores(vc, "ood_val_acc") == [0.5, 0.5, 0.0]
    assert selection.image_scores(None, "val_acc") is None


def _exact_shares(scores: dict) -> dict:
    """The bootstrap's exact distribution by enumeration: every image draw (n^n, shared) and every seed draw of
    every trial (k^k each), equally likely; the winner by mean, then seeds, then number."""
    numbers = sorted(scores)
    n = len(scores[numbers[0]][0])
    seed_draws = {t: list(itertools.product(range(len(scores[t])), repeat=len(scores[t]))) for t in numbers}
    wins, total = dict.fromkeys(numbers, 0.0), 0
    for idx in itertools.product(range(n), repeat=n):
        for combo in itertools.product(*(seed_draws[t] for t in numbers)):
            vals = {t: sum(scores[t][s][i] for s in draw for i in idx) / (len(draw) * n)
                    for t, draw in zip(numbers, combo)}
            best = min(numbers, key=lambda t: (-round(vals[t], 12), -len(scores[t]), t))
            wins[best] += 1
            total += 1
    return {t: w / total for t, w in wins.items()}


def test_selection_frequency_matches_the_enumerated_bootstrap():
    """3 images; trial 4 has one seed, trial 2 two seeds that disagree on image 1: the exact shares by enumeration
    (27 image draws x 4 seed draws) against 20000 resamples (standard error <= 0.0035: 0.015 is > 4 of them)."""
    scores = {4: [[1.0, 0.0, 1.0]], 2: [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]}
    exact = _exact_shares(scores)
    got = selection.selection_frequency(scores, resamples=20000, seed=1)
    assert set(got) == {2, 4} and sum(got.values()) == pytest.approx(1.0)
    assert 0.05 < exact[4] < 0.95  # a fixture where both win sometimes
    for t in scores:
        assert got[t] == pytest.approx(exact[t], abs=0.015)
    # one trial dominating on every image and seed wins every resample
    assert selection.selection_frequency({1: [[1, 1, 1]], 0: [[0, 0, 0]]}, resamples=200) == {0: 0.0, 1: 1.0}
    # equal everywhere: every resample ties, the lower number takes it
    assert selection.selection_frequency({3: [[1, 0, 1]], 5: [[1, 0, 1]]}, resamples=200) == {3: 1.0, 5: 0.0}


def test_summary_names_fresh_runs_and_shares():
    search, families = {0: 0.9, 1: 0.8}, {1: "full_ft"}
    runs = {0: [{"run_id": "s0", "fresh": False, "val_correct": {"val": "110"}},
                {"run_id": "f0", "fresh": True, "val_correct": {"val": "100"}}],
            1: [{"run_id": "s1", "fresh": False, "val_correct": {"val": "111"}},
                {"run_id": "f1", "fresh": True, "val_correct": {"val": "011"}}]}
    out = selection.summary(search, families, 1, {0: [0.6], 1: [0.9]}, runs, "val_acc")
    assert out["selected"] == 1  # mean 0.85 against 0.75
    assert [r["number"] for r in out["finalists"]] == [1, 0]
    assert out["finalists"][0]["fresh_runs"] == ["f1"] and out["finalists"][0]["seeds"] == 2
    assert sum(r["share"] for r in out["finalists"]) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ grids and extension

def _rows(family, lrs_values, extension=""):
    return [{"number": i, "family": family, "lr": lr, "state": "complete", "value": v, "extension": extension}
            for i, (lr, v) in enumerate(lrs_values)]


def test_extension_adds_the_next_point_beyond_an_edge_within_search_lr():
    """Default grids (0.01 ... 0.3 and 0.001 ... 0.03, step x(30)^(1/4) = x2.3403): full FT best at its lowest point
    gets 0.01 / 2.3403 (inside [1e-3, 0.3]); best at its highest (0.3, the bound) gets nothing unless widening is
    allowed; an interior best stops; the limit of added points stops."""
    cfg = config.load()
    step = 30 ** 0.25
    g = baseline_grid.grid(cfg, "full_ft")
    low = _rows("full_ft", [(lr, 0.9 if i == 0 else 0.5) for i, lr in enumerate(g)])
    assert baseline_grid.extensions(cfg, low, 4) == [
        {"family": "full_ft", "lr": pytest.approx(0.01 / step), "edge": "low",
         "params": {"lr": pytest.approx(0.01 / step), "freeze_layers": 0}}]
    high = _rows("full_ft", [(lr, 0.9 if i == 4 else 0.5) for i, lr in enumerate(g)])
    st = baseline_grid.status(cfg, high)["full_ft"]
    assert st["edge"] == "high" and st["next"] is None and st["stopped"] == "bound"
    wide = config.load(None, ['search.extend_baseline_grid="widen"'])
    assert baseline_grid.status(wide, high)["full_ft"]["next"] == pytest.approx(0.3 * step)
    mid = _rows("full_ft", [(lr, 0.9 if i == 2 else 0.5) for i, lr in enumerate(g)])
    assert baseline_grid.status(cfg, mid)["full_ft"]["stopped"] == "interior"
    # two points added already at the low edge, still the best there: the limit (search.baseline_extensions = 2)
    added = low + _rows("full_ft", [(0.01 / step, 0.5), (0.01 / step ** 2, 0.95)], extension="low")
    for i, r in enumerate(added):
        r["number"] = i
    assert baseline_grid.status(cfg, added)["full_ft"]["stopped"] == "limit"
    # LP-FT best at its top (0.03) extends upward inside search.lr; a waiting point means the sweep is unfinished
    lp = _rows("lp_ft", [(lr, 0.9 if i == 4 else 0.5) for i, lr in enumerate(baseline_grid.grid(cfg, "lp_ft"))])
    assert baseline_grid.status(cfg, lp)["lp_ft"]["next"] == pytest.approx(0.03 * step)
    lp[0]["state"], lp[0]["value"] = "waiting", None
    assert baseline_grid.status(cfg, lp)["lp_ft"]["stopped"] == "unfinished"
    assert baseline_grid.status(config.load(None, ['search.extend_baseline_grid="off"']), low)["full_ft"]["stopped"] == "off"


def test_extension_keys_are_checked():
    for key, bad in (("search.extend_baseline_grid", '"always"'), ("search.baseline_extensions", "-1"),
                     ("study.finalists", "0")):
        with pytest.raises(config.ConfigError) as err:
            config.load(None, [f"{key}={bad}"])
        assert err.value.key == key


# ------------------------------------------------------------------------------------------------------ pruning

def _completed(study, values, baseline=""):
    for v in values:
        t = study.ask()
        if baseline:
            t.set_user_attr("baseline", baseline)
        for step in range(6):
            t.report(v, step)
        study.tell(t, v)


def _pruned_at_epoch_1(study, value, baseline=""):
    t = study.ask()
    if baseline:
        t.set_user_attr("baseline", baseline)
    for step in range(2):
        t.report(value, step)
    return bool(t.should_prune())


def test_a_baseline_is_never_pruned_and_does_not_set_the_median():
    """The study's median pruner: with three searched trials at 0.9 an LP-FT baseline at 0.1 (an absurd lr) is not
    pruned at epoch 1, where a searched trial at 0.1 is; baselines at 1.0 do not raise the bar of a searched trial
    at 0.6 above the searched trials' median 0.5 (with them in it, the median would be 0.75 and prune it)."""
    cfg = config.load(None, ['study.pruner="median"'])
    st = optuna.create_study(direction="maximize", pruner=sampling.pruner(cfg))
    _completed(st, [0.9, 0.9, 0.9])
    assert _pruned_at_epoch_1(st, 0.1, baseline="lp_ft") is False
    assert _pruned_at_epoch_1(st, 0.1) is True
    st2 = optuna.create_study(direction="maximize", pruner=sampling.pruner(cfg))
    _completed(st2, [0.5, 0.5, 0.5])
    _completed(st2, [1.0, 1.0, 1.0, 1.0], baseline="full_ft")
    assert _pruned_at_epoch_1(st2, 0.6) is False
    assert _pruned_at_epoch_1(st2, 0.4) is True
    hb = optuna.create_study(direction="maximize", pruner=sampling.pruner(config.load(None, ['study.pruner="hyperband"'])))
    _completed(hb, [0.9] * 6)
    assert _pruned_at_epoch_1(hb, 0.0, baseline="lp_ft") is False

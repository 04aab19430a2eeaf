"""Label budgets (issue 25): nested stratified subsets, a budget study that resumes without re-running a finished
(budget, trial, seed), the Learning curves numbers recomputed from MlflowClient, bad input."""

from __future__ import annotations

import collections
import json
import math

import pytest
import torch

from conftest import TINY, created_files, mlflow_client

from harness import budget_curves, budgets


def test_subsets_are_nested_and_stratified():
    """Unequal classes (7, 12, 30 images, shuffled order): per seed, each budget's subset holds the smaller budget's,
    exactly b images of every class (counted here from the labels), all for 0; another seed draws another subset."""
    g = torch.Generator().manual_seed(5)
    labels = torch.tensor([0] * 7 + [1] * 12 + [2] * 30)[torch.randperm(49, generator=g)]
    for seed in (1, 2, 3):
        sets = {b: set(budgets.subset(labels, b, seed).tolist()) for b in (1, 2, 5, 7, 0)}
        for small, big in ((1, 2), (2, 5), (5, 7), (7, 0)):
            assert sets[small] <= sets[big], (seed, small, big)
        for b in (1, 2, 5, 7):
            counts = collections.Counter(int(labels[i]) for i in sets[b])
            assert counts == {0: b, 1: b, 2: b}, (seed, b, counts)
        assert sets[0] == set(range(49))
    assert budgets.subset(labels, 5, 1).tolist() != budgets.subset(labels, 5, 2).tolist()


def _diffs(xs, ys):  # a - b per budget, from per-seed per-image lists
    return [sum(map(sum, x)) / (len(x) * len(x[0])) - sum(map(sum, y)) / (len(y) * len(y[0])) for x, y in zip(xs, ys)]


def test_crossover_on_a_fixture():
    """a leads by 30 points with 10 and 20 labels, b by 30 with 40 and all: the crossover is 40, tight (every
    resample turns there); two arms that never turn: 'none'. The point differences equal the means recomputed here."""
    n = 50
    up = lambda k: [[1.0] * k + [0.0] * (n - k)] * 3  # k of n images right, on each of 3 seeds
    a = {10: up(40), 20: up(40), 40: up(10), 0: up(10)}
    b = {10: up(25), 20: up(25), 40: up(25), 0: up(25)}
    c = budget_curves.crossover(a, b)
    assert c["budgets"] == [10, 20, 40, 0] and c["leader"] == "a" and c["at"] == 40 and c["ci"] == [40, 40]
    assert c["diffs"] == pytest.approx(_diffs([a[k] for k in c["budgets"]], [b[k] for k in c["budgets"]]))
    never = budget_curves.crossover({10: up(40), 0: up(40)}, {10: up(10), 0: up(10)})
    assert never["at"] == budget_curves.NONE and never["share_none"] == 1.0


def _config(workdir, budgets_value="[2]"):
    path = workdir / "tiny.toml"
    # two lrs a family: full FT at 0.01 and 0.1 (trials 0, 1), the probe (2), LP-FT at 0.001 and 0.01 (3, 4)
    path.write_text(TINY.replace("n_trials = 4", "n_trials = 5").replace("image_size = 16", "image_size = 8")
                    .replace("epochs = 3", "epochs = 2").replace("baseline_lrs = [0.01]", "baseline_lrs = [0.01, 0.1]"))
    return ["--config", str(path), "--set", f"study.label_budgets={budgets_value}", "--set", "study.budget_seeds=2",
            "--set", "study.report=false", "--set", 'study.registered_model="none"',
            "--set", 'search.extend_baseline_grid="off"']  # no extension trial: the trials are exactly 0-4


def _budget_runs(root):
    client = mlflow_client(root)
    exp = client.get_experiment_by_name("tiny")
    return client, exp, client.search_runs([exp.experiment_id], "tags.`harness.role` = 'budget'", max_results=1000)


@pytest.fixture(scope="module")
def budget_study(tmp_path_factory):
    """One tiny budget study (3 baselines, budget 2, 2 seeds), then re-run with budgets [2, 3] (a resume: the search is
    done, budget 2's units are finished): the run ids after each step."""
    import os

    from harness import study

    root = tmp_path_factory.mktemp("budgets")
    old = os.getcwd()
    os.chdir(root)
    try:
        assert study.main(_config(root)) == 0
        first = {r.info.run_id for r in _budget_runs(root)[2]}
        assert study.main(_config(root, "[2, 3]")) == 0
        grown = _budget_runs(root)[2]
    finally:
        os.chdir(old)
    return root, first, grown


def test_budget_study_runs_once_and_resumes(budget_study):
    """Budget 2, seeds 1 and 2: each lr of full FT (trials 0, 1) and LP-FT (3, 4) on seed 1, the probe (2) and the
    selected trial on both seeds, then each family's best on seed 1 (recomputed here from val_acc_final) on seed 2:
    each (budget, trial, seed) once, FINISHED, on 2 x 5 classes = 10 labels. The re-run with budget 3 added runs only
    budget 3's: every finished (budget 2, trial, seed) keeps its one run."""
    root, first, grown = budget_study
    client, exp, _ = _budget_runs(root)
    runs = [client.get_run(i) for i in first]
    keys = sorted((int(r.data.tags["harness.label_budget"]), int(r.data.tags["harness.replicate_of"]),
                   int(r.data.tags["harness.seed"])) for r in runs)
    parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]
    val = {int(r.data.tags["harness.replicate_of"]): r.data.metrics["val_acc_final"] for r in runs
           if r.data.tags["harness.seed"] == "1"}
    best = lambda ns: max(ns, key=lambda n: (val[n], -n))
    want = {(2, n, 1) for n in range(5)} | {(2, n, 2) for n in (2, best([0, 1]), best([3, 4]))}
    want |= {(2, int(parent.data.tags["harness.best_trial"]), s) for s in (1, 2)}
    assert keys == sorted(want)
    assert all(r.info.status == "FINISHED" and r.data.tags["harness.train_labels"] == "10" for r in runs)
    from harness import schema  # every name a budget run writes is declared (tests/test_schema.py runs no budget)

    assert not {k for r in runs for k in r.data.tags if not schema.is_tag(k) and not k.startswith("mlflow.")}
    assert not {k for r in runs for k in r.data.metrics if not schema.is_metric(k)}
    assert not {k for r in runs for k in r.data.params if not schema.is_param(k)}
    by_budget = collections.defaultdict(set)
    for r in grown:
        by_budget[int(r.data.tags["harness.label_budget"])].add(r.info.run_id)
    assert by_budget[2] == first and len(by_budget[3]) >= 7 and len(grown) == len(first) + len(by_budget[3])
    assert {r.data.tags["harness.train_labels"] for r in grown if r.info.run_id in by_budget[3]} == {"15"}


def test_report_section_recomputed_from_mlflow(budget_study):
    """report.json's label_budgets block against MlflowClient directly: each arm's trial at each budget (the family's
    best val_acc_final on seed 1; the selected trial from the parent's best-trial tag), its mean id_acc and
    ood_acc_mean over seeds with the 95% t interval (scipy), and each crossover's point differences from the runs'
    correct.json (per image: correctness averaged over the held-out shifts and severities). The Markdown carries it."""
    from scipy import stats as st

    from harness.report import markdown, summaries

    root, *_ = budget_study
    client, exp, runs = _budget_runs(root)
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    block = summaries(["tiny"], uri, f"sqlite:///{root / 'mlruns' / 'optuna.db'}")[0]["label_budgets"]
    parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]
    selected = int(parent.data.tags["harness.best_trial"])
    rows = [(int(r.data.tags["harness.label_budget"]), int(r.data.tags["harness.replicate_of"]),
             int(r.data.tags["harness.seed"]), r.data.tags.get("harness.baseline", ""), r) for r in runs]
    expect = {}
    for b in (2, 3):
        for fam in ("full_ft", "linear_probe", "lp_ft"):
            first = [(-r.data.metrics["val_acc_final"], n) for bb, n, s, f, r in rows if bb == b and f == fam and s == 1]
            expect[(fam, b)] = min(first)[1]
        expect[("selected", b)] = selected
    assert set(block["curves"]) == {"full_ft", "linear_probe", "lp_ft", "selected"}
    for (arm, b), n in expect.items():
        got = block["curves"][arm][str(b)]
        mine = sorted((s, r) for bb, nn, s, f, r in rows if bb == b and nn == n)
        assert got["number"] == n and got["seeds"] == len(mine) == 2
        for key, metric in (("id", "id_acc"), ("ood", "ood_acc_mean")):
            vals = [r.data.metrics[metric] for _, r in mine]
            mean, sd = sum(vals) / 2, (sum((v - sum(vals) / 2) ** 2 for v in vals)) ** 0.5
            half = st.t.ppf(0.975, 1) * sd / math.sqrt(2)
            assert got[key]["mean"] == pytest.approx(mean)  # the t interval, cut to an accuracy's [0, 1]
            assert got[key]["ci"] == pytest.approx([max(0.0, mean - half), min(1.0, mean + half)])
    names = ["gaussian_noise", "contrast"]

    def per_image(run):
        c = json.loads(open(client.download_artifacts(run.info.run_id, "correct.json", str(root))).read())
        keys = [(nm, sv) for nm in names for sv in c["shifts"][nm]]
        return [sum(c["shifts"][nm][sv][i] == "1" for nm, sv in keys) / len(keys) for i in range(len(c["shifts"][names[0]]["1"]))]

    cross = [c for c in block["crossovers"] if c["metric"] == "ood"]
    assert cross
    for c in cross:
        d = []
        for b in c["budgets"]:
            side = lambda arm: [per_image(r) for s, r in sorted((s, r) for bb, nn, s, f, r in rows
                                                                 if bb == b and nn == expect[(arm, b)])]
            x, y = side(c["a"]), side(c["b"])
            d.append(sum(map(sum, x)) / (len(x) * len(x[0])) - sum(map(sum, y)) / (len(y) * len(y[0])))
        assert c["diffs"] == pytest.approx(d)
    md = markdown.render([summaries(["tiny"], uri, f"sqlite:///{root / 'mlruns' / 'optuna.db'}")[0]])
    tables = markdown.parse(md)[0]["tables"]
    assert len(tables["Learning curves"]) == 8 and len(tables["Crossovers"]) == len(block["crossovers"])


@pytest.mark.parametrize("value, why", [("[13]", "exceeds the 12 training images"), ("[-1]", "distinct labels"),
                                        ("[2, 2]", "distinct labels")])
def test_bad_budgets_exit_2_and_create_nothing(workdir, capsys, value, why):
    """A budget above the smallest class (labels_per_class 12 in the tiny config), a negative or a repeated one:
    exit 2 naming study.label_budgets, nothing created."""
    from harness import study

    assert study.main(_config(workdir, value)) == 2
    err = capsys.readouterr().err
    assert "study.label_budgets" in err and why in err
    assert created_files(workdir) == []


def test_a_rerun_plans_failed_units_again_and_never_complete_ones(tmp_path):
    """Three budget units: one COMPLETE, one FAIL, one never popped (WAITING). _plan again: the complete one is not
    enqueued again, the failed one is (a second WAITING trial with its key), the waiting one stays one trial; with all
    three complete, nothing is planned (None)."""
    import optuna
    from optuna.trial import TrialState

    from harness import units

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="b", storage=f"sqlite:///{tmp_path / 'o.db'}")
    todo = [units.Unit(budgets.KIND, f"budget:5:{n}:1", {"n": n}) for n in range(3)]
    assert budgets._plan(study, todo) is not None
    comp = units.companion(study)
    for state in (TrialState.COMPLETE, TrialState.FAIL):
        trial, _ = units.next_unit(comp, 0)
        comp.tell(trial, [0.0] if state == TrialState.COMPLETE else None, state=state)
    assert budgets._plan(study, todo) is not None
    keys = collections.Counter((t.user_attrs["unit_key"], t.state.name) for t in comp.get_trials())
    assert keys == {("budget:5:0:1", "COMPLETE"): 1, ("budget:5:1:1", "FAIL"): 1, ("budget:5:1:1", "WAITING"): 1,
                    ("budget:5:2:1", "WAITING"): 1}
    while (got := units.next_unit(comp, 0)) is not None:
        comp.tell(got[0], [0.0])
    assert budgets._plan(study, todo) is None


def test_family_bests_pick_the_best_first_seed_run_per_budget():
    """Per (budget, family): the highest first-seed value among FINISHED runs with a finite value; a tie goes to the
    lower trial number; other seeds, failed runs and NaN never count."""
    row = lambda b, n, s, fam, v, st="FINISHED": {"budget": b, "number": n, "seed": s, "baseline": fam, "status": st,
                                                  "value": v}
    rows = [row(5, 0, 1, "full_ft", 0.50), row(5, 1, 1, "full_ft", 0.70), row(5, 1, 2, "full_ft", 0.10),
            row(5, 0, 2, "full_ft", 0.99), row(5, 3, 1, "lp_ft", 0.60), row(5, 4, 1, "lp_ft", 0.60),
            row(0, 0, 1, "full_ft", 0.90), row(0, 1, 1, "full_ft", 0.95, "FAILED"), row(0, 3, 1, "lp_ft", float("nan")),
            row(0, 4, 1, "lp_ft", 0.40)]
    assert budget_curves.family_bests(rows, 1) == {(5, "full_ft"): 1, (5, "lp_ft"): 3, (0, "full_ft"): 0,
                                                   (0, "lp_ft"): 4}

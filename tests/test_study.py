"""End to end: a tiny real study on CPU with MLflow on sqlite and Optuna on sqlite, both in a temp dir."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from harness import schema, study

from conftest import load_study, mlflow_client

pytestmark = pytest.mark.slow


def _children(client, exp_id, parent_id):
    runs = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}' and tags.`harness.role` != 'soup'",
                              max_results=1000)  # soups (harness.soups) are no trials
    return sorted(runs, key=lambda r: int(r.data.tags["optuna.trial_number"]))


def test_study_end_to_end_layout_baselines_resume_and_pruning(tiny_config, workdir, capsys):
    """One real study, then a resume that adds trials:
    - exit 0; the first three trials are the baselines full_ft, linear_probe, lp_ft, in that order;
    - MLflow: one experiment named after the study, one parent run (run name = study name) holding the resolved
      config, versions, search space, git SHA and shift grid; one child run per trial named trial-NNNN with
      mlflow.parentRunId, optuna tags, params lr/freeze_layers/unfreeze_epoch, per-epoch train_loss/val_acc/
      val_loss (step = epoch), final id_acc and shift curves; the child run id in the trial's user attrs;
    - a second invocation with a larger --n-trials resumes the same study and the same parent run;
    - an enqueued hopeless trial (lr 1e-7), after two that learn, is pruned: KILLED in MLflow, tagged with its epoch,
      curves present."""
    assert study.main(["--config", str(tiny_config), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "harness.ui" in out and "harness.report" in out  # the end tells how to look at the results
    # progress, as plain lines when stdout is not a terminal: trial i of N, epoch, best so far
    assert "trial 0 (1 of 4)  epoch 1/3  train_loss" in out and "\r" not in out
    assert "best so far" in out.split("trial 1 (2 of 4)", 1)[1]

    s = load_study(workdir)
    trials = s.get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4
    assert [t.user_attrs.get("baseline") for t in trials[:3]] == ["full_ft", "linear_probe", "lp_ft"]
    assert trials[0].params["freeze_layers"] == 0
    assert trials[1].params["freeze_layers"] == 4 and trials[1].params["unfreeze_epoch"] >= 3  # never
    assert "lr" not in trials[1].params  # the probe is a logistic regression (harness.probe): no lr
    # LP-FT (issue 11): every group trains from the probe's converged head, at its own lr: a tenth of full FT's
    # (issue 22, Kumar et al. 2022)
    assert trials[2].params["freeze_layers"] == 0 and trials[2].params["lr"] == pytest.approx(0.001)

    client = mlflow_client(workdir)
    exp = client.get_experiment_by_name("tiny")
    parents = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "tiny" and parent.info.status == "FINISHED"
    assert len(parent.data.tags["harness.git_sha"]) >= 7
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config", "versions.json", "search_space.json", "shift_examples.png"} <= arts
    assert "train.epochs" in parent.data.params

    # the best trial's weights: a safetensors artifact on its run that loads into the model
    best_run = parent.data.tags["harness.best_run_id"]
    local = client.download_artifacts(best_run, "model/weights.safetensors", str(workdir))
    from safetensors.torch import load_file

    from harness import models
    model, _ = models.build("resnet8", 5)
    model.load_state_dict(load_file(local))
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert parent.data.tags["harness.best_trial"] == str(best.number)

    children = _children(client, exp.experiment_id, parent.info.run_id)
    assert len(children) == len(trials)
    for t, run in zip(trials, children):
        assert run.info.run_name == f"trial-{t.number:04d}"
        assert run.data.tags["optuna.study_name"] == "tiny"
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        # params: lr (the linear probe has none: probe_c, its logistic regression's C), freeze_layers, unfreeze_epoch
        assert ({"probe_c"} if t.user_attrs.get("baseline") == "linear_probe" else {"lr"}) | \
            {"freeze_layers", "unfreeze_epoch"} <= set(run.data.params)
        hist = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in hist] == list(range(len(hist))) and len(hist) >= 1
        assert client.get_metric_history(run.info.run_id, "train_loss")
        assert client.get_metric_history(run.info.run_id, "val_loss")
        if t.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED"
            assert 0 <= run.data.metrics["id_acc"] <= 1
            assert [m.step for m in client.get_metric_history(run.info.run_id, "shift/gaussian_noise/acc")] == [1, 3]
            assert "ood_acc_mean" in run.data.metrics and "ood_acc_worst" in run.data.metrics
            # CE against the linear probe, trial 0 included (it finished before the probe: backfilled)
            assert run.data.metrics["mce"] > 0 and "shift/contrast/ce" in run.data.metrics
            true, est = (client.get_metric_history(run.info.run_id, f"label_shift/prior_{k}") for k in ("true", "bbse"))
            assert sorted(m.step for m in true) == sorted(m.step for m in est) == list(range(5))
            assert sum(m.value for m in true) == pytest.approx(1.0)
    assert "gaussian_noise:noise" in parent.data.tags["harness.shifts.family"].split(",")

    # resume: three more trials, two that learn (lr 0.1 and 0.05: the median the pruner compares with must come from
    # trials that learn something, not from this tiny study's near-chance baselines and whatever TPE drew) and a
    # hopeless one (lr 1e-7, chance accuracy) that the median pruner must stop
    for lr in (0.1, 0.05, 1e-7):
        s.enqueue_trial({"lr": lr, "freeze_layers": 0})
    assert study.main(["--config", str(tiny_config), "--no-report", "--n-trials", "7"]) == 0
    s = load_study(workdir)
    trials = s.get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 7
    assert len(client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")) == 1
    assert len(client.get_metric_history(parent.info.run_id, "pretrain_loss")) == 2  # logged once, not per resume
    children = _children(client, exp.experiment_id, parent.info.run_id)
    assert len(children) == len(trials)  # the new trial's run sits under the same parent
    hopeless = trials[-1]
    assert hopeless.params["lr"] == pytest.approx(1e-7)
    assert hopeless.state == TrialState.PRUNED, [t.state for t in trials]
    run = client.get_run(hopeless.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["harness.pruned_epoch"] == str(hopeless.user_attrs["pruned_epoch"])
    assert len(client.get_metric_history(run.info.run_id, "val_acc")) == hopeless.user_attrs["pruned_epoch"] + 1


def test_same_seed_same_val_acc_sequence(tiny_config, workdir, monkeypatch):
    """Two studies with the same seed and config in two fresh folders (each pretrains anew, no cache shared):
    identical pretraining curves and identical val_acc curves, trial by trial, sampled trials included."""
    args = ["--config", str(tiny_config), "--no-report", "--n-trials", "4", "--set", "study.pruner=\"none\""]
    for name in ("a", "b"):
        (workdir / name).mkdir()
        monkeypatch.chdir(workdir / name)
        assert study.main(args + ["--study-name", name]) == 0

    def curves(name):
        client = mlflow_client(workdir / name)
        exp = client.get_experiment_by_name(name)
        parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]
        pre = [m.value for m in client.get_metric_history(parent.info.run_id, "pretrain_loss")]
        return [pre] + [[m.value for m in client.get_metric_history(r.info.run_id, "val_acc")]
                        for r in _children(client, exp.experiment_id, parent.info.run_id)]

    a, b = curves("a"), curves("b")
    assert len(a[0]) == 2  # the tiny config pretrains 2 epochs, logged once
    # trial 1 is the linear probe: one step-0 record (a logistic regression, no epochs)
    assert len(a) == 5 and [len(c) for c in a[1:]] == [3, 1, 3, 3]
    assert a == b


def test_nan_loss_fails_trial_with_reason_and_study_goes_on(tiny_config, workdir):
    """A diverging trial (lr 1e6) fails with the reason in Optuna and MLflow (FAILED); the study still reaches
    its target of finished trials."""
    assert study.main(["--config", str(tiny_config), "--no-report", "--n-trials", "3"]) == 0  # the 3 baselines
    s = load_study(workdir)
    s.enqueue_trial({"lr": 1e6, "freeze_layers": 0})
    # no pruner: its first epoch (loss ~3e11, still finite) is below the converged probe's median and would be pruned
    # before the loss overflows in its second
    assert study.main(["--config", str(tiny_config), "--no-report", "--n-trials", "4",
                       "--set", 'study.pruner="none"']) == 0
    s = load_study(workdir)
    failed = [t for t in s.get_trials() if t.state == TrialState.FAIL]
    assert len(failed) == 1
    reason = failed[0].user_attrs["fail_reason"]
    assert "non-finite" in reason
    run = mlflow_client(workdir).get_run(failed[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["harness.fail_reason"]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in s.get_trials()) == 4


def test_multi_objective_pareto_without_pruning(tiny_config, workdir):
    """objective = multi: two maximized values per trial (val_acc, ood_val_acc), never pruned (Optuna cannot prune
    multi-objective studies, and the pruner is recorded as none), a Pareto front, and a report that ranks by the
    first value."""
    assert study.main(["--config", str(tiny_config), "--n-trials", "5", "--set", 'study.objective="multi"']) == 0
    s = load_study(workdir)
    assert [d.name for d in s.directions] == ["MAXIMIZE", "MAXIMIZE"]
    trials = s.get_trials()
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in trials)
    assert all(0 <= v <= 1 for t in trials for v in t.values)
    assert s.best_trials  # the Pareto front
    client = mlflow_client(workdir)
    exp = client.get_experiment_by_name("tiny")
    parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]
    assert parent.data.tags["harness.pruner"] == "none" and parent.data.tags["harness.objective"] == "multi"
    for t in trials:
        m = client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics
        assert (m["val_acc_final"], m["ood_val_acc"]) == pytest.approx(tuple(t.values))
    page = (workdir / "reports" / "tiny" / "index.html").read_text()
    assert "val_acc (1st objective)" in page


def test_baseline_sweep_and_replicates_are_enqueued_and_counted(tiny_config, workdir):
    """A two-point sweep (full FT at 0.01 and 0.03, LP-FT a decade lower) with --n-trials 6, study.replicates = 2
    and the grid extension off:
    - trials 0-4 are the baselines (full FT x 2 lrs, linear probe, LP-FT x 2 lrs), trial 5 is TPE's: the sweep counts
      toward n_trials (6 finished trials, no more);
    - after the search, one replicate run (seed = study seed + 1) of each finalist: the top 3 trials on validation
      (ties to the lower number) and the best of each baseline family, each a child run tagged with its source trial
      and seed, with the source's params exactly (replicates differ in the seed and nothing else), and no Optuna
      trial of its own;
    - a re-run adds neither trials nor replicates."""
    args = ["--config", str(tiny_config), "--no-report", "--n-trials", "6", "--set", "study.baseline_lrs=[0.01, 0.03]",
            "--set", "study.replicates=2", "--set", 'study.pruner="none"', "--set", 'search.extend_baseline_grid="off"']
    assert study.main(args) == 0
    s = load_study(workdir)
    trials = s.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert [t.user_attrs.get("baseline", "") for t in trials] == \
        ["full_ft"] * 2 + ["linear_probe"] + ["lp_ft"] * 2 + [""]
    assert "lr" not in trials[2].params  # the probe has no lr
    assert [t.params["lr"] for t in trials[3:5]] == pytest.approx([t.params["lr"] / 10 for t in trials[:2]])

    def best(ts):
        return min(ts, key=lambda t: (-t.value, t.number))

    order = sorted(trials, key=lambda t: (-t.value, t.number))
    sources = {t.number for t in order[:3]} | {best([t for t in trials if t.user_attrs.get("baseline") == f]).number
                                               for f in ("full_ft", "linear_probe", "lp_ft")}
    client = mlflow_client(workdir)
    exp = client.get_experiment_by_name("tiny")
    parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]
    reps = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'replicate'")
    assert sorted(int(r.data.tags["harness.replicate_of"]) for r in reps) == sorted(sources)
    for r in reps:
        src = trials[int(r.data.tags["harness.replicate_of"])]
        src_run = client.get_run(src.user_attrs["mlflow_run_id"])
        assert r.info.status == "FINISHED" and r.data.tags["harness.seed"] == "1"
        assert r.data.tags.get("harness.baseline", "") == src.user_attrs.get("baseline", "")
        assert r.data.params == src_run.data.params  # same lr, freeze_layers, unfreeze_epoch (and probe C)
        assert "optuna.trial_number" not in r.data.tags and r.info.run_name.endswith("-seed1")
        assert {"id_acc", "ood_acc_mean", "ood_acc_worst"} <= set(r.data.metrics)
        # every name a replicate writes is declared (tests/test_schema.py runs no replicates)
        assert all(map(schema.is_metric, r.data.metrics)) and all(map(schema.is_param, r.data.params))
        assert all(schema.is_tag(k) for k in r.data.tags if not k.startswith("mlflow."))
        assert schema.CORRECT_ARTIFACT in {a.path for a in client.list_artifacts(r.info.run_id)}
    assert parent.data.tags["harness.replicates"] == "1"
    assert study.main(args) == 0  # resume: nothing left to run
    assert len(load_study(workdir).get_trials()) == 6
    assert len(client.search_runs([exp.experiment_id], "tags.`harness.role` = 'replicate'")) == len(reps)


def test_tied_study_with_workers_names_one_selection_everywhere(tiny_config, workdir):
    """Issue 22, --workers 2: search.lr fixed at 0.01 and nothing frozen, so every searched trial is full FT at 0.01
    with the study seed, as the full FT baseline at 0.01 is: their validation accuracies tie. Full FT's grid [0.01,
    0.02] and LP-FT's [0.001, 0.002] end with their best on an edge; widening with at most 1 added point, each family
    gets exactly the next point one step beyond that edge. Then the finalists (top 2 and each family's best) get a
    second seed. Checked against an independent reading of the stores:
    - tag_best's harness.best_trial, the champion's registered trial and the report's selected trial are the trial that
      the rule picks when recomputed here by hand from Optuna's values and the replicate runs' val_acc_final;
    - the replicated trials are exactly the finalists recomputed here;
    - no baseline was pruned: each reported every epoch;
    - every run (search-time trial and replicate) carries harness.seed and val_correct.json; the record
      baseline_grid.json names the added lrs."""
    from harness import numbers, results

    args = ["--config", str(tiny_config), "--no-report", "--n-trials", "7", "--workers", "2",
            "--set", "search.lr=[0.01, 0.01]", "--set", "search.freeze_layers=[0, 0]",
            "--set", "study.baseline_lrs=[0.01, 0.02]", "--set", 'search.extend_baseline_grid="widen"',
            "--set", "search.baseline_extensions=1", "--set", "study.replicates=2", "--set", "study.finalists=2"]
    assert study.main(args) == 0
    s = load_study(workdir)
    trials = s.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    # the edge extension: one point per lr family, one grid step (x2) beyond the edge its best lay on
    for fam, grid in (("full_ft", [0.01, 0.02]), ("lp_ft", [0.001, 0.002])):
        sweep = [t for t in done if t.user_attrs.get("baseline") == fam and not t.user_attrs.get("baseline_extension")]
        best = min(sweep, key=lambda t: (-t.value, t.number))
        want = best.params["lr"] * 2 if best.params["lr"] == pytest.approx(grid[1]) else best.params["lr"] / 2
        added = [t for t in trials if t.user_attrs.get("baseline") == fam and t.user_attrs.get("baseline_extension")]
        assert [t.params["lr"] for t in added] == pytest.approx([want])
        assert added[0].state == TrialState.COMPLETE
    for t in trials:
        if t.user_attrs.get("baseline") and t.user_attrs.get("baseline") != "linear_probe":
            assert t.state == TrialState.COMPLETE and len(t.intermediate_values) == 3  # train.epochs: never pruned
    searched = [t for t in done if not t.user_attrs.get("baseline")]
    ff = next(t for t in done if t.user_attrs.get("baseline") == "full_ft" and t.params["lr"] == pytest.approx(0.01))
    assert searched and all(t.value == ff.value for t in searched)  # the forced tie
    # the rule by hand: top 2 by (value desc, number asc) + each family's best; then mean over seeds
    order = sorted(done, key=lambda t: (-t.value, t.number))
    finalists = [t.number for t in order[:2]]
    for fam in ("full_ft", "linear_probe", "lp_ft"):
        b = next(t.number for t in order if t.user_attrs.get("baseline") == fam)
        finalists += [b] if b not in finalists else []
    client = mlflow_client(workdir)
    exp = client.get_experiment_by_name("tiny")
    parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'")[0]
    reps = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'replicate'")
    assert sorted(int(r.data.tags["harness.replicate_of"]) for r in reps) == sorted(finalists)
    seeds = {n: [next(t.value for t in done if t.number == n)] for n in finalists}
    for r in reps:
        seeds[int(r.data.tags["harness.replicate_of"])].append(r.data.metrics["val_acc_final"])
    want = min(finalists, key=lambda n: (-round(sum(seeds[n]) / len(seeds[n]), 12), -len(seeds[n]), n))
    assert parent.data.tags["harness.best_trial"] == str(want)
    champion = client.get_model_version_by_alias("tiny", "champion")
    assert champion.tags["harness.trial"] == str(want)
    summary = numbers.summarize(results.load("tiny", f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"))
    assert summary["best"] == want and summary["selection"]["selected"] == want
    assert {r["number"] for r in summary["selection"]["finalists"]} == set(finalists)
    assert sum(r["share"] for r in summary["selection"]["finalists"]) == pytest.approx(1.0)
    grid = summary["selection"]["extended"]["families"]
    assert grid["full_ft"]["added"] == pytest.approx([t.params["lr"] for t in trials
                                                      if t.user_attrs.get("baseline_extension")
                                                      and t.user_attrs["baseline"] == "full_ft"])
    assert grid["full_ft"]["stopped"] in ("limit", "interior")
    for r in client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"):
        if r.info.status == "FINISHED":
            want_seed = r.data.tags.get("harness.seed")
            assert want_seed == ("0" if r.data.tags["harness.role"] == "trial" else "1")
            assert schema.VAL_CORRECT_ARTIFACT in {a.path for a in client.list_artifacts(r.info.run_id)}


def test_baselines_run_every_epoch_where_the_median_would_prune_them(tiny_config, workdir, monkeypatch):
    """Issue 22: three searched trials already in the storage at val 1.0 every epoch set the median pruner's bar at
    1.0, so a plain MedianPruner prunes every baseline (val < 1.0) at epoch 1, after prune_warmup = 1 (LP-FT's
    "sweep" was one lr that way). The study's pruner never prunes a baseline: each of the 3 runs its 3 epochs and
    completes, with harness.seed on its run."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    (workdir / "mlruns").mkdir()
    st = optuna.create_study(study_name="tiny", storage=f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}",
                             direction="maximize")
    for lr in (0.02, 0.03, 0.04):
        st.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "freeze_layers": 0}, value=1.0, intermediate_values={0: 1.0, 1: 1.0, 2: 1.0},
            distributions={"lr": FloatDistribution(1e-3, 0.1, log=True), "freeze_layers": IntDistribution(0, 4)}))
    plain = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    # those trials have no MLflow runs, which the resume check refuses (tests/test_fingerprint.py): not this test's
    from harness import fingerprint
    monkeypatch.setattr(fingerprint, "_optuna_side", lambda storage, name: None)
    args = ["--config", str(tiny_config), "--no-report", "--n-trials", "6", "--set", 'study.pruner="median"']
    assert study.main(args) == 0
    trials = load_study(workdir).get_trials()
    baselines = [t for t in trials if t.user_attrs.get("baseline") in ("full_ft", "lp_ft")]
    assert len(baselines) == 2
    client = mlflow_client(workdir)
    for t in baselines:
        assert t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [0, 1, 2]
        # the plain pruner, on the study as it stood, would have pruned it at epoch 1
        early = optuna.trial.create_trial(state=TrialState.RUNNING, intermediate_values={0: t.intermediate_values[0],
                                                                                         1: t.intermediate_values[1]})
        assert t.intermediate_values[1] < 1.0 and plain.prune(load_study(workdir), early)
        assert client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["harness.seed"] == "0"

"""Sustainability mode: deterministic drift streams, update policies, drift monitors, the MLflow layout end to end."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from harness import config, context, data as datamod, models
from harness.sustain import cli, policies, replay, streams
from harness.config import Data, Stream, Train
from conftest import SUSTAIN_TINY, created_files, load_study, mlflow_client

DATA = Data(image_size=8)  # all digits 5-9 of the target task at their native 8x8: 537 train / 179 val / 180 test
CPU = torch.device("cpu")
TRAIN = Train(batch_size=32, eval_batch_size=256)


@pytest.fixture(scope="module")
def data():
    return datamod.load(DATA, seed=0)  # no cache dir: nothing written


@pytest.fixture(scope="module")
def deployed(data):
    """A small 'pretrained-ish' model: resnet8 trained on the clean target train split for 3 epochs (~1 s)."""
    model, groups = models.build("resnet8", 5, seed=0)
    replay.fine_tune(model, groups, *data["train"], 0.05, 0, 3, TRAIN, CPU, seed=0)
    return model, groups, {k: v.clone() for k, v in model.state_dict().items()}


def _restore(deployed):
    model, groups, state = deployed
    model.load_state_dict(state)
    return model, groups


@pytest.mark.parametrize("kind", streams.STREAMS)
def test_stream_is_deterministic_per_seed(data, kind):
    """For every stream kind: the same seed gives identical recipes and identical tensors (labelled batch and eval
    set of every period); another seed gives different tensors. Shapes follow `labelled` and `eval_size`."""
    s = Stream(kind=kind, periods=5, labelled=20, eval_size=30, alpha=0.5)

    def build(seed):
        return streams.make_stream(data, streams.schedule(s, 5, seed), s.labelled, s.eval_size, seed)

    a, b, c = build(0), build(0), build(1)
    assert len(a) == 5
    for pa, pb, pc in zip(a, b, c):
        assert pa["x"].shape == (20, 3, 8, 8) and pa["eval_x"].shape == (30, 3, 8, 8)
        assert {k: v for k, v in pa.items() if not torch.is_tensor(v)} == {k: v for k, v in pb.items()
                                                                          if not torch.is_tensor(v)}
        for key in ("x", "y", "eval_x", "eval_y"):
            assert torch.equal(pa[key], pb[key])
    assert any(not torch.equal(pa["eval_x"], pc["eval_x"]) for pa, pc in zip(a, c))


def test_stream_recipes_ramp_alternate_and_drift():
    """Severity and rotation ramps go from 0 (clean) at the first period to `severity` at the last, never down;
    the recurring stream alternates A and B every `phase` periods; the prior drifts from uniform (first period)
    to a Dirichlet draw (last), each a distribution."""
    ramp = streams.schedule(Stream(kind="severity", periods=10, severity=5), 5, 0)
    sev = [r["severity"] for r in ramp]
    assert sev == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5] and {r["shift"] for r in ramp} == {"contrast"}
    assert {r["shift"] for r in streams.schedule(Stream(kind="rotation"), 5, 0)} == {"rotate"}
    rec = streams.schedule(Stream(kind="recurring", periods=6, phase=2, shift="none", shift_b="fog"), 5, 0)
    assert [r["shift"] for r in rec] == ["none", "none", "fog", "fog", "none", "none"]
    prior = streams.schedule(Stream(kind="prior", periods=4, alpha=0.3), 5, 0)
    assert prior[0]["prior"] == pytest.approx([0.2] * 5)
    assert all(sum(r["prior"]) == pytest.approx(1) for r in prior) and prior[-1]["prior"] != prior[0]["prior"]


def test_never_does_not_update_every_k_updates_floor_t_over_k(data, deployed):
    """On a 7-period stream: 'never' updates at no period and its accuracy matrix rows all equal the deployed
    model's row (so bwt = fwt = 0); 'every' with k updates exactly at the 0-based periods t with (t + 1) % k == 0,
    i.e. k-1, 2k-1, ..., which is floor(T / k) updates, and its update seconds and examples are counted."""
    s = Stream(periods=7, labelled=20, eval_size=30, epochs=1, replay=1, k=1)
    stream = streams.make_stream(data, streams.schedule(s, 5, 0), s.labelled, s.eval_size, 0)
    ref = data["val"][0]

    res = replay.replay(*_restore(deployed), stream, policies.policy_spec(s, "never"), ref, TRAIN, CPU, 0)
    assert res["updated"] == [0] * 7 and res["update_seconds"] == 0 and res["update_examples"] == 0
    assert all(row == res["initial"] for row in res["R"])
    m = replay.stream_metrics(res["R"], res["initial"])
    assert m["bwt"] == 0 and m["fwt"] == 0 and m["stream_acc"] == res["initial"]

    for k in (1, 2, 3, 4):
        spec = policies.policy_spec(s, "every", k=k)
        assert policies.label(spec) == f"every{k}"
        res = replay.replay(*_restore(deployed), stream, spec, ref, TRAIN, CPU, 0)
        when = [t for t, u in enumerate(res["updated"]) if u]
        assert when == [t for t in range(7) if (t + 1) % k == 0] and len(when) == 7 // k
        assert res["update_seconds"] > 0 and res["update_examples"] > 0
        m = replay.stream_metrics(res["R"], res["initial"])
        # near-future protocol: the accuracy at period t is the model's before it updates on t
        assert m["stream_acc"][1:] == [res["R"][t - 1][t] for t in range(1, 7)]


def test_no_accuracy_monitor_image_was_trained_on(data, deployed, monkeypatch):
    """The accuracy monitor's labelled accuracy (its reference period included) is measured only on images no update
    has trained on: on a 10-period severity ramp drawing 50 labelled images a period from a 60-image pool, updates at
    every second period with replay 2 (so pool images come back after being trained on), no image the accuracy is
    computed on is pixel-identical to an image of any earlier update; and later periods do hold such images (the check
    can fail)."""
    pool = {"train": (data["train"][0][:200], data["train"][1][:200]), "test": data["test"]}
    s = Stream(periods=10, labelled=50, eval_size=30, epochs=1, replay=2, drop=-100.0, window=1)
    stream = streams.make_stream(pool, streams.schedule(s, 5, 0), s.labelled, s.eval_size, 0)
    trained, measured = set(), []
    key = lambda img: img.contiguous().numpy().tobytes()
    real_fine_tune, real_acc = replay.fine_tune, replay._accuracy_on

    def fine_tune(model, groups, x, y, *a, **k):
        trained.update(key(img) for img in x)
        return real_fine_tune(model, groups, x, y, *a, **k)

    def accuracy_on(model, x, y, bs, device):
        if len(x) <= s.labelled and not any(torch.equal(x, p["eval_x"]) for p in stream):  # a labelled batch
            measured.append({key(img) for img in x} & trained)
        return real_acc(model, x, y, bs, device)

    monkeypatch.setattr(replay, "fine_tune", fine_tune)
    monkeypatch.setattr(replay, "_accuracy_on", accuracy_on)
    res = replay.replay(*_restore(deployed), stream, policies.policy_spec(s, "accuracy"), data["val"][0], TRAIN, CPU, 0)
    assert sum(res["updated"]) >= 3 and len(measured) >= 5
    assert all(not overlap for overlap in measured), [len(o) for o in measured]
    pixel_repeats = sum(key(img) in trained for p in stream[3:] for img in p["x"])
    assert pixel_repeats > 0  # without the filter the monitor would have read trained images


def test_metrics_follow_gem_and_chaudhry_definitions():
    """stream_acc[t] = R[t-1][t] (initial[0] at t = 0); bwt = mean over i < T-1 of R[T-1][i] - R[i][i] (GEM);
    forgetting = mean over i < T-1 of max_{i<=l<T-1} R[l][i] - R[T-1][i] (Chaudhry et al. 2018); fwt = mean over
    i >= 1 of R[i-1][i] - initial[i] (hand-computed 3x3 examples). Forgetting equals -bwt when every period's accuracy
    peaked right after it, and exceeds it when it peaked later (0.95 after period 1 on period 0); accuracy on a
    period before it arrived (R[0][1] = 0.99) never counts as a peak."""
    R = [[0.9, 0.99, 0.4], [0.8, 0.9, 0.6], [0.7, 0.8, 0.9]]
    initial = [0.9, 0.5, 0.3]
    m = replay.stream_metrics(R, initial)
    assert m["stream_acc"] == [0.9, 0.99, 0.6]
    assert m["stream_acc_mean"] == pytest.approx(2.49 / 3) and m["stream_acc_worst"] == 0.6
    assert m["bwt"] == pytest.approx(((0.7 - 0.9) + (0.8 - 0.9)) / 2)
    assert m["forgetting"] == pytest.approx(-m["bwt"])
    assert m["fwt"] == pytest.approx(((0.99 - 0.5) + (0.6 - 0.3)) / 2)
    R[1][0] = 0.95  # the accuracy on period 0 kept rising after it: the max, not R[0][0], is what was lost
    m = replay.stream_metrics(R, initial)
    assert m["forgetting"] == pytest.approx(((0.95 - 0.7) + (0.9 - 0.8)) / 2) and m["forgetting"] > -m["bwt"]


def test_stream_pool_is_disjoint_from_the_deployed_models_images(data):
    """split_pool cuts the train split into the deployed model's images and the stream pool: disjoint, together the
    whole split, half each per class (stratified), the same for the same seed and different for another. A clean
    stream built from the pool draws every labelled image from the pool and none from the deployed model's half;
    evaluation images come from the test split."""
    x, y = data["train"]
    deploy, pool = streams.split_pool(y, seed=0, fraction=0.5)
    assert set(deploy.tolist()).isdisjoint(pool.tolist())
    assert sorted(deploy.tolist() + pool.tolist()) == list(range(len(y)))
    for c in y.unique().tolist():
        n_dep, n_pool = (y[deploy] == c).sum().item(), (y[pool] == c).sum().item()
        assert abs(n_dep - n_pool) <= 1 and n_dep > 0
    again, other = streams.split_pool(y, seed=0, fraction=0.5), streams.split_pool(y, seed=1, fraction=0.5)
    assert torch.equal(again[1], pool) and not torch.equal(other[1], pool)

    recipes = [{"period": t, "shift": "none", "severity": 0, "prior": None} for t in range(4)]
    stream = streams.make_stream({"train": (x[pool], y[pool]), "test": data["test"]}, recipes, 60, 30, seed=0)
    rows = lambda imgs: {tuple(v.flatten().tolist()) for v in imgs}  # noqa: E731
    pool_rows, deploy_rows, test_rows = rows(x[pool]), rows(x[deploy]), rows(data["test"][0])
    for p in stream:
        drawn = rows(p["x"])
        assert drawn <= pool_rows and drawn.isdisjoint(deploy_rows)
        assert rows(p["eval_x"]) <= test_rows


@pytest.mark.parametrize("policy", ["embedding", "mmd", "accuracy"])
def test_trigger_fires_on_abrupt_shift_and_stays_quiet_without(data, deployed, policy):
    """A 6-period stream without shift: the monitor never fires (no update). The same stream with an abrupt shift
    (contrast at severity 5 from period 3 on): no update before period 3 and an update at period 3, the first
    shifted period. The unlabelled monitors (domain-classifier AUC > 0.55, MMD^2 > 0.015) read penultimate
    features of the period's inputs vs the reference inputs (clean validation images for the deployed model);
    the labelled one compares labelled accuracy with the first period after deployment (drop > 10 points)."""
    s = Stream(periods=6, labelled=60, eval_size=150, epochs=1, replay=0)
    clean = [{"period": t, "shift": "none", "severity": 0, "prior": None} for t in range(6)]
    abrupt = [dict(r, shift="contrast", severity=5) if r["period"] >= 3 else r for r in clean]
    spec = policies.policy_spec(s, policy)
    for recipes, expect in ((clean, [0] * 6), (abrupt, [0, 0, 0, 1])):
        stream = streams.make_stream(data, recipes, s.labelled, s.eval_size, seed=0)
        res = replay.replay(*_restore(deployed), stream, spec, data["val"][0], TRAIN, CPU, 0)
        assert res["updated"][:len(expect)] == expect, (policy, res["monitor"])
        if policy != "accuracy":
            stats = res["monitor"][:len(expect)]
            assert all(v <= spec["threshold"] for v in stats[:3]) and stats[3] > spec["threshold"] if expect[-1] else \
                all(v <= spec["threshold"] for v in stats)


def test_drift_statistics_are_calibrated_on_known_samples():
    """20 pairs of iid Gaussian samples (200 vs 200, 8-d): cross-fitted AUCs average ~0.5 and at most 1 of 20 passes
    the 1% noise floor (~0.595 here), MMD^2 stays below 0.015 in all; shifted by 1 sd per dimension, AUC > 0.9 and
    MMD^2 > 0.015 every time."""
    null_auc, null_mmd, drift = [], [], []
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        a, b, far = (torch.randn(200, 8, generator=gen) for _ in range(3))
        far += 1
        null_auc.append(policies.domain_auc(a, b, seed))
        null_mmd.append(policies.mmd2(a, b))
        drift.append((policies.domain_auc(a, far, seed), policies.mmd2(a, far)))
    floor = policies.auc_noise_floor(200, 200)
    assert 0.58 < floor < 0.61
    assert abs(sum(null_auc) / 20 - 0.5) < 0.03 and sum(v > floor for v in null_auc) <= 1
    assert max(abs(v) for v in null_mmd) < 0.015
    assert all(auc > 0.9 and mmd > 0.015 for auc, mmd in drift)


def test_default_sustain_config_and_bad_input_exit_2_naming_the_key(workdir, capsys):
    """studies/sustain.toml loads and passes preflight; bad stream values exit 2 with a message naming the key and
    create nothing (no mlruns/)."""
    cfg = config.load(cli.DEFAULT_CONFIG)
    assert cfg.study.name == "sustain-default" and cli.preflight(cfg) == 4
    cases = [(["--set", "stream.kind=drift"], "stream.kind"), (["--set", "stream.shift=blurry"], "stream.shift"),
             (["--set", "stream.policies=['never','sometimes']"], "stream.policies"),
             (["--set", "stream.search_k=[4,2]"], "stream.search_k"), (["--set", "stream.periods=1"], "stream.periods"),
             (["--set", "stream.freeze_layers=9"], "stream.freeze_layers"), (["--seeds", "0,x"], "--seeds"),
             (["--set", "stream.auc=0.3"], "stream.auc"), (["--set", "stream.lr=0"], "stream.lr")]
    for args, key in cases:
        assert cli.main(args) == 2, args
        assert key in capsys.readouterr().err
    assert not (workdir / "mlruns").exists()


def test_deployed_model_trains_only_on_its_half_and_the_stream_draws_from_the_other(tmp_path, monkeypatch):
    """seed_context (what every policy run starts from) on the tiny study's 60 train images and a clean-pixel prior
    stream: the deployed model's fine-tune sees exactly its 30 images (then the reachable model all 60), every
    labelled stream image comes from the other 30 (the pool), and a second call for the seed reads the cached
    deployed and reachable models without training again."""
    path = tmp_path / "s.toml"
    path.write_text(SUSTAIN_TINY.replace('kind = "severity"', 'kind = "prior"'))
    cfg = config.load(path)
    data = datamod.load(cfg.data, seed=0)
    body, groups = models.build("resnet8", 5, seed=0)
    head = models.head_prefix(body, groups)
    pre = {k: v for k, v in body.body.state_dict().items() if not k.startswith(head)}  # stands in for pretraining
    seen = []
    real = replay.converge

    def recording(model, groups, x, y, *args, **kw):  # the real fine-tune, its training images recorded
        seen.append(x.clone())
        return real(model, groups, x, y, *args, **kw)

    monkeypatch.setattr(replay, "converge", recording)
    ctx = context.Context(cfg=cfg, device=CPU, data=data, data_cpu=data, suite=None, pretrained=pre,
                          weights_key="test", n_groups=4, client=None, uri="", storage=None, exp_id="", parent_id="",
                          created=False, cache=tmp_path / "cache", info={})  # no store: seed_context writes none
    run = replay.SustainRun(ctx, log=lambda *_: None)
    sc = replay.seed_context(run, 0)
    rows = lambda imgs: {tuple(v.flatten().tolist()) for v in imgs}  # noqa: E731
    x = data["train"][0]
    deploy, pool = rows(x[sc.deploy_idx]), rows(x[sc.pool_idx])
    assert len(seen) == 2 and rows(seen[0]) == deploy and deploy.isdisjoint(pool) and len(seen[0]) == 30
    assert rows(seen[1]) == deploy | pool and len(seen[1]) == 60
    for p in sc.stream:
        assert rows(p["x"]) <= pool
    run.seeds = {}
    replay.seed_context(run, 0)
    assert len(seen) == 2  # cached: the key holds the pool split (VERSION, stream.pool_fraction) and the resolved device


@pytest.mark.slow
def test_end_to_end_mlflow_layout_resume_and_search(workdir, capsys):
    """A tiny sustain study (4 periods, 4 policies, seeds 0 and 1) in a temp dir:
    - exit 0; MLflow: one experiment 'sustain-tiny', one FINISHED parent run named after it with tag
      harness.role=sustain, resolved config, versions.json, stream.json, summary.json;
    - one FINISHED child run per (policy, seed) named policy-<label>-seed<s> (never, every2, accuracy, embedding),
      and one per (policy, seed) on the no-drift control named policy-<label>-seed<s>-control
      with mlflow.parentRunId, params policy/k/threshold/lr/freeze_layers/epochs/stream/seed, stream_acc and
      updated at steps 0..3, final stream_acc_mean/worst, bwt, fwt, n_updates, update_seconds, and
      accuracy_matrix.json holding a 4x4 R; never has 0 updates and bwt 0, every2 has floor(4/2) = 2 at periods
      1 and 3;
    - running it again replays nothing (finished runs are reused) and adds no run;
    - stream.search = true runs an Optuna study of 2 trials (the first enqueued: never) on the search seed (10000)
      whose child runs are named trial-NNNN-<label>-seed10000 and tagged with the trial number; the best trial is
      then replayed on the reported seed 0 (tag harness.search_trial)."""
    path = workdir / "sustain.toml"
    path.write_text(SUSTAIN_TINY.replace('name = "sustain-tiny"', 'name = "sustain-tiny"\nreport = false'))
    assert cli.main(["--config", str(path), "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "every2" in out and "stream_acc_mean" in out

    client = mlflow_client(workdir)
    exp = client.get_experiment_by_name("sustain-tiny")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("harness.role") == "sustain"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "sustain-tiny" and parent.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config", "versions.json", "stream.json", "summary.json"} <= arts
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    names = {f"policy-{p}-seed{s}{v}" for p in ("never", "every2", "accuracy", "embedding") for s in (0, 1)
             for v in ("", "-control")}
    assert set(children) == names and len(runs) == 1 + len(names)
    for name, run in children.items():
        assert run.info.status == "FINISHED" and run.data.tags["harness.role"] == "sustain_policy"
        assert {"policy", "k", "threshold", "lr", "freeze_layers", "epochs", "stream", "seed"} <= set(run.data.params)
        assert run.data.params["stream"] == "severity" and run.data.params["seed"] == name.split("seed")[1][0]
        for key in ("stream_acc", "updated"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1, 2, 3]
        assert {"stream_acc_mean", "stream_acc_worst", "bwt", "forgetting", "fwt", "n_updates", "update_seconds",
                "update_examples"} <= set(run.data.metrics)
        if name.startswith(("policy-accuracy", "policy-embedding")):  # the threshold each period was compared with
            used = client.get_metric_history(run.info.run_id, "monitor_threshold")
            assert [m.step for m in used] == [0, 1, 2, 3] and run.data.tags["harness.threshold_used"]
            if "embedding" in name:  # raised from 0.55 to the noise floor: 0.667 at 179 clean validation vs 40
                # period inputs, 0.715 at 40 vs 40 after an update (auc_noise_floor)
                assert all(m.value > 0.66 for m in used)
        local = client.download_artifacts(run.info.run_id, "accuracy_matrix.json", str(workdir))
        matrix = json.loads(open(local).read())
        assert len(matrix["R"]) == 4 and all(len(row) == 4 for row in matrix["R"]) and len(matrix["initial"]) == 4
        assert matrix["stream_acc"][0] == matrix["initial"][0]
    never, every = children["policy-never-seed0"], children["policy-every2-seed0"]
    assert never.data.metrics["n_updates"] == 0 and never.data.metrics["bwt"] == 0
    assert every.data.metrics["n_updates"] == 2 and every.data.tags["harness.update_periods"] == "1,3"
    assert every.data.params["k"] == "2" and never.data.params["k"] == "none"
    assert [m.value for m in sorted(client.get_metric_history(every.info.run_id, "updated"), key=lambda m: m.step)] \
        == [0, 1, 0, 1]

    assert cli.main(["--config", str(path), "--seeds", "0,1"]) == 0
    assert "reused finished run" in capsys.readouterr().out
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == 1 + len(names)

    assert cli.main(["--config", str(path), "--study-name", "sustain-search", "--n-trials", "2",
                         "--set", "stream.search=true", "--set", "stream.search_policies=['never','every']"]) == 0
    study = load_study(workdir, "sustain-search")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and done[0].params == {"policy": "never"}
    exp2 = client.get_experiment_by_name("sustain-search")
    kids = [r for r in client.search_runs([exp2.experiment_id]) if r.data.tags.get("harness.role") == "sustain_policy"]
    # the search selects on other streams (seed + 10000) than the ones it reports: the best trial is replayed on seed
    # 0 as a run of its own, tagged with the trial that selected it
    searched = [r for r in kids if r.data.tags["optuna.trial_number"] != "-1"]
    assert sorted(r.data.tags["optuna.trial_number"] for r in searched) == ["0", "1"]
    assert {r.data.tags["harness.seed"] for r in searched} == {"10000"}
    assert any(r.info.run_name == "trial-0000-never-seed10000" for r in searched)
    reported = [r for r in kids if r.data.tags["optuna.trial_number"] == "-1"]
    best = {str(t.number) for t in study.best_trials}
    assert {r.data.tags["harness.search_trial"] for r in reported} == best
    assert {r.data.tags["harness.seed"] for r in reported} == {"0"}

    def eval_images(run):  # the test-split images a run evaluated on, and on which half
        m = json.loads(open(client.download_artifacts(run.info.run_id, "accuracy_matrix.json", str(workdir))).read())
        return m["eval_half"], {i for row in m["eval_idx"] for i in row}

    search_half = [eval_images(r) for r in searched]
    reported_half = [eval_images(r) for r in reported]
    assert {h for h, _ in search_half} == {"search"} and {h for h, _ in reported_half} == {"reported"}
    assert set().union(*(ix for _, ix in search_half)).isdisjoint(set().union(*(ix for _, ix in reported_half)))


@pytest.mark.slow
def test_faults_diverging_policy_fails_alone_and_stale_search_trials_fail(workdir, capsys):
    """Faults, on the tiny 4-period stream (seed 0, no report):
    - stream.lr = 1e30 makes every update diverge (non-finite loss): 'every2' ends FAILED with harness.fail_reason
      naming FloatingPointError, 'never' (no update) still FINISHES, the parent run ends FINISHED; exit 1 with a
      message on stderr naming every2, and no traceback;
    - search mode: an Optuna trial left RUNNING by a killed run is FAILED at start with a fail_reason, and the
      search still completes its one trial (the enqueued 'never'); exit 0;
    - search mode whose lr range diverges: both attempts fail (Optuna FAIL with fail_reason, child run FAILED with
      harness.fail_reason), the search does not stop at the first, and exits 1."""
    path = workdir / "sustain.toml"
    path.write_text(SUSTAIN_TINY.replace('name = "sustain-tiny"', 'name = "sustain-tiny"\nreport = false'))
    args = ["--config", str(path), "--set", "stream.policies=['never','every']"]
    assert cli.main(args + ["--set", "stream.lr=1e30"]) == 1
    err = capsys.readouterr().err
    assert "every2" in err and "FloatingPointError" in err and "Traceback" not in err
    client = mlflow_client(workdir)
    exp = client.get_experiment_by_name("sustain-tiny")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert runs["policy-never-seed0"].info.status == "FINISHED"
    failed = runs["policy-every2-seed0"]
    assert failed.info.status == "FAILED" and "FloatingPointError" in failed.data.tags["harness.fail_reason"]
    assert runs["sustain-tiny"].info.status == "FINISHED"

    storage = f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}"
    stale = optuna.create_study(storage=storage, study_name="sustain-stale", direction="maximize")
    stale.ask()  # a trial whose process was killed: RUNNING forever
    search = args + ["--set", "stream.search=true", "--n-trials", "1"]
    assert cli.main(search + ["--study-name", "sustain-stale", "--set", "stream.search_policies=['never']"]) == 0
    trials = optuna.load_study(study_name="sustain-stale", storage=storage).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL and "died" in trials[0].system_attrs["fail_reason"]
    assert [t.state for t in trials[1:]] == [optuna.trial.TrialState.COMPLETE]
    assert trials[1].params == {"policy": "never"}

    diverge = search + ["--study-name", "sustain-diverge", "--n-trials", "2", "--set",
                        "stream.search_policies=['every']", "--set", "stream.search_lr=[1e30,1e31]",
                        "--set", "stream.search_k=[1,2]"]  # k <= 2 updates within 4 periods
    assert cli.main(diverge) == 1
    assert "Traceback" not in capsys.readouterr().err
    trials = optuna.load_study(study_name="sustain-diverge", storage=storage).trials
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.FAIL for t in trials)
    assert all("FloatingPointError" in t.system_attrs["fail_reason"] for t in trials)
    kids = client.search_runs([client.get_experiment_by_name("sustain-diverge").experiment_id],
                              "tags.`harness.role` = 'sustain_policy'")
    assert len(kids) == 2 and all(r.info.status == "FAILED" and r.data.tags["harness.fail_reason"] for r in kids)


@pytest.mark.slow
def test_refuses_the_experiment_of_a_regular_study(workdir, tiny_config, capsys):
    """A regular study 'tiny' (harness.study, 1 trial of 1 epoch) owns the MLflow experiment 'tiny': a sustain run
    with --study-name tiny exits 2 with a message naming study.name, and creates nothing: no file, no experiment,
    no run."""
    from harness import study

    assert study.main(["--config", str(tiny_config), "--n-trials", "1", "--set", "train.epochs=1", "--set",
                       "data.image_size=8", "--set", "shifts.severities=[1]", "--no-report"]) == 0
    capsys.readouterr()
    client = mlflow_client(workdir)
    before_runs = {r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    before_exps = {e.name for e in client.search_experiments()}
    path = workdir / "sustain.toml"
    path.write_text(SUSTAIN_TINY)
    before_files = created_files(workdir, ignore=())
    assert cli.main(["--config", str(path), "--study-name", "tiny"]) == 2
    assert "study.name" in capsys.readouterr().err
    assert created_files(workdir, ignore=()) == before_files
    assert {e.name for e in client.search_experiments()} == before_exps
    assert {r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])} \
        == before_runs
    # and the other way round: a regular study refuses the experiment of a sustain study, exit 2, nothing run (the
    # smallest sustain run that makes one: a single policy over 2 periods)
    small = workdir / "sustain-small.toml"
    small.write_text(SUSTAIN_TINY.replace("periods = 4", "periods = 2")
                     .replace('policies = ["never", "every", "accuracy", "embedding"]', 'policies = ["never"]'))
    assert cli.main(["--config", str(small), "--study-name", "drift", "--no-report"]) in (0, 1)
    capsys.readouterr()
    n_runs = len(client.search_runs([client.get_experiment_by_name("drift").experiment_id]))
    assert study.main(["--config", str(tiny_config), "--study-name", "drift", "--no-report"]) == 2
    assert "study.name" in capsys.readouterr().err
    assert len(client.search_runs([client.get_experiment_by_name("drift").experiment_id])) == n_runs

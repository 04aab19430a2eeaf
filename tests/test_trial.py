"""Trial: the conditional search space, baselines, and model selection that cannot see held-out test shifts."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import optuna
import pytest
import torch

from harness import config, context, launch, sampling, strategies, study, suite as suitemod, trial

from conftest import TINY


def test_suggest_conditional_space():
    """unfreeze_epoch is sampled only when freeze_layers > 0 (and reported as 0 otherwise)."""
    cfg = config.load(None, ["search.freeze_layers=[0, 0]"])
    p = trial.suggest(optuna.trial.FixedTrial({"lr": 0.01, "freeze_layers": 0}), cfg, 4)
    assert p == {"lr": 0.01, "freeze_layers": 0, "unfreeze_epoch": 0}
    p = trial.suggest(optuna.trial.FixedTrial({"lr": 0.01, "freeze_layers": 2, "unfreeze_epoch": 3}), config.load(), 4)
    assert p["unfreeze_epoch"] == 3


def test_sampler_sees_the_conditional_strategy_space():
    """With three strategies the sampler gets a categorical `strategy`, and each trial's distributions are exactly
    its strategy's: prefix -> freeze_layers (+ unfreeze_epoch when k > 0), surgical -> tune_group in 0..n-1 and
    tune_head, gradual -> gradual_every. Enqueued baselines stay prefix trials (the linear probe without an lr)."""
    cfg = config.load(None, ['search.strategy=["prefix", "surgical", "gradual"]', "search.gradual_every=[1, 3]"])
    st = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    st.enqueue_trial({"lr": 0.01, "freeze_layers": 4, "unfreeze_epoch": 6}, user_attrs={"baseline": "linear_probe"})
    seen = set()
    for i in range(40):
        t = st.ask()
        p = trial.suggest(t, cfg, 4)
        st.tell(t, 0.5)
        space = set(t.distributions)
        if i == 0:
            assert p == {"lr": None, "strategy": "prefix", "freeze_layers": 4, "unfreeze_epoch": 6}
            assert "strategy" not in space and "lr" not in space  # the probe's head is a logistic regression
            continue
        assert isinstance(t.distributions["strategy"], optuna.distributions.CategoricalDistribution)
        assert t.distributions["strategy"].choices == ("prefix", "surgical", "gradual")
        seen.add(p["strategy"])
        if p["strategy"] == "prefix":
            assert space == {"lr", "strategy", "freeze_layers"} | ({"unfreeze_epoch"} if p["freeze_layers"] else set())
        elif p["strategy"] == "surgical":
            assert space == {"lr", "strategy", "tune_group", "tune_head"}
            assert t.distributions["tune_group"].low == 0 and t.distributions["tune_group"].high == 3
            assert set(p) == {"lr", "strategy", "tune_group", "tune_head"}
        else:
            assert space == {"lr", "strategy", "gradual_every"} and 1 <= p["gradual_every"] <= 3
    assert seen == {"prefix", "surgical", "gradual"}
    # a prefix-only study (the default) samples exactly what it did before: no strategy parameter at all
    p = trial.suggest(optuna.trial.FixedTrial({"lr": 0.01, "freeze_layers": 2, "unfreeze_epoch": 3}), config.load(), 4)
    assert p == {"lr": 0.01, "freeze_layers": 2, "unfreeze_epoch": 3}


def test_strategy_params_become_the_recipe_and_pruning_waits():
    """Each strategy's params map onto train.Recipe; gradual may be pruned one epoch after its last unfreezing."""
    sur = {"lr": 0.1, "strategy": "surgical", "tune_group": 1, "tune_head": False}
    assert strategies.recipe_settings(sur) == {"strategy": "surgical", "tune_group": 1, "tune_head": False}
    assert strategies.recipe_settings({"lr": 0.1, "freeze_layers": 2, "unfreeze_epoch": 3})["freeze_layers"] == 2
    assert strategies.first_prune(2, sur, 6, 4) == 2
    assert strategies.first_prune(2, {"strategy": "gradual", "gradual_every": 1}, 6, 4) == 5  # all 4 groups train from 4
    assert strategies.first_prune(2, {"strategy": "gradual", "gradual_every": 2}, 6, 4) == 2  # never all: as a probe


def test_replicates_log_and_train_what_their_trial_did():
    """A replicate's params come from its trial's Optuna params as the trial's run logged them: strategy always (a
    one-strategy surgical study never samples it, and its replicate must not train as prefix), lr None for the probe,
    unfreeze_epoch 0 where nothing was frozen."""
    surgical = config.load(None, ['search.strategy=["surgical"]'])
    p = trial.source_params(surgical, {"params": {"lr": 0.1, "tune_group": 1, "tune_head": False}, "baseline": ""}, 4)
    assert p == {"lr": 0.1, "strategy": "surgical", "tune_group": 1, "tune_head": False}
    assert strategies.recipe_settings(p) == {"strategy": "surgical", "tune_group": 1, "tune_head": False}
    cfg = config.load()
    assert trial.source_params(cfg, {"params": {"lr": 0.01, "freeze_layers": 0}, "baseline": "full_ft"}, 4) == {
        "lr": 0.01, "strategy": "prefix", "freeze_layers": 0, "unfreeze_epoch": 0}
    probe = {"params": {"freeze_layers": 4, "unfreeze_epoch": 6}, "baseline": "linear_probe"}
    assert trial.source_params(surgical, probe, 4) == {"lr": None, "strategy": "prefix", "freeze_layers": 4,
                                                       "unfreeze_epoch": 6}


def test_strategy_config_is_checked():
    """Unknown or repeated strategies and a gradual_every below 1 exit 2 naming the key."""
    for override, key in (('search.strategy=["prefix", "layerwise"]', "search.strategy"),
                          ('search.strategy=["surgical", "surgical"]', "search.strategy"),
                          ("search.gradual_every=[0, 2]", "search.gradual_every")):
        with pytest.raises(config.ConfigError) as err:
            config.load(None, [override])
        assert err.value.key == key


def test_baselines_are_full_ft_linear_probe_lp_ft():
    """The default sweep: 3 lrs at the centres of three equal log bins of search.lr, full FT at each, the converged
    linear probe (no lr, every group frozen, never unfrozen), LP-FT at each lr (every group trains from the probe's
    head); study.baseline_lrs replaces the sweep."""
    cfg = config.load()
    b = trial.baselines(cfg, 4)
    assert [x["name"] for x in b] == ["full_ft"] * 3 + ["linear_probe"] + ["lp_ft"] * 3
    lo, hi = cfg.search.lr
    want = [lo * (hi / lo) ** (q / 6) for q in (1, 3, 5)]
    assert [x["params"]["lr"] for x in b[:3]] == pytest.approx(want) == [x["params"]["lr"] for x in b[4:]]
    assert all(x["params"]["freeze_layers"] == 0 for x in b[:3] + b[4:])
    assert b[3]["params"] == {"freeze_layers": 4, "unfreeze_epoch": cfg.train.epochs}
    mine = trial.baselines(config.load(None, ["study.baseline_lrs=[0.01, 0.05]"]), 4)
    assert [x["params"].get("lr") for x in mine] == [0.01, 0.05, None, 0.01, 0.05]


def test_baseline_sweep_enqueues_once_with_lp_ft_apart_from_full_ft(tmp_path):
    """Enqueued as launch.launch does (skip_if_exists), twice: the sweep is there once, in order, each trial with its
    baseline user attr; LP-FT and full FT at the same lr are both there (skip_if_exists compares params), and the
    first trial asked is the first full FT."""
    cfg = config.load(None, ["study.baseline_lrs=[0.01, 0.1]"])
    st = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s")
    for _ in range(2):
        for b in trial.baselines(cfg, 4):
            st.enqueue_trial(b["params"], user_attrs={"baseline": b["name"]}, skip_if_exists=True)
    waiting = st.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["baseline"] for t in waiting] == ["full_ft", "full_ft", "linear_probe", "lp_ft", "lp_ft"]
    t = st.ask()  # the first ask takes the first enqueued baseline
    p = trial.suggest(t, cfg, 4)
    assert t.user_attrs["baseline"] == "full_ft" and p == {"lr": 0.01, "freeze_layers": 0, "unfreeze_epoch": 0}


def test_pruning_waits_for_one_epoch_after_the_unfreeze():
    """A trial unfreezing at epoch 4 of 6 cannot be pruned before it trained 5 epochs (epoch 4 all unfrozen); full
    fine-tuning and the linear probe only wait the warm-up."""
    assert strategies.prune_from(warmup=1, k=2, e=4, epochs=6) == 5
    assert strategies.prune_from(warmup=3, k=2, e=1, epochs=6) == 3
    assert strategies.prune_from(warmup=1, k=0, e=0, epochs=6) == 1
    assert strategies.prune_from(warmup=1, k=4, e=6, epochs=6) == 1  # never unfrozen


def _tiny_suite(g):
    """A suite.Suite as suite.build returns one: 10 validation and 12 test images of 3x4x4, 3 classes."""
    img = lambda n: torch.rand(n, 3, 4, 4, generator=g)
    blur, noise, contrast = (img(10), img(10)), (img(12), img(12)), (img(12), img(12))
    label_x, label_y = img(12), torch.randint(0, 3, (12,), generator=g)
    sel_y, test_y = torch.randint(0, 3, (10,), generator=g), torch.randint(0, 3, (12,), generator=g)
    prov = suitemod.Provenance("test", 0)
    sev = lambda name, family, images, y: suitemod.EvalSet(name, family, "severity", (1, 3), images, y, prov)
    return suitemod.Suite(
        selection=(sev("gaussian_blur", "blur", blur, sel_y),),
        test=(sev("gaussian_noise", "noise", noise, test_y), sev("contrast", "digital", contrast, test_y),
              suitemod.EvalSet("label_shift", "label", "set", (), (label_x,), label_y, prov,
                               prior=torch.tensor([0.2, 0.3, 0.5]))),
        clean_selection=suitemod.Subset(torch.full((10, 3, 4, 4), 0.5), sel_y),
        clean_test=suitemod.Subset(torch.full((12, 3, 4, 4), 0.5), test_y))


def _linear(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))


def test_selection_metrics_cannot_read_test_shifts():
    """selection_metrics gets the whole suite but reads only its selection part: replacing every held-out test set
    with NaN images leaves it bit-identical, while changing a selection set does change it (so the check can fail)."""
    g = torch.Generator().manual_seed(0)
    suite, model, cpu = _tiny_suite(g), _linear(), torch.device("cpu")
    clean = trial.selection_metrics(model, suite, 8, cpu)
    assert 0 <= clean["ood_val_acc"] <= 1 and set(clean["per_shift"]) == {"gaussian_blur"}
    nan = lambda x: torch.full_like(x, float("nan"))
    poisoned = dataclasses.replace(suite, test=tuple(dataclasses.replace(e, images=tuple(map(nan, e.images)))
                                                     for e in suite.test),
                                   clean_test=suitemod.Subset(nan(suite.clean_test.images), suite.clean_test.labels))
    assert trial.selection_metrics(model, poisoned, 8, cpu) == clean
    moved = dataclasses.replace(suite, selection=tuple(dataclasses.replace(e, images=tuple(1 - x for x in e.images))
                                                       for e in suite.selection))
    assert trial.selection_metrics(model, moved, 8, cpu)["per_shift"] != clean["per_shift"]


def test_test_metrics_means_worst_families_and_label_shift():
    """test_metrics: id_* on the clean test split; per shift and severity acc/ece/nll on the shifted sets with their
    own (subset) labels; ood_acc_mean = mean over the held-out severity shifts of each shift's mean over severities,
    worst = the lowest such mean, one ood_acc/<family> per family of severity shifts. The label-shift, subpopulation
    and clean sets are their own metrics, never in a mean. label_shift_metrics: balanced accuracy and BBSE priors
    that sum to 1."""
    g = torch.Generator().manual_seed(1)
    suite, model, cpu = _tiny_suite(g), _linear(1), torch.device("cpu")
    prov = suitemod.Provenance("test", 0)
    subpop = suitemod.EvalSet("subpopulation", "subpopulation", "set", (), (torch.rand(9, 3, 4, 4, generator=g),),
                              torch.randint(0, 3, (9,), generator=g), prov)
    clean = suitemod.EvalSet("clean", "clean", "domain", (), (suite.clean_test.images,), suite.clean_test.labels, prov)
    suite = dataclasses.replace(suite, test=(clean,) + suite.test + (subpop,))
    data = {"test": (torch.rand(20, 3, 4, 4, generator=g), torch.randint(0, 3, (20,), generator=g)),
            "val": (torch.rand(30, 3, 4, 4, generator=g), torch.arange(30) % 3), "classes": ["a", "b", "c"]}
    final, curves, _ = trial.test_metrics(model, suite, data, 8, cpu)
    logits = model(data["test"][0])
    assert final["id_acc"] == pytest.approx((logits.argmax(1) == data["test"][1]).double().mean().item())
    assert set(curves) == {"clean", "gaussian_noise", "contrast", "label_shift", "subpopulation"}
    assert set(curves["contrast"]) == {1, 3}
    contrast = next(e for e in suite.test if e.name == "contrast")
    acc = (model(contrast.images[contrast.severities.index(3)]).argmax(1) == suite.clean_test.labels).double().mean().item()
    assert curves["contrast"][3]["acc"] == pytest.approx(acc)

    def acc_of(e, x):  # an independent accuracy: the model's argmax against the set's labels
        return (model(x).argmax(1) == e.labels).double().mean().item()

    by_name = {e.name: e for e in suite.test}
    means = {n: sum(acc_of(by_name[n], x) for x in by_name[n].images) / 2 for n in ("gaussian_noise", "contrast")}
    assert final["ood_acc_mean"] == pytest.approx((means["gaussian_noise"] + means["contrast"]) / 2, abs=1e-12)
    assert final["ood_acc_worst"] == pytest.approx(min(means.values()), abs=1e-12)
    assert final["ood_acc/digital"] == pytest.approx(means["contrast"]) and final["ood_acc/noise"] == pytest.approx(
        means["gaussian_noise"])
    assert final["ood_ece_mean"] == pytest.approx(
        sum(c["ece"] for n in means for c in curves[n].values()) / 4, abs=1e-12)
    for name, key in (("label_shift", "label_shift/acc"), ("subpopulation", "subpopulation/acc"),
                      ("clean", "target/clean_acc")):
        assert final[key] == pytest.approx(acc_of(by_name[name], by_name[name].images[0]), abs=1e-12)
    # the clean set of a target domain is the clean subset itself: the drop's clean accuracy, on the same images
    assert final["target/clean_acc"] == final["clean_subset_acc"] == acc_of(clean, suite.clean_test.images)
    assert not any(k.startswith("ood_acc/") and k.split("/")[1] in ("label", "subpopulation", "clean") for k in final)
    label = trial.label_shift_metrics(model, suite, data, 8, cpu)
    assert 0 <= label["label_shift/balanced_acc"] <= 1
    assert sum(label["priors"]["bbse"]) == pytest.approx(1) and label["priors"]["true"] == pytest.approx([0.2, 0.3, 0.5])
    assert label["label_shift/prior_l1_error"] == pytest.approx(
        sum(abs(a - b) for a, b in zip(label["priors"]["bbse"], label["priors"]["true"])))


@pytest.mark.slow
def test_test_shifts_never_steer_selection(workdir):
    """Two studies identical but for their held-out test shifts (objective ood_val_acc, TPE): every trial has the
    same params and the same objective value. Held-out shifts are reported only; selection cannot read them."""
    (workdir / "a.toml").write_text(TINY.replace('name = "tiny"', 'name = "a"'))
    (workdir / "b.toml").write_text(TINY.replace('name = "tiny"', 'name = "b"')
                                    .replace('test = ["gaussian_noise", "contrast"]', 'test = ["fog", "rotate"]'))
    common = ["--no-report", "--n-trials", "4", "--set", 'study.objective="ood_val_acc"', "--set", 'study.pruner="none"']
    assert study.main(["--config", "a.toml", *common]) == 0
    assert study.main(["--config", "b.toml", *common]) == 0
    storage = f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}"
    a, b = (optuna.load_study(study_name=n, storage=storage).get_trials() for n in ("a", "b"))
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.value for t in a] == [t.value for t in b]
    assert set(a[0].user_attrs["shift_acc"]) != set(b[0].user_attrs["shift_acc"])  # their reports do differ


def test_surgical_sweep_enqueues_each_group_alone():
    """search.surgical_sweep: for each group, that group alone (head frozen) at each lr of full FT's sweep (the same
    tuning budget); through suggest each becomes that surgical trial. Without "surgical" among the strategies the
    key is refused (exit 2)."""
    cfg = config.load(None, ['search.strategy=["prefix", "surgical"]', "search.surgical_sweep=true",
                             "study.baseline_lrs=[0.01, 0.1]"])
    sweep = trial.surgical_sweep(cfg, 4)
    full = [b["params"]["lr"] for b in trial.baselines(cfg, 4) if b["name"] == "full_ft"]
    assert full == [0.01, 0.1]
    want = [{"lr": lr, "strategy": "surgical", "tune_group": j, "tune_head": False} for j in range(4) for lr in full]
    assert sweep == want
    st = optuna.create_study()
    for p in sweep:
        st.enqueue_trial(p)
    assert [trial.suggest(st.ask(), cfg, 4) for _ in sweep] == want
    assert trial.surgical_sweep(config.load(), 4) == []
    with pytest.raises(config.ConfigError) as err:
        config.load(None, ["search.surgical_sweep=true"])
    assert err.value.key == "search.surgical_sweep"


def test_surgical_cifar10_study_file_loads(tmp_path):
    """studies/surgical_cifar10.toml is a valid config wherever its local data lives (data.path overridden here:
    the test needs no ../shared)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "studies" / "surgical_cifar10.toml"
    cfg = config.load(path, [f"data.path={tmp_path}"])
    assert cfg.search.surgical_sweep and cfg.data.target_shift == ["gaussian_noise:5"]
    assert config.load(path, [f"data.path={tmp_path}", 'data.target_shift="rotate:3"']).data.target_shift == ["rotate:3"]


@pytest.mark.usefixtures("one_thread")
def test_a_finished_trial_frees_its_model_even_in_a_reference_cycle(tiny_config):
    """A trial's model is freed when objective returns, even when a reference cycle holds it (here made on purpose;
    hooks and tracebacks make them): memory must not grow across trials (optuna#1224). The collection runs before
    what survives is frozen (gc.freeze, so that later collections skip the long-lived context): frozen first, the
    cycle would never be collected."""
    # Only the trial's model matters here: pretraining, the shifted sets, a third epoch and a second torch thread
    # (whose OpenMP barriers wait for a busy core) cost time only: 28 s -> 1.6 s within this module's run at a load
    # average of ~4.7 on 2 cores.
    # Two epochs keep the freeze (epoch 0) and the unfreeze (epoch 1).
    cfg = config.load(tiny_config, ["model.weights=none", "shifts.selection=[]", "shifts.test=[]",
                                    "shifts.label_alpha=0", "train.epochs=2"])
    ctx = context.open_context(cfg, launch.preflight(cfg), log=lambda *a: None)
    s = sampling.open_study(cfg, ctx.storage, create=True)
    refs = []

    def on_complete(t, value, model, run_id):
        model.cycle = [model]  # a plain attribute: model -> list -> model
        refs.append(weakref.ref(model))

    for _ in range(2):
        s.enqueue_trial({"lr": 0.01, "freeze_layers": 1, "unfreeze_epoch": 1})
        t = s.ask()
        s.tell(t, trial.objective(t, ctx, None, on_complete))
        assert refs[-1]() is None
    assert gc.get_freeze_count() > 0

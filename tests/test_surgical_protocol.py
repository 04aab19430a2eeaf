"""Lee et al.'s protocol (issue 23): BatchNorm in eval mode, the best-validation epoch, surgical choices as unions of
groups, the sweep of each choice at each lr and BN mode, and the bad values of the new keys."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from harness import config, context, models, runs, strategies, tracking, train, trial
from harness.config import ConfigError

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=48, size=16, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def _bn_stats(groups) -> dict:
    """Every BatchNorm buffer (running_mean, running_var, num_batches_tracked), copied, keyed (group, module, buffer)."""
    return {(g, name, b): getattr(m, b).clone() for g, mod in groups.items() for name, m in mod.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for b in ("running_mean", "running_var", "num_batches_tracked")}


def _weights(module) -> dict:
    return {k: p.detach().clone() for k, p in module.named_parameters()}


# resnet8's groups: stem, layer1, layer2, layer3, head (indices 0..4)
CHOICES = {"full FT": dict(strategy="prefix", freeze_layers=0), "first block": dict(strategy="surgical", tune_set=(0, 1)),
           "layer2": dict(strategy="surgical", tune_set=(2,)), "head": dict(strategy="surgical", tune_set=(4,))}
TUNED = {"full FT": ["stem", "layer1", "layer2", "layer3", "head"], "first block": ["stem", "layer1"],
         "layer2": ["layer2"], "head": ["head"]}


@pytest.mark.parametrize("choice", CHOICES)
def test_bn_eval_freezes_every_statistic_while_tuned_weights_move(choice):
    """bn = "eval": after 2 epochs no BN statistic of any group has moved (running mean/var and the batch count), the
    tuned groups' weights have, the others' have not. bn = "train": the tuned groups' BN statistics move."""
    x, y = _data()
    for bn in ("eval", "train"):
        model, groups = models.build("resnet8", 5, seed=0)
        stats0, w0 = _bn_stats(groups), {g: _weights(m) for g, m in groups.items()}
        assert len({k[0] for k in stats0}) == 4  # every group but the head has BatchNorm
        recipe = train.Recipe(lr=0.05, epochs=2, batch_size=16, bn=bn, **CHOICES[choice])
        for _ in train.fit(model, groups, x, y, recipe, 0, CPU):
            # bn eval: the whole model in eval mode during the epoch it just trained; train: the tuned groups train
            assert any(m.training for m in model.modules()) == (bn == "train"), (choice, bn)
        stats1 = _bn_stats(groups)
        for g, m in groups.items():
            moved = [k for k in _weights(m) if not torch.equal(w0[g][k], _weights(m)[k])]
            assert bool(moved) == (g in TUNED[choice]), (choice, bn, g, moved)
        owners = {k[0] for k in stats0 if not torch.equal(stats0[k], stats1[k])}
        # eval: none moves; train: exactly the tuned groups' (the head has no BN)
        assert owners == (set() if bn == "eval" else set(TUNED[choice]) - {"head"}), (choice, bn, owners)


def test_choice_groups_unions_and_bad_names():
    names = ["stem", "layer1", "layer2", "layer3", "head"]
    assert strategies.choice_groups("stem+layer1", names) == (0, 1)
    assert strategies.choice_groups("head", names) == (4,)
    assert strategies.choice_groups("layer3 + stem", names) == (0, 3)
    for bad in ("stem+block1", "stem+stem", "layer1+"):
        with pytest.raises(ValueError, match="one of the model's groups"):
            strategies.choice_groups(bad, names)
    frozen = strategies.get("surgical").frozen(train.Recipe(lr=1, epochs=1, batch_size=1, strategy="surgical",
                                                            tune_set=(0, 1)), 0, 4)
    assert frozen == frozenset({2, 3, 4})


def test_sweep_crosses_choices_lrs_and_bn_modes():
    """Each choice of search.surgical_groups at each lr of the grid, with each mode of search.bn; the params suggest
    reads back unchanged (an enqueued trial is what it says)."""
    cfg = config.load(None, ['search.strategy=["prefix", "surgical"]', "search.surgical_sweep=true",
                             'search.surgical_groups=["stem+layer1", "layer2", "head"]', 'search.bn=["eval", "train"]',
                             "study.baseline_lrs=[0.1, 0.01]"])
    sweep = trial.surgical_sweep(cfg, 4)
    want = [(c, m, lr) for c in ("stem+layer1", "layer2", "head") for m in ("eval", "train") for lr in (0.1, 0.01)]
    assert [(p["tune_set"], p["bn"], p["lr"]) for p in sweep] == want
    import optuna
    for p in sweep:
        fixed = optuna.trial.FixedTrial(p)
        assert trial.suggest(fixed, cfg, 4) == p
    contrast = trial.surgical_sweep(dataclasses.replace(cfg, search=dataclasses.replace(
        cfg.search, bn_contrast=["stem+layer1"])), 4)
    assert [(p["tune_set"], p["bn"]) for p in contrast] == [("stem+layer1", m) for m in ("eval", "eval", "train", "train")] \
        + [(c, "train") for c in ("layer2", "layer2", "head", "head")]
    # a baseline runs at train.bn whatever search.bn lists
    fixed = optuna.trial.FixedTrial({"lr": 0.1, "freeze_layers": 0})
    fixed.set_user_attr("baseline", "full_ft")
    assert trial.suggest(fixed, cfg, 4)["bn"] == "train"
    words = strategies.bn_words({"bn": "eval"})
    assert words == ", BN eval"


@pytest.mark.parametrize("key,value,allowed", [
    ("train.bn", '"frozen"', "train, eval"), ("train.select_epoch", '"best"', "last, best_val"),
    ("search.bn", '["eval", "none"]', "train, eval"), ("search.surgical_groups", '["stem+"]', "joined by '+'"),
    ("search.bn_contrast", '["layer9"]', "choose one of")])
def test_bad_values_name_the_key_and_what_is_allowed(key, value, allowed):
    with pytest.raises(ConfigError) as e:
        config.load(None, [f"{key}={value}"])
    assert e.value.key == key and allowed in str(e.value)


def test_unknown_group_exits_2_naming_the_key(tiny_config, workdir):
    """A choice naming no group of the model: exit 2 at the check, naming the key and the groups; nothing created."""
    out = subprocess.run([sys.executable, "-m", "harness.study", "--config", str(tiny_config), "--set",
                          'search.strategy=["surgical"]', "--set", 'search.surgical_groups=["stem+block1"]'],
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "search.surgical_groups" in out.stderr and "stem, layer1, layer2, layer3, head" in out.stderr
    assert not (workdir / "mlruns").exists()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """The tiny study's context with train.select_epoch = best_val and 5 epochs."""
    from conftest import TINY

    root = tmp_path_factory.mktemp("bestval")
    (root / "tiny.toml").write_text(TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cfg = config.load(root / "tiny.toml", ["study.name=bestval", 'train.select_epoch="best_val"', "train.epochs=5"])
        yield context.open_context(cfg, 4, with_storage=False, log=lambda *_: None)


def test_best_val_returns_the_best_epoch_and_its_weights(ctx, monkeypatch):
    """An independent record, taken by wrapping train.evaluate on the validation split: each epoch's accuracy, computed
    here from the logits, and a copy of the weights it was measured on. The trial's model holds the weights of the
    first epoch of the maximum, and its reported validation is that epoch's."""
    record = []
    real = train.evaluate

    def spy(model, x, y, batch_size, device):
        out = real(model, x, y, batch_size, device)
        if x is ctx.data["val"][0]:
            acc = (out["logits"].argmax(1).cpu() == y.cpu()).double().mean().item()
            record.append((acc, {k: v.clone() for k, v in model.model.state_dict().items()}))
        return out

    monkeypatch.setattr(train, "evaluate", spy)
    # lr 1 and 3 on a tiny set: validation accuracy goes up and down over the epochs (lr 0.3 and 0.03 peaked at the last)
    bests = []
    for lr in (1.0, 3.0):
        record.clear()
        p = {"lr": lr, "freeze_layers": 0, "unfreeze_epoch": 0}
        run = runs.Run(tracking.child_run(ctx.client, ctx.exp_id, ctx.parent_id, "bv", 0, {}))
        fitted = trial.train_trial(None, ctx, p, run)
        accs = [a for a, _ in record]
        assert len(accs) == 5
        best = accs.index(max(accs))
        assert fitted.epoch == best, (accs, fitted.epoch)
        print(f"lr {lr}: val acc by epoch {accs}, best epoch {best}")
        assert fitted.val["acc"] == pytest.approx(max(accs), abs=1e-6)  # float32 mean; two accuracies differ by >= 1/179
        state = fitted.model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in record[best][1].items())
        bests.append(best)
        if best != 4:  # the last epoch's weights differ: the restore did something
            assert not all(torch.equal(state[k], v) for k, v in record[4][1].items())
    assert any(b != 4 for b in bests), "no case where the best epoch is not the last: the test would prove nothing"

"""Training primitives: frozen means frozen (weights and BN statistics), unfreezing really trains, schedules."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from harness import models, strategies, train

CPU = torch.device("cpu")


def _data(n=64, size=16, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def _snapshot(module):
    """Every parameter and buffer (BN running mean/var/count) of a module, copied."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _epoch(model, groups, frozen, opt, x, y, plan, gen, step):
    """One epoch as train.fit runs it: the groups set to train (set_training), the batches in gen's order."""
    train.set_training(model, groups, frozen)
    return train.train_one_epoch(model, opt, train.batches(x, y, plan, gen), plan, step)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_frozen_groups_bit_identical_until_unfreeze_then_change(optimizer):
    """With freeze_layers=2 and unfreeze at epoch 2 of 4: stem and layer1 weights AND BatchNorm running stats are
    bit-identical after epochs 0-1, the unfrozen groups change, and after the unfreeze every group changes
    (the optimizer really updates the formerly frozen weights, weight decay included)."""
    x, y = _data()
    model, groups = models.build("resnet8", 5, seed=0)
    opt = train.make_optimizer(model, optimizer, 0.01, 0.9, 5e-4)
    gen = torch.Generator().manual_seed(0)
    k, unfreeze, epochs, step = 2, 2, 4, 0
    start = {g: _snapshot(m) for g, m in groups.items()}
    for epoch in range(epochs):
        frozen = k if epoch < unfreeze else 0
        _, step = _epoch(model, groups, frozen, opt, x, y, train.Plan(16, 0.01, "constant", 16, CPU), gen, step)
        now = {g: _snapshot(m) for g, m in groups.items()}
        if epoch < unfreeze:
            for g in ("stem", "layer1"):
                assert _same(start[g], now[g]), f"{g} moved at epoch {epoch} while frozen"
            for g in ("layer2", "layer3", "head"):
                assert not _same(start[g], now[g]), f"{g} did not train at epoch {epoch}"
    for g in groups:
        assert not _same(start[g], now[g]), f"{g} did not change after unfreezing"
    bn_mean = start["stem"]["1.running_mean"]
    assert not torch.equal(bn_mean, now["stem"]["1.running_mean"]), "stem BN statistics never moved after unfreeze"


def test_linear_probe_trains_only_the_head():
    """freeze_layers = number of groups: only the head changes; every BN stays in eval mode during training."""
    x, y = _data()
    model, groups = models.build("resnet8", 5, seed=0)
    opt = train.make_optimizer(model, "sgd", 0.05, 0.9, 5e-4)
    before = {g: _snapshot(m) for g, m in groups.items()}
    _epoch(model, groups, 4, opt, x, y, train.Plan(16, 0.05, "constant", 4, CPU), torch.Generator().manual_seed(0), 0)
    for g in ("stem", "layer1", "layer2", "layer3"):
        assert _same(before[g], _snapshot(groups[g]))
        assert not any(m.training for m in groups[g].modules())
    assert not _same(before["head"], _snapshot(groups["head"]))
    assert groups["head"].training


def test_set_frozen_rejects_too_many_groups():
    model, groups = models.build("resnet8", 5)
    with pytest.raises(ValueError, match="freeze_layers"):
        train.set_frozen(model, groups, 5)


def test_lr_schedules():
    """cosine falls from base to 0; step decays x0.1 at 50% and 75%; constant stays."""
    assert train.lr_at(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert train.lr_at(50, 100, 0.1, "cosine") == pytest.approx(0.05)
    assert train.lr_at(100, 100, 0.1, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert [train.lr_at(s, 100, 1.0, "step") for s in (0, 49, 50, 75)] == pytest.approx([1, 1, 0.1, 0.01])
    assert train.lr_at(77, 100, 0.3, "constant") == 0.3


def test_training_is_deterministic_and_learns():
    """Same seed, same losses bit for bit on CPU; the loss falls on a learnable task."""
    x, y = _data(n=96)
    x[y == 0] *= 0.2  # make class 0 separable so learning shows in 3 epochs

    def run():
        model, groups = models.build("resnet8", 5, seed=3)
        opt = train.make_optimizer(model, "sgd", 0.05, 0.9, 0)
        gen, step, losses = torch.Generator().manual_seed(3), 0, []
        for _ in range(3):
            loss, step = _epoch(model, groups, 0, opt, x, y, train.Plan(32, 0.05, "cosine", 9, CPU), gen, step)
            losses.append(loss)
        return losses

    a, b = run(), run()
    assert a == b
    assert all(math.isfinite(v) for v in a) and a[-1] < a[0]


def test_evaluate_reports_accuracy_and_loss():
    x, y = _data(n=40)
    model, _ = models.build("resnet8", 5)
    out = train.evaluate(model, x, y, 16, CPU)
    assert 0 <= out["acc"] <= 1 and out["loss"] > 0


# which groups train at each of 4 epochs, written out by hand for resnet8 (stem, layer1, layer2, layer3, head)
STRATEGY_CASES = {
    "prefix k=2, unfreeze at 2": (dict(strategy="prefix", freeze_layers=2, unfreeze_epoch=2),
                                  [{"layer2", "layer3", "head"}] * 2 + [{"stem", "layer1", "layer2", "layer3", "head"}] * 2),
    "surgical stem + head": (dict(strategy="surgical", tune_group=0, tune_head=True), [{"stem", "head"}] * 4),
    "surgical layer2 alone": (dict(strategy="surgical", tune_group=2, tune_head=False), [{"layer2"}] * 4),
    "gradual every epoch": (dict(strategy="gradual", gradual_every=1),
                            [{"head"}, {"layer3", "head"}, {"layer2", "layer3", "head"}, {"layer1", "layer2", "layer3", "head"}]),
    "gradual every 2": (dict(strategy="gradual", gradual_every=2), [{"head"}] * 2 + [{"layer3", "head"}] * 2),
}


@pytest.mark.parametrize("case", STRATEGY_CASES)
def test_each_strategy_trains_exactly_its_groups(case):
    """Through train.fit, at every epoch: the intended groups get gradients and change; every other group has no
    gradient, stays in eval mode, and is bit-identical, BatchNorm running statistics included."""
    settings, expected = STRATEGY_CASES[case]
    x, y = _data()
    model, groups = models.build("resnet8", 5, seed=0)
    recipe = train.Recipe(lr=0.05, epochs=4, batch_size=16, schedule="constant", **settings)
    before = {g: _snapshot(m) for g, m in groups.items()}
    for (epoch, _, n_frozen, _), trains in zip(train.fit(model, groups, x, y, recipe, 0, CPU), expected):
        now = {g: _snapshot(m) for g, m in groups.items()}
        assert n_frozen == len(groups) - len(trains)
        for g, module in groups.items():
            grads = [p.grad is not None for p in module.parameters()]
            if g in trains:
                assert all(grads) and not _same(before[g], now[g]), f"{case}: {g} did not train at epoch {epoch}"
            else:
                assert not any(grads), f"{case}: frozen {g} got a gradient at epoch {epoch}"
                assert not any(m.training for m in module.modules()), f"{case}: frozen {g} in train mode"
                assert _same(before[g], now[g]), f"{case}: frozen {g} moved at epoch {epoch}"
        before = now


def test_prefix_recipe_is_todays_loop():
    """strategy = prefix (the default) passes set_frozen the same int k as before: the same weights bit for bit as
    the loop written with freeze_layers / unfreeze_epoch alone."""
    x, y = _data()
    runs = []
    for recipe in (train.Recipe(lr=0.05, epochs=3, batch_size=16, freeze_layers=2, unfreeze_epoch=1),
                   train.Recipe(lr=0.05, epochs=3, batch_size=16, freeze_layers=2, unfreeze_epoch=1, strategy="prefix")):
        model, groups = models.build("resnet8", 5, seed=0)
        list(train.fit(model, groups, x, y, recipe, 0, CPU))
        runs.append(_snapshot(model))
    model, groups = models.build("resnet8", 5, seed=0)
    opt = train.make_optimizer(model, "sgd", 0.05, 0.9, 5e-4)
    gen, step, total = torch.Generator().manual_seed(0), 0, 3 * 4
    for epoch in range(3):
        _, step = _epoch(model, groups, 2 if epoch < 1 else 0, opt, x, y, train.Plan(16, 0.05, "cosine", total, CPU), gen,
                         step)
    assert _same(runs[0], runs[1]) and _same(runs[0], _snapshot(model))


def test_strategy_hooks_act_as_an_independent_computation_predicts(monkeypatch):
    """Entries registered here, each prefix plus one hook, train bit for bit as predicted without the hook: a loss term
    equal to the cross-entropy doubles every gradient exactly, which is plain SGD (no momentum, no weight decay) at twice
    the lr; an after-epoch step halving the head is that step between plain train_one_epoch calls; a param-group rule
    giving the head lr_scale 0 leaves it bit-identical while the body trains. A rule that leaves a parameter out (it
    could never train) is refused."""
    x, y = _data()
    plain = dict(epochs=2, batch_size=16, momentum=0.0, weight_decay=0.0, schedule="constant")

    def fit(strategy, lr=0.05, **hooks):
        if hooks:
            monkeypatch.setitem(strategies.STRATEGIES, strategy, dataclasses.replace(strategies.PREFIX, **hooks))
        model, groups = models.build("resnet8", 5, seed=0)
        list(train.fit(model, groups, x, y, train.Recipe(lr=lr, strategy=strategy, **plain), 0, CPU))
        return model, groups

    base = _snapshot(fit("prefix")[0])
    doubled = fit("double", loss=lambda hook, xb, yb, logits: F.cross_entropy(logits, yb))[0]
    assert _same(_snapshot(doubled), _snapshot(fit("prefix", lr=0.1)[0])) and not _same(_snapshot(doubled), base)

    def halve_head(hook, epoch):
        with torch.no_grad():
            for p in hook.groups["head"].parameters():
                p.mul_(0.5)

    halved = fit("halve", after_epoch=halve_head)[0]
    model, groups = models.build("resnet8", 5, seed=0)
    opt, gen, step = train.make_optimizer(model, "sgd", 0.05, 0.0, 0.0), torch.Generator().manual_seed(0), 0
    for epoch in range(2):
        _, step = _epoch(model, groups, 0, opt, x, y, train.Plan(16, 0.05, "constant", 2 * 4, CPU), gen, step)
        halve_head(strategies.Fit(model, groups, None, {}), epoch)
    assert _same(_snapshot(halved), _snapshot(model)) and not _same(_snapshot(halved), base)

    def still_head(hook):
        head = {id(p) for p in hook.groups["head"].parameters()}
        return [{"params": [p for p in hook.model.parameters() if id(p) not in head]},
                {"params": list(hook.groups["head"].parameters()), "lr_scale": 0.0}]

    start = {g: _snapshot(m) for g, m in models.build("resnet8", 5, seed=0)[1].items()}
    _, groups = fit("still", param_groups=still_head)
    assert _same(start["head"], _snapshot(groups["head"]))
    assert not any(_same(start[g], _snapshot(groups[g])) for g in ("stem", "layer1", "layer2", "layer3"))
    with pytest.raises(ValueError, match="every parameter of the model exactly once"):
        fit("headless", param_groups=lambda hook: [{"params": list(hook.groups["head"].parameters())}])


def test_set_frozen_rejects_bad_sets():
    """Group indices outside the model and freezing every group (nothing to train) are errors naming the groups."""
    model, groups = models.build("resnet8", 5)
    with pytest.raises(ValueError, match="head"):
        train.set_frozen(model, groups, {5})
    with pytest.raises(ValueError, match="nothing would train"):
        train.set_frozen(model, groups, set(range(5)))
    train.set_frozen(model, groups, {0, 1, 2, 4})  # surgical layer3 without the head: allowed
    assert [p.requires_grad for p in groups["head"].parameters()] == [False, False]


def _flips_and_crops(x, pad=train.CROP_PAD):
    """Every flip (no, yes) x vertical shift x horizontal shift of one C x H x W image, written out one at a time:
    F.pad of the (flipped) image, then a plain slice. -> {(flip, dy, dx): image}."""
    h, w = x.shape[-2:]
    out = {}
    for flip in (False, True):
        padded = F.pad((x.flip(-1) if flip else x)[None], (pad,) * 4, mode="reflect")[0]
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                out[flip, dy, dx] = padded[:, dy:dy + h, dx:dx + w]
    return out


def test_flip_crop_is_a_seeded_flip_and_crop_of_every_image():
    """Each augmented image is one of the 2 x 9 x 9 flips and 4-px reflect-padded crops of its own image (checked
    against each candidate written out one image at a time); over 64 images both flips and many shifts occur and
    most images change; the same generator seed gives the same batch, another seed another one."""
    x = _data(n=64)[0]
    out = train.flip_crop(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    drawn = []
    for i in range(len(x)):
        match = [t for t, img in _flips_and_crops(x[i]).items() if torch.equal(img, out[i])]
        assert match, f"image {i} is no flip and crop of its input"
        drawn.append(match[0])
    assert {f for f, _, _ in drawn} == {False, True}
    assert len({(dy, dx) for _, dy, dx in drawn}) > 20
    assert sum(not torch.equal(out[i], x[i]) for i in range(len(x))) > 55
    assert torch.equal(out, train.flip_crop(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, train.flip_crop(x, torch.Generator().manual_seed(1)))


def test_augmented_training_feeds_flipped_crops_in_the_same_order_deterministically():
    """Through fit with augment = "flip_crop": the batches the model sees are flips and crops of the very images
    augment = "none" feeds at the same step (its own generator leaves the batch order alone), so they differ from
    them; the same seed trains the same weights bit for bit, another seed other weights, and none others again."""
    x, y = _data(n=48)

    def run(augment, seed=0):
        model, groups = models.build("resnet8", 5, seed=0)
        seen = []
        model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
        recipe = train.Recipe(lr=0.05, epochs=2, batch_size=16, freeze_layers=2, unfreeze_epoch=1, augment=augment)
        list(train.fit(model, groups, x, y, recipe, seed, CPU))
        return seen, _snapshot(model)

    plain, w_plain = run("none")
    aug, w_aug = run("flip_crop")
    assert len(aug) == len(plain) == 6
    for a, p in zip(aug, plain):
        assert not torch.equal(a, p)
        for i in range(len(a)):
            assert any(torch.equal(img, a[i]) for img in _flips_and_crops(p[i]).values())
    again, w_again = run("flip_crop")
    assert all(torch.equal(a, b) for a, b in zip(aug, again)) and _same(w_aug, w_again)
    assert not _same(w_aug, w_plain) and not _same(w_aug, run("flip_crop", seed=1)[1])


def test_augment_is_checked():
    from harness import config

    with pytest.raises(config.ConfigError,
                       match=r"train\.augment: 'flip' is not allowed; choose one of: none, flip_crop"):
        config.load(None, ['train.augment="flip"'])
    assert config.load(None, ['train.augment="flip_crop"']).train.augment == "flip_crop"
    model, groups = models.build("resnet8", 5)
    with pytest.raises(ValueError, match="augment must be one of none, flip_crop"):
        list(train.fit(model, groups, *_data(), train.Recipe(lr=0.1, epochs=1, batch_size=16, augment="crop"), 0, CPU))


def test_loss_is_a_recipe_setting():
    """Recipe.loss names an entry of train.LOSSES. cross_entropy, the default, is the loop's loss as it always was
    (the same weights bit for bit); label_smoothing's loss over one batch of every image is the untrained model's
    cross-entropy with label smoothing 0.1 (not the plain one), and it trains other weights; an unknown loss is
    refused."""
    x, y = _data()
    model, groups = models.build("resnet8", 5, seed=0)
    with torch.no_grad():
        logits = copy.deepcopy(model).train()(x)  # batch statistics, as the one training batch sees them
    runs = {}
    for loss in ("cross_entropy", None, "label_smoothing"):
        model, groups = models.build("resnet8", 5, seed=0)
        recipe = train.Recipe(lr=0.05, epochs=1, batch_size=64, **({"loss": loss} if loss else {}))
        (_, runs[loss], _, _), = train.fit(model, groups, x, y, recipe, 0, CPU)
        runs[loss, "weights"] = _snapshot(model)
    assert _same(runs["cross_entropy", "weights"], runs[None, "weights"]) and runs["cross_entropy"] == runs[None]
    smoothed, plain = F.cross_entropy(logits, y, label_smoothing=0.1).item(), F.cross_entropy(logits, y).item()
    assert runs["label_smoothing"] == pytest.approx(smoothed, rel=1e-5) != plain  # 2.4334 vs 2.4330 here
    assert runs["cross_entropy"] == pytest.approx(plain, rel=1e-5)
    assert not _same(runs["label_smoothing", "weights"], runs["cross_entropy", "weights"])
    with pytest.raises(ValueError, match="loss must be one of cross_entropy, label_smoothing, got 'hinge'"):
        list(train.fit(model, groups, x, y, train.Recipe(lr=0.1, epochs=1, batch_size=16, loss="hinge"), 0, CPU))

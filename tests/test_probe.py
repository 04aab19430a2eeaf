"""The converged linear probe: its head is scikit-learn's fit on the cached features, LP-FT starts from exactly it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from harness import config, context, probe, runs, store, tracking, train, trial

pytestmark = pytest.mark.slow


def _sklearn_probe(ftr, ytr, fval, yval):
    """The fit, written out with sklearn alone: each C of the grid, the best validation accuracy wins (ties: the lower
    validation log-loss, then the smaller C); returns (C, coef, intercept)."""
    best = None
    for c in probe.C_GRID:
        clf = LogisticRegression(C=c, max_iter=probe.MAX_ITER, tol=1e-6).fit(ftr.double().numpy(), ytr.numpy())
        acc = clf.score(fval.double().numpy(), yval.numpy())
        p = clf.predict_proba(fval.double().numpy())
        loss = -np.log(p[np.arange(len(yval)), yval.numpy()]).mean()
        if best is None or (acc, -loss) > (best[0], -best[1]):
            best = (acc, loss, c, clf.coef_, clf.intercept_)
    return best[2], best[3], best[4]


def test_fit_equals_sklearn_and_picks_c_on_validation():
    """probe.fit on separable-ish random features: the chosen C and the head equal sklearn's own fit at that C."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 8, generator=g) * 2
    ytr, yval = torch.arange(120) % 4, torch.arange(60) % 4
    ftr = centers[ytr] + torch.randn(120, 8, generator=g) * 1.5
    fval = centers[yval] + torch.randn(60, 8, generator=g) * 1.5
    p = probe.fit(ftr, ytr, fval, yval)
    c, coef, intercept = _sklearn_probe(ftr, ytr, fval, yval)
    assert p.c == c
    np.testing.assert_allclose(p.weight.numpy(), coef, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p.bias.numpy(), intercept, rtol=1e-5, atol=1e-5)
    assert p.val_acc == max(p.val_acc_by_c.values())


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """The tiny study's context (real data, pretraining, shifted sets, MLflow on sqlite) in a temp dir."""
    from conftest import TINY

    root = tmp_path_factory.mktemp("probe")
    (root / "tiny.toml").write_text(TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cfg = config.load(root / "tiny.toml", ["study.name=probe"])
        yield context.open_context(cfg, 4, with_storage=False, log=lambda *_: None)


def _run(ctx, number):
    return runs.Run(tracking.child_run(ctx.client, ctx.exp_id, ctx.parent_id, "probe", number, {"freeze_layers": 4}))


def test_linear_probe_head_is_sklearn_on_the_cached_features(ctx):
    """The linear_probe trial's model head equals sklearn's multinomial logistic regression (C chosen on validation)
    fitted on the features cached in mlruns/cache/probe-features-*.safetensors, which are the frozen body's head
    inputs; a second probe reads the cache (no feature pass)."""
    p = {"lr": None, "freeze_layers": 4, "unfreeze_epoch": 3}
    fitted = trial.train_trial(None, ctx, p, _run(ctx, 0), baseline="linear_probe")
    model, groups = fitted.model, fitted.groups
    files = sorted(ctx.cache.glob("probe-features-*.safetensors"))
    assert len(files) == 1
    feats = store.load_tensors(files[0])[0]
    ytr, yval = ctx.data_cpu["train"][1], ctx.data_cpu["val"][1]
    # the cache holds what the frozen body feeds the head
    fresh, fgroups = trial.fresh_model(ctx.cfg.model, 5, ctx.pretrained, ctx.device, 7)
    seen = []
    fgroups["head"].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    train.predict(fresh, ctx.data["val"][0], 64, ctx.device)
    torch.testing.assert_close(torch.cat(seen), feats["val"])
    c, coef, intercept = _sklearn_probe(feats["train"], ytr, feats["val"], yval)
    np.testing.assert_allclose(groups["head"].weight.detach().numpy(), coef, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(groups["head"].bias.detach().numpy(), intercept, rtol=1e-5, atol=1e-5)
    run = ctx.client.get_run(ctx.client.search_runs([ctx.exp_id], "tags.`harness.role` = 'trial'")[0].info.run_id)
    assert float(run.data.params["probe_c"]) == c

    # the fit is cached too: a second probe neither recomputes features nor refits, and reads back the same probe
    first = probe.fit(feats["train"], ytr, feats["val"], yval)

    def no_pass(*a, **k):
        raise AssertionError("features recomputed or probe refitted despite the cache")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probe, "features", no_pass)
        mp.setattr(probe, "fit", no_pass)
        again = probe.fitted(ctx, model, groups)
    assert torch.equal(again.weight, groups["head"].weight.detach()) and torch.equal(again.bias, first.bias)
    assert dataclasses.asdict(again).keys() == dataclasses.asdict(first).keys()
    assert (again.c, again.val_acc_by_c, again.train_loss, again.val_acc, again.val_loss) == \
        (first.c, first.val_acc_by_c, first.train_loss, first.val_acc, first.val_loss)
    assert len(list(ctx.cache.glob("probe-fit-*.safetensors"))) == 1


def test_lp_ft_starts_from_exactly_the_probe_head(ctx, monkeypatch):
    """LP-FT's fine-tuning (train.fit) receives a model whose head is bit for bit the probe's, and every group trains
    from the first epoch (freeze_layers 0) at LP-FT's own lr."""
    want = probe.fitted(ctx, *trial.fresh_model(ctx.cfg.model, 5, ctx.pretrained, ctx.device, 0))
    seen = {}

    class Stop(Exception):
        pass

    def fake_fit(model, groups, x, y, recipe, seed, device, view=None):
        seen.update(weight=groups["head"].weight.detach().clone(), bias=groups["head"].bias.detach().clone(),
                    recipe=recipe)
        raise Stop
        yield  # a generator, like train.fit

    monkeypatch.setattr(train, "fit", fake_fit)
    p = {"lr": 0.003, "freeze_layers": 0, "unfreeze_epoch": 0}
    with pytest.raises(Stop):
        trial.train_trial(None, ctx, p, _run(ctx, 1), baseline="lp_ft")
    assert torch.equal(seen["weight"], want.weight) and torch.equal(seen["bias"], want.bias)
    assert seen["recipe"].freeze_layers == 0 and seen["recipe"].lr == 0.003

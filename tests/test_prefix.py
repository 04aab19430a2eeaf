"""The frozen-prefix cache: training and evaluation through it give the same floats as recomputing, for every k, in a
trial and across trials; it stays within its budget and says so once; anything that changes the prefix's output
misses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from harness import config, models, prefix, train

CPU = torch.device("cpu")
WEIGHTS = ("resnet8", "none", 0, 5)  # what prefix.for_trial names a trial's initial weights by


def _data(n, size=16, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def _trial(cache, k, unfreeze, train_set, sets, epochs=3, batch_size=16, augment="none"):
    """A trial as harness.trial runs one: fresh resnet8 (seed 0, channels_last), train.fit with per-epoch
    validation, then predictions on every set. Without a cache the model itself is passed everywhere, as before
    the cache existed. Returns (per-epoch loss and validation logits, final logits per set, final state_dict)."""
    model, groups = models.build("resnet8", 5, seed=0)
    model = train.prepare(model, CPU)
    seen = prefix.view(cache, model, groups, WEIGHTS) if cache is not None else model
    recipe = train.Recipe(lr=0.05, epochs=epochs, batch_size=batch_size, freeze_layers=k, unfreeze_epoch=unfreeze,
                          augment=augment)
    curve = [(loss, train.evaluate(seen, *sets[0], 16, CPU)["logits"])
             for _, loss, _, _ in train.fit(model, groups, *train_set, recipe, 0, CPU,
                                            seen if cache is not None else None)]
    final = [train.predict(seen, x, 16, CPU) for x, _ in sets]
    return curve, final, {name: t.clone() for name, t in model.state_dict().items()}


def _same(a, b) -> bool:
    (ca, fa, sa), (cb, fb, sb) = a, b
    return (all(la == lb and torch.equal(va, vb) for (la, va), (lb, vb) in zip(ca, cb))
            and all(torch.equal(x, y) for x, y in zip(fa, fb)) and all(torch.equal(sa[n], sb[n]) for n in sa))


@pytest.mark.parametrize("unfreeze", [1, 3], ids=["unfreeze-at-1", "never"])
@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_cached_trials_are_bit_identical_to_recomputing(k, unfreeze):
    """For every k of resnet8 (0 = nothing frozen .. 4 = linear probe), frozen for good or until epoch 1: the epoch
    losses, every validation's logits, the final logits on three evaluation sets and every weight and BN statistic
    are equal bit for bit with and without the cache, for the trial that fills it and for a second trial that reads
    it. 70 training images in batches of 16 leave a last batch of 6, so the shuffled batches are of two sizes."""
    train_set, sets = _data(70), [_data(40, seed=1), _data(37, seed=2), _data(16, seed=3)]
    plain = _trial(None, k, unfreeze, train_set, sets)
    cache = prefix.Cache(budget=2**30)
    first = _trial(cache, k, unfreeze, train_set, sets)
    misses, hits = cache.misses, cache.hits
    second = _trial(cache, k, unfreeze, train_set, sets)
    assert _same(plain, first) and _same(plain, second)
    if k == 0:
        assert cache.entries == {} and cache.hits == 0
        return
    # the cache really served: the training split and the validation set while frozen, every set if frozen for good
    assert misses == (2 if unfreeze == 1 else 4) and cache.misses == misses, (misses, cache.misses)
    assert cache.hits - hits > hits  # the second trial computed nothing and read all of it
    train_key = next(key for key, (x, _) in cache.entries.items() if x is train_set[0])
    assert train_key[1] == k


def test_segments_are_the_models_own_forward():
    """Every registry ResNet cuts into one segment per group whose composition is its forward, float for float; a
    factory that groups the same network otherwise (or another architecture) gets None, and is recomputed."""
    x = _data(4, size=32)[0]
    for name in ("resnet8", "resnet20", "resnet18"):
        model, groups = models.build(name, 5, seed=0)
        model = train.prepare(model, CPU).eval()
        segs = prefix.segments(model, groups)
        assert len(segs) == len(groups)
        with torch.no_grad():
            assert torch.equal(prefix.run(segs, 0, len(segs), train.to_device_batch(x, CPU)),
                               model(train.to_device_batch(x, CPU))), name
    model, groups = models.build("resnet8", 5)
    regrouped = {"stem": nn.ModuleList([model.body.conv1, model.body.bn1, model.body.layer1]),
                 "layer2": model.body.layer2, "layer3": model.body.layer3, "head": model.body.linear}
    assert prefix.segments(model, regrouped) is None
    mobile, mgroups = models.build("mobilenet_v3_small", 5)
    assert prefix.segments(mobile, mgroups) is None
    assert prefix.view(prefix.Cache(budget=2**30), mobile, mgroups, WEIGHTS).inputs(x, 4, CPU) == (x, mobile)


def test_a_last_batch_of_one_image_is_recomputed():
    """65 images in batches of 16: every epoch ends on a batch of one, which oneDNN convolves with another kernel than
    a batch of 16, so the training split is not served from the cache on CPU, and the trial stays bit-identical."""
    train_set, sets = _data(65), [_data(40, seed=1)]
    cache = prefix.Cache(budget=2**30)
    assert _same(_trial(None, 3, 3, train_set, sets), _trial(cache, 3, 3, train_set, sets))
    assert [x for x, _ in cache.entries.values()] == [sets[0][0]]  # the validation set only


def test_augmented_training_recomputes_the_prefix_and_evaluation_still_reads_the_cache():
    """train.augment = "flip_crop": every epoch's training images differ, so the training split is never cached; the
    validation and evaluation sets (not augmented) are, and the trial equals the augmented trial without a cache."""
    train_set, sets = _data(70), [_data(40, seed=1), _data(37, seed=2)]
    cache = prefix.Cache(budget=2**30)
    assert _same(_trial(None, 2, 3, train_set, sets, augment="flip_crop"),
                 _trial(cache, 2, 3, train_set, sets, augment="flip_crop"))
    assert [x for x, _ in cache.entries.values()] == [sets[0][0], sets[1][0]]


def test_a_cache_over_its_budget_recomputes_and_says_so_once():
    """A budget that holds the linear probe's 64 features per image but not layer1's 16 x 16 x 16 maps: the k = 4 trial
    is cached, the k = 2 trial recomputes everything it cannot hold, equal to recomputing, and the fallback is said
    once however many sets did not fit."""
    said = []
    train_set, sets = _data(70), [_data(40, seed=1), _data(37, seed=2)]
    cache = prefix.Cache(budget=200_000, log=said.append)  # 70 x 64 x 4 B fit; 70 x 16 KiB do not
    assert _same(_trial(None, 4, 3, train_set, sets), _trial(cache, 4, 3, train_set, sets))
    held = cache.used
    assert held == (70 + 40 + 37) * 64 * 4 and said == []
    assert _same(_trial(None, 2, 3, train_set, sets), _trial(cache, 2, 3, train_set, sets))
    assert cache.used == held and len(cache.refused) == 3  # the training split and both sets, at k = 2
    assert len(said) == 1 and "train.cache_mb" in said[0] and "recomputing" in said[0]
    off = prefix.Cache(budget=0)
    assert prefix.view(off, *models.build("resnet8", 5), WEIGHTS).segments is None  # cache_mb = 0: off, silently


def test_anything_that_changes_the_prefix_output_misses():
    """Other k, other initial weights, other images, the same images edited in place, another batch size: each is a
    new entry, never a stale one; the view's predictions equal the model's after each change."""
    cache = prefix.Cache(budget=2**30)
    x = _data(40, seed=1)[0]
    model, groups = models.build("resnet8", 5, seed=0)
    model = train.prepare(model, CPU)

    def check(v, images, batch_size=16):
        assert torch.equal(train.predict(v, images, batch_size, CPU), train.predict(model, images, batch_size, CPU))

    v = prefix.view(cache, model, groups, WEIGHTS)
    check(v, x)
    check(v, x)
    assert (cache.misses, cache.hits) == (1, 1)
    v.k = 2
    check(v, x)
    assert cache.misses == 2
    check(prefix.view(cache, model, groups, ("resnet8", "pretrain-other", 0, 5)), x)
    assert cache.misses == 3
    check(v, x.clone())
    assert cache.misses == 4
    x.mul_(0.5)  # same tensor, new pixels: its version counter moved
    check(v, x)
    assert cache.misses == 5
    check(v, x, batch_size=8)
    assert cache.misses == 6
    keys = list(cache.entries)
    assert len(set(keys)) == 6 and {key[1] for key in keys} == {2, 4}
    with torch.inference_mode():  # images made under inference mode (no version counter) are cached too
        made = x * 1
    check(v, made)
    assert cache.misses == 7


def test_unfreezing_lowers_the_view_and_never_raises_it():
    """fit hands the view each epoch's frozen groups: a gradual trial's cached prefix shrinks as groups join; a
    surgical set serves its leading frozen groups only."""
    model, groups = models.build("resnet8", 5, seed=0)
    v = prefix.view(prefix.Cache(budget=2**30), model, groups, WEIGHTS)
    assert v.k == 4
    for frozen, k in ((4, 4), (3, 3), (frozenset({0, 1, 3, 4}), 2), (4, 2), (0, 0)):
        v.train_with(frozen)
        assert v.k == k
    assert train.n_leading(frozenset({1, 2})) == 0 and train.n_leading(frozenset({0, 1, 2, 4})) == 3


def test_cache_mb_is_checked(tmp_path):
    with pytest.raises(config.ConfigError, match=r"train\.cache_mb: must be >= 0"):
        config.load(None, ["train.cache_mb=-1"])
    with pytest.raises(config.ConfigError, match=r"train\.cache_mb: expected an integer"):
        config.load(None, ["train.cache_mb=1.5"])
    assert config.load(None, ["train.cache_mb=0"]).train.cache_mb == 0


# logged values that measure the machine, not the model
MACHINE = ("train_seconds", "eval_seconds", "rss_mb", "peak_rss_mb", "gpu_peak_mb")


@pytest.mark.slow
def test_a_study_logs_the_same_metrics_with_and_without_the_cache(tiny_config, workdir, monkeypatch):
    """The tiny study (full FT, linear probe, LP-FT, two sampled trials; no pruning) run through harness.study twice,
    train.cache_mb = 0 and the default: every trial has the same params and objective value, and every metric its
    run logged (every epoch's curves, the final test and shift metrics, label shift, corruption errors) is equal,
    timings and memory aside. The cached run did read the cache; the other never did."""
    from mlflow.tracking import MlflowClient
    import optuna

    from harness import data as datamod, store, study, suite as suitemod, target

    served, real = [], prefix.inputs

    def spy(v, x, batch_size, device, shuffled=False):
        out = real(v, x, batch_size, device, shuffled)
        served.append(out[1] is not v.model)
        return out

    monkeypatch.setattr(prefix, "inputs", spy)
    # Built here first, so both studies load the shifted sets from the cache (which keeps the order they were built
    # in: ood_ece_mean sums in that order, and a name-sorted cache once put a study that built them 1 ulp apart).
    cfg, cache = config.load(tiny_config), store.cache_dir()
    cache.mkdir(parents=True)
    data = datamod.load(cfg.data, cfg.study.seed, cache)
    suitemod.build(cfg.shifts, target.target_domain(cfg.data, data, cfg.study.seed, cache), cache)
    runs = {}
    for name, mb in (("plain", 0), ("cached", 1024)):
        served.clear()
        assert study.main(["--config", str(tiny_config), "--no-report", "--study-name", name, "--n-trials", "5",
                           "--set", 'study.pruner="none"', "--set", f"train.cache_mb={mb}"]) == 0
        assert any(served) == (mb > 0)
        s = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'mlruns' / 'optuna.db'}")
        client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
        out = {}
        for t in s.get_trials():
            run = client.get_run(t.user_attrs["mlflow_run_id"])
            curves = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
                      for k in ("train_loss", "val_acc", "val_loss")}
            out[t.number] = (t.params, t.values, curves,
                             {k: v for k, v in run.data.metrics.items()
                              if k not in MACHINE and not k.startswith("system/")})
        runs[name] = out
    assert len(runs["cached"]) == 5 and {p["freeze_layers"] for p, *_ in runs["cached"].values()} >= {0, 4}
    for number, plain in runs["plain"].items():
        assert runs["cached"][number] == plain, f"trial {number} differs with the cache"

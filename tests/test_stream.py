"""Issue 26 item 2: an ImageFolder study over data.memory_budget streams its images from a decoded uint8 copy on disk
(harness.stream) and gives the metrics of the same study held in memory; the study says which path it took and why."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from harness import config, data as datamod, models, stream, suite as suitemod, train, trial as trialmod
from harness.config import ConfigError, Data

CPU = torch.device("cpu")


def _folder(root, classes=("ants", "bees", "cats"), n=14, seed=0):
    """One folder per class of n PNGs of 20 x 24 px: a class colour under smooth noise, so a model learns."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n):
            small = rng.uniform(0, 1, (4, 5, 3)) * 0.6 + np.eye(3)[k % 3] * 0.4
            Image.fromarray((small * 255).astype(np.uint8)).resize((24, 20), Image.BILINEAR).save(root / c / f"{i}.png")
    return root


def _load(cfg: Data, cache):
    said = []
    return datamod.load(cfg, 0, cache, log=said.append), said


def _metrics(data, cfg):
    """A resnet8 fine-tuned 2 epochs with flip-and-crop and evaluated on clean and shifted test sets."""
    sh = dataclasses.replace(cfg.shifts, selection=["gaussian_blur"], test=["gaussian_noise", "contrast"],
                             severities=[1, 3], eval_images=0, label_alpha=1.0)
    s, _ = suitemod.build(sh, data, None)
    model, groups = models.build("resnet8", len(data["classes"]), seed=0)
    model = train.prepare(model, CPU)
    recipe = train.Recipe(lr=0.05, epochs=2, batch_size=8, freeze_layers=1, unfreeze_epoch=1, augment="flip_crop")
    losses = [loss for _, loss, _, _ in train.fit(model, groups, *data["train"], recipe, seed=0, device=CPU)]
    val = train.evaluate(model, *data["val"], 16, CPU)
    final, curves, _ = trialmod.test_metrics(model, s, data, 16, CPU)
    return losses, val["logits"], final, {n: {k: v["acc"] for k, v in c.items()} for n, c in curves.items()}


def test_a_streamed_study_gives_the_in_memory_metrics(tmp_path):
    """The same folder, in memory (budget 0.5 of the RAM) and streamed (a budget below its 14 KiB): the path each
    took is said with its numbers; the streamed splits are memory-mapped .npy files (no temporary file left) whose
    rows are the in-memory images; training through the DataLoader's workers and evaluation give the same losses,
    logits and metrics, bit for bit."""
    root = _folder(tmp_path / "imgs")
    cfg = config.load(None, ["data.source=\"imagefolder\"", f"data.path=\"{root}\"", "data.image_size=16",
                             "model.weights=\"none\""])
    mem, said_mem = _load(cfg.data, tmp_path / "cache")
    low = dataclasses.replace(cfg.data, memory_budget=1e-9)
    streamed, said_str = _load(low, tmp_path / "cache")
    n = 3 * 14
    assert said_mem[0].startswith(f"data: in memory: {n * 3 * 16 * 16 / 2**20:.1f} MiB of uint8 images ({n} x 3 x 16 x")
    assert "fit data.memory_budget = 0.5 of the" in said_mem[0]
    assert said_str[0].startswith("data: streaming from disk:") and "exceed data.memory_budget = 1e-09" in said_str[0]
    assert f"stream-{mem['key']}" in said_str[0]
    folder = tmp_path / "cache" / f"stream-{mem['key']}"
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "test_x.npy", "train_x.npy", "val_x.npy"]
    for split in ("train", "val", "test"):
        x, y = streamed[split]
        assert isinstance(x, stream.Streamed) and np.load(x.path, mmap_mode="r").dtype == np.uint8
        assert torch.equal(x[slice(None)], mem[split][0]) and torch.equal(y, mem[split][1])
    assert streamed["classes"] == mem["classes"] == ["ants", "bees", "cats"]
    a, b = _metrics(mem, cfg), _metrics(streamed, cfg)
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and a[2] == b[2] and a[3] == b[3]
    again, _ = _load(low, tmp_path / "cache")  # read back from the files, not decoded again
    assert again["train"][0].path == streamed["train"][0].path


def test_streamed_rows_come_back_in_the_order_asked():
    """Streamed indexing reads ascending and puts rows back in the order of the index (a shuffled batch)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        arr = np.arange(10 * 3 * 2 * 2, dtype=np.uint8).reshape(10, 3, 2, 2)
        np.save(Path(tmp) / "x.npy", arr)
        x = stream.Streamed(str(Path(tmp) / "x.npy"), arr.shape)
        idx = torch.tensor([7, 2, 9, 0])
        assert torch.equal(x[idx], torch.from_numpy(arr[[7, 2, 9, 0]]))
        chunks = list(torch.arange(10).flip(0).split(3))
        got = list(x.batches(chunks, CPU))
        assert all(torch.equal(g, torch.from_numpy(arr[c.numpy()])) for g, c in zip(got, chunks))
        stream._open.cache_clear()


@pytest.mark.parametrize("value,phrase", [(0, "(0, 1]"), (-0.5, "(0, 1]"), (1.5, "(0, 1]"), ("nan", "finite number")])
def test_a_bad_memory_budget_is_bad_input(value, phrase):
    """Out of (0, 1] or not a number: bad input naming the key (tests/test_bad_input.py: exit 2, nothing created)."""
    with pytest.raises(ConfigError) as err:
        config.load(None, [f"data.memory_budget={value}"])
    assert err.value.key == "data.memory_budget" and phrase in str(err.value)


def test_a_fit_keeps_one_set_of_reader_workers_for_its_epochs_and_ends_them(tmp_path):
    """A streamed fit reads every epoch with the same worker processes (stream.Reader, persistent_workers), ends them
    with its last epoch's batches, and ends them too when its caller stops early (a pruned trial: the generator
    closed) or raises into it; its losses are those of the same images held in memory, epoch by epoch."""
    import multiprocessing

    arr = np.random.default_rng(0).integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "x.npy", arr)
    x, y = stream.Streamed(str(tmp_path / "x.npy"), arr.shape), torch.arange(40) % 3
    recipe = train.Recipe(lr=0.05, epochs=3, batch_size=8)

    def fit(images):
        model, groups = models.build("resnet8", 3, seed=0)
        return train.fit(train.prepare(model, CPU), groups, images, y, recipe, seed=0, device=CPU)

    before = {p.pid for p in multiprocessing.active_children()}
    workers, losses = [], []
    for _, loss, _, _ in fit(x):
        losses.append(loss)
        workers.append({p.pid for p in multiprocessing.active_children()} - before)
    assert len(workers[0]) == min(stream.WORKERS, 5) and workers[1] == workers[0]  # the same processes, epoch 2
    assert workers[2] == set()  # ended before the last epoch is handed to the caller
    assert losses == [loss for _, loss, _, _ in fit(torch.from_numpy(arr))]
    for raised in (None, KeyboardInterrupt):  # closed by the caller (None), or an exception raised into it
        g = fit(x)
        next(g)
        assert {p.pid for p in multiprocessing.active_children()} - before
        if raised is None:
            g.close()
        else:
            with pytest.raises(raised):
                g.throw(raised)
        assert {p.pid for p in multiprocessing.active_children()} - before == set()
    stream._open.cache_clear()


def test_the_prefix_cache_serves_a_streamed_split_with_the_in_memory_floats(tmp_path):
    """A frozen-body trial (resnet8, 3 groups frozen for good) on the streamed training split through the prefix cache:
    the cache computes the split's prefix once (a miss) and serves every later epoch and a second trial from memory
    (hits), and the losses, logits and weights equal those of the same trials on the in-memory split without a
    cache (recomputed every batch)."""
    from harness import prefix

    root = _folder(tmp_path / "imgs")
    cfg = config.load(None, ["data.source=\"imagefolder\"", f"data.path=\"{root}\"", "data.image_size=16",
                             "model.weights=\"none\""])
    mem, _ = _load(cfg.data, tmp_path / "cache")
    streamed, _ = _load(dataclasses.replace(cfg.data, memory_budget=1e-9), tmp_path / "cache")
    assert isinstance(streamed["train"][0], stream.Streamed)

    def run(data, cache):
        model, groups = models.build("resnet8", 3, seed=0)
        model = train.prepare(model, CPU)
        seen = prefix.view(cache, model, groups, ("resnet8", "none", 0, 3)) if cache is not None else None
        recipe = train.Recipe(lr=0.05, epochs=3, batch_size=8, freeze_layers=3, unfreeze_epoch=3)
        losses = [loss for _, loss, _, _ in train.fit(model, groups, *data["train"], recipe, 0, CPU, seen)]
        logits = train.predict(seen if seen is not None else model, data["val"][0], 16, CPU)
        return losses, logits, {k: t.clone() for k, t in model.state_dict().items()}

    plain = run(mem, None)
    cache = prefix.Cache(budget=2**30)
    first = run(streamed, cache)
    assert cache.misses == 2 and any(isinstance(x, stream.Streamed) for x, _ in cache.entries.values())
    hits = cache.hits
    second = run(streamed, cache)
    assert cache.misses == 2 and cache.hits > hits  # the second trial read the streamed splits' prefixes from memory
    for a in (first, second):
        assert a[0] == plain[0] and torch.equal(a[1], plain[1]) and all(torch.equal(a[2][k], plain[2][k]) for k in a[2])

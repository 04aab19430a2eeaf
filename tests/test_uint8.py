"""Issue 26 item 1: images held as uint8 at rest and made float per batch give the float path's floats; the shifted
sets held as uint8 differ from their floats by the documented truncation only, and so do the metrics, within a bound."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness import config, data as datamod, models, suite as suitemod, train, trial as trialmod

CPU = torch.device("cpu")


def _uint8_digits(n: int = 96, size: int = 16):
    """Digits upsampled and quantized: an 8-bit image set, with its labels."""
    x, y = datamod.digits()
    x = torch.nn.functional.interpolate(x[:n], size=(size, size), mode="bilinear").clamp(0, 1).expand(-1, 3, -1, -1)
    return datamod.quantize(x.contiguous()), y[:n] % 2


def _fit(x, y, augment: str) -> tuple[list[float], torch.Tensor]:
    model, groups = models.build("resnet8", 2, seed=0)
    model = train.prepare(model, CPU)
    recipe = train.Recipe(lr=0.05, epochs=2, batch_size=32, freeze_layers=1, unfreeze_epoch=1, augment=augment)
    losses = [loss for _, loss, _, _ in train.fit(model, groups, x, y, recipe, seed=3, device=CPU)]
    return losses, train.predict(model, x, 40, CPU)


def test_uint8_at_rest_trains_and_predicts_the_float_paths_floats():
    """Training and prediction on uint8 images give bit for bit the losses and logits of the same images held as
    float32 x / 255 (what data.load made of them before issue 26), with and without flip-and-crop augmentation."""
    x8, y = _uint8_digits()
    xf = x8.float() / 255
    assert torch.equal(datamod.pixels(x8), xf) and datamod.pixels(xf) is xf
    for augment in ("none", "flip_crop"):
        loss8, logits8 = _fit(x8, y, augment)
        lossf, logitsf = _fit(xf, y, augment)
        assert loss8 == lossf and torch.equal(logits8, logitsf)


def test_quantize_truncates_as_make_cifar_c_stores():
    """floor(255 x): every pixel at most 1/255 below its float, never above; 1.0 -> 255, 0 -> 0."""
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 0.999])
    q = datamod.quantize(x)
    assert q.dtype == torch.uint8 and q[0, 0, 0, :3].tolist() == [0, 255, 254]
    gap = x - q.float() / 255
    assert gap.min() >= 0 and gap.max() < 1 / 255
    assert torch.equal(q, torch.as_tensor((x.double().numpy() * 255).astype("uint8")))  # numpy's np.uint8 cast


def test_default_study_metrics_with_uint8_shifted_sets_differ_by_the_rounding_only():
    """The default study's data and suite, held as uint8 (harness.suite.at_rest = data.quantize) and as float (the
    identity, the path before issue 26): the clean splits are the same tensors (the digits' tinted pixels stay
    float32, their smallest exact type), each shifted image lies in [float - 1/255, float], and a model trained on
    the default data scores the same on every clean metric and within 2 points of accuracy (3.6 of the 180 images a
    set) on every shifted set at every severity. Measured (2026-12-07): 17 of the 41 set-severities differ, by at most
    2 images (1.1 points); ood_acc_mean 0.2465 against 0.2462."""
    cfg = config.load(None)
    cfg = dataclasses.replace(cfg, shifts=dataclasses.replace(cfg.shifts, eval_images=250))
    data = datamod.load(cfg.data, cfg.study.seed)
    assert data["train"][0].dtype == torch.float32  # digits: exact only as float
    sets = {}
    try:
        for name, rest in (("uint8", datamod.quantize), ("float", lambda x: x)):
            suitemod.at_rest = rest
            sets[name] = suitemod._build(cfg.shifts, data)
    finally:
        suitemod.at_rest = datamod.quantize
    q, f = sets["uint8"], sets["float"]
    assert torch.equal(q.clean_test.images, f.clean_test.images)
    for eq, ef in zip(q.test, f.test):
        for (s, xq), (_, xf) in zip(eq.at(), ef.at()):
            if eq.paired:
                assert xq.dtype == torch.uint8 and xf.dtype == torch.float32, (eq.name, s)
                gap = xf - datamod.pixels(xq)
                assert gap.min() >= 0 and gap.max() < 1 / 255, (eq.name, s)
            else:
                assert torch.equal(xq, xf)
    model, groups = models.build(cfg.model.name, len(data["classes"]), seed=0)
    model = train.prepare(model, CPU)
    recipe = train.Recipe(lr=0.05, epochs=2, batch_size=128)
    for _ in train.fit(model, groups, *data["train"], recipe, seed=0, device=CPU):
        pass
    fq, cq, _ = trialmod.test_metrics(model, q, data, 256, CPU)
    ff, cf, _ = trialmod.test_metrics(model, f, data, 256, CPU)
    for k in fq:
        if not k.startswith("ood") and "/" not in k:
            assert fq[k] == ff[k], k  # clean metrics: the same images
    for name in cq:
        for s in cq[name]:
            assert abs(cq[name][s]["acc"] - cf[name][s]["acc"]) <= 0.02, (name, s)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_uint8_batches_on_cuda_are_the_float_paths_floats():
    """On the GPU a uint8 batch made float there (resident or pinned on the host) is bit for bit the float32 batch
    copied over: a quarter of the bytes cross the bus, the model sees the same input."""
    x8, _ = _uint8_digits()
    dev = torch.device("cuda")
    want = train.to_device_batch(x8.float() / 255, dev)
    for x in (x8.to(dev), x8.pin_memory(), x8):
        got = train.to_device_batch(x, dev)
        assert got.dtype == torch.float32 and got.is_cuda and torch.equal(got, want)

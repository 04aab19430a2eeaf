"""Model registry: groups cover every parameter once, models train a step, checkpoints and custom models load."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from harness import models, train

from conftest import SHARED


@pytest.mark.parametrize("name", list(models.MODELS))
def test_every_registered_model_has_groups_and_trains(name):
    """Random weights: ordered groups ending in 'head', each parameter in exactly one group, one SGD step on a
    tiny input changes the head and gives a finite loss."""
    model, groups = models.build(name, 3)
    assert list(groups)[-1] == "head" and len(groups) >= 3
    ids = [id(p) for g in groups.values() for p in g.parameters()]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    size = 32 if name.startswith("resnet") and name[6:].isdigit() and int(name[6:]) < 18 else 64
    size = getattr(models.MODELS[name], "image_size", size)  # ViT-B/16 takes 224 only
    x, y = torch.rand(2, 3, size, size), torch.tensor([0, 2])
    opt = train.make_optimizer(model, "sgd", 0.1, 0.0, 0.0)
    before = groups["head"].weight.detach().clone()
    plan = train.Plan(2, 0.1, "constant", 1, torch.device("cpu"))
    train.set_training(model, groups, 0)
    loss, _ = train.train_one_epoch(model, opt, train.batches(x, y, plan, torch.Generator().manual_seed(0)), plan, 0)
    assert torch.isfinite(torch.tensor(loss))
    assert not torch.equal(before, groups["head"].weight)


def test_build_is_seeded():
    a, _ = models.build("resnet8", 5, seed=1)
    b, _ = models.build("resnet8", 5, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_checkpoint_with_module_prefix_loads_and_head_is_replaced(tmp_path):
    """A DataParallel-style checkpoint ('module.' prefix, 10-class head) loads into a 5-class model: the body
    matches exactly, the head keeps its fresh init. Both torch (weights_only) and safetensors files work."""
    src, _ = models.build("resnet8", 10, seed=1)
    state = {f"module.{k}": v for k, v in src.body.state_dict().items()}
    torch.save({"state_dict": state, "best_prec1": 90.0}, tmp_path / "ckpt.th")
    save_file({k: v.contiguous() for k, v in src.body.state_dict().items()}, str(tmp_path / "ckpt.safetensors"))
    for file in ("ckpt.th", "ckpt.safetensors"):
        model, groups = models.build("resnet8", 5, seed=2)
        desc = models.initial_weights("resnet8", str(tmp_path / file), model, groups)
        assert "head re-initialized" in desc
        assert torch.equal(model.body.conv1.weight, src.body.conv1.weight)
        assert groups["head"].weight.shape == (5, 64)


def test_checkpoint_that_does_not_fit_names_keys(tmp_path):
    src, _ = models.build("resnet20", 5)
    torch.save(src.body.state_dict(), tmp_path / "r20.pt")
    model, groups = models.build("resnet8", 5)
    with pytest.raises(ValueError, match="model.weights"):
        models.initial_weights("resnet8", str(tmp_path / "r20.pt"), model, groups)


def test_custom_model_function(tmp_path, monkeypatch):
    """model.name = 'package.module:function' returning (model, groups) builds and validates its groups."""
    (tmp_path / "mymodels.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes):\n"
        "    stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
        "    head = nn.Linear(4, num_classes)\n"
        "    return nn.Sequential(stem, head), {'stem': stem, 'head': head}\n"
        "def bad(num_classes):\n"
        "    stem, head = nn.Linear(2, 2), nn.Linear(2, num_classes)\n"
        "    return nn.Sequential(stem, head), {'head': head}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model, groups = models.build("mymodels:tiny", 3)
    assert list(groups) == ["stem", "head"] and model(torch.rand(2, 3, 8, 8)).shape == (2, 3)
    with pytest.raises(ValueError, match="miss parameters"):
        models.build("mymodels:bad", 3)
    sys.modules.pop("mymodels", None)


CUSTOM = (
    "import torch.nn as nn\n"
    "def tiny(num_classes):\n"
    "    stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
    "    head = nn.Linear(4, num_classes)\n"
    "    return nn.Sequential(stem, head), {'stem': stem, 'head': head}\n")


@pytest.mark.parametrize("wrap", ["model", "model_state_dict", "state_dict", "none"])
def test_checkpoint_loads_into_a_custom_model(tmp_path, monkeypatch, wrap):
    """A checkpoint of a 'module:function' model, saved as the state_dict itself or under 'model',
    'model_state_dict' or 'state_dict' next to other entries, with a '~/' path and an extension the harness does not
    list (.ckpt): every tensor lands in a freshly built model, the 3-class head included (same shape)."""
    (tmp_path / "ckpt_models.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    src, _ = models.build("ckpt_models:tiny", 3, seed=1)
    sd = src.state_dict()
    torch.save(sd if wrap == "none" else {wrap: sd, "epoch": 7, "optimizer": {"lr": 0.1}}, tmp_path / "tiny.ckpt")
    model, groups = models.build("ckpt_models:tiny", 3, seed=2)
    assert not torch.equal(model[1].weight, src[1].weight)
    assert models.initial_weights("ckpt_models:tiny", "~/tiny.ckpt", model, groups) == "checkpoint ~/tiny.ckpt"
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    sys.modules.pop("ckpt_models", None)


def _corrupt(path):
    path.write_bytes(bytes(range(256)) * 4)


def _truncated(path):
    src, _ = models.build("resnet8", 5)
    torch.save(src.body.state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])  # a download or copy cut short


def _pickled_object(path):
    import argparse

    torch.save(argparse.Namespace(lr=0.1), path)  # weights_only=True refuses any class outside its allowlist


@pytest.mark.parametrize("name,write", [
    ("random.pt", _corrupt), ("random.safetensors", _corrupt), ("cut.pth", _truncated),
    ("object.pt", _pickled_object), ("empty.pt", lambda p: p.write_bytes(b"")),
    ("floats.pt", lambda p: torch.save({"lr": 0.1, "epoch": 3}, p)),
    ("list.pt", lambda p: torch.save([torch.zeros(2)], p)),
])
def test_unreadable_checkpoints_are_value_errors_naming_model_weights(tmp_path, name, write):
    """Corrupt bytes, a torn file, a pickled object, an empty file, a dict of numbers, a list: each is a ValueError
    (what launch.preflight passes on as exit 2) that starts with model.weights, names the file and says what to save."""
    write(tmp_path / name)
    model, groups = models.build("resnet8", 5)
    with pytest.raises(ValueError) as err:
        models.initial_weights("resnet8", str(tmp_path / name), model, groups)
    msg = str(err.value)
    assert msg.startswith("model.weights: ") and name in msg and "model.state_dict()" in msg, msg
    assert "\n" not in msg  # one line, not torch's ten


def test_weights_that_look_like_a_file_are_never_looked_up_as_torchvision_names(tmp_path, monkeypatch):
    """'best.ckpt' (no '/', an extension the harness does not list) is a missing file, not an unknown torchvision
    weights name; an identifier on a model that is not torchvision's says what model.weights may be."""
    monkeypatch.chdir(tmp_path)
    model, groups = models.build("resnet18", 5)
    with pytest.raises(FileNotFoundError, match=r"^model.weights: checkpoint not found: best.ckpt"):
        models.initial_weights("resnet18", "best.ckpt", model, groups)
    model, groups = models.build("resnet8", 5)
    with pytest.raises(ValueError, match=r"^model.weights: 'IMAGENET1K_V1' is no file.*checkpoint path"):
        models.initial_weights("resnet8", "IMAGENET1K_V1", model, groups)
    assert not models.is_checkpoint_path("IMAGENET1K_SWAG_E2E_V1") and not models.is_checkpoint_path("DEFAULT")


def test_study_exits_2_naming_model_weights_on_a_corrupt_checkpoint(workdir, capsys):
    """Through the CLI: a corrupt checkpoint is bad input (exit 2, one line naming model.weights, no traceback),
    found before anything is created."""
    from harness import study

    _corrupt(workdir / "bad.pt")
    assert study.main(["--set", "model.weights=bad.pt", "--n-trials", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.weights: bad.pt: not a readable checkpoint") and "Traceback" not in err, err
    assert sorted(p.name for p in workdir.iterdir()) == ["bad.pt"]


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="resnet8"):
        models.resolve("vgg11")


def test_torchvision_weights_missing_offline_names_file(tmp_path, monkeypatch):
    """Offline with the weights file absent: a clear error naming the file and the folder to put it in."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model, groups = models.build("resnet18", 5)
    with pytest.raises(FileNotFoundError, match=r"resnet18-.*\.pth.*checkpoints"):
        models.initial_weights("resnet18", "IMAGENET1K_V1", model, groups)
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        models.initial_weights("resnet18", "IMAGENET9K", model, groups)


@pytest.mark.skipif(not (SHARED / "weights").is_dir(), reason="../shared/data is absent (optional real weights)")
def test_real_cifar_resnet20_weights_load():
    """The real akamaster ResNet-20 CIFAR-10 checkpoint (module. prefix, legacy BN keys) loads into resnet20."""
    path = SHARED / "weights" / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th"
    model, groups = models.build("resnet20", 10)
    assert models.load_weights(model, groups, models.read_checkpoint(path)) == []


TORCHVISION = [name for name, b in models.MODELS.items() if getattr(b, "torchvision", None)]


@pytest.mark.parametrize("name", TORCHVISION)
def test_every_torchvision_model_names_its_missing_weights_file(tmp_path, monkeypatch, name):
    """Every torchvision-backed model reads its weights enum from the local torch hub cache only; offline with the
    file missing, the error names the file, the folder to put it in and the URL to fetch it from."""
    import torchvision.models as tvm

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    url = tvm.get_model_weights(models.MODELS[name].torchvision)["IMAGENET1K_V1"].url
    with pytest.raises(FileNotFoundError) as err:
        models.torchvision_state(models.MODELS[name].torchvision, "IMAGENET1K_V1")
    assert url.rsplit("/", 1)[1] in str(err.value) and str(tmp_path / "checkpoints") in str(err.value)
    assert url in str(err.value)


def test_torchvision_weights_load_from_the_local_cache(tmp_path, monkeypatch):
    """A weights file in the hub cache (here a stand-in with ImageNet's 1000-class head) loads into a 3-class
    mobilenet_v3_small: every body tensor is copied, the head keeps its fresh init, normalization matches."""
    import torchvision.models as tvm

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    enum = tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    torch.manual_seed(5)
    src = tvm.mobilenet_v3_small().state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(src, tmp_path / "checkpoints" / enum.url.rsplit("/", 1)[1])
    model, groups = models.build("mobilenet_v3_small", 3)
    desc = models.initial_weights("mobilenet_v3_small", "IMAGENET1K_V1", model, groups)
    assert "head re-initialized" in desc
    own = model.body.state_dict()
    assert all(torch.equal(own[k], v) for k, v in src.items() if not k.startswith("classifier.3."))
    assert groups["head"].weight.shape == (3, 1024)
    assert model.mean.flatten().tolist() == pytest.approx(enum.transforms().mean)


def test_vit_needs_image_size_224():
    """ViT-B/16 takes 224x224 inputs only: any other data.image_size is a config error naming that key, and
    weights trained at another resolution are refused by name."""
    from harness import config

    with pytest.raises(config.ConfigError, match=r"data.image_size.*vit_b_16.*224"):
        config.load(None, ["model.name=vit_b_16", "model.weights=none", "data.image_size=32"])
    assert config.load(None, ["model.name=vit_b_16", "model.weights=none", "data.image_size=224"]).data.image_size == 224


def test_vit_refuses_weights_for_another_resolution(tmp_path, monkeypatch):
    import torchvision.models as tvm

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    enum = tvm.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1
    (tmp_path / "checkpoints").mkdir()
    torch.save({}, tmp_path / "checkpoints" / enum.url.rsplit("/", 1)[1])  # never read: the size check comes first
    with pytest.raises(ValueError, match=r"model.weights: IMAGENET1K_SWAG_E2E_V1 .* 384 px"):
        models.initial_weights("vit_b_16", "IMAGENET1K_SWAG_E2E_V1", None, None)

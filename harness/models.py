"""Model registry: every builder returns (model, groups), the ordered layer groups from input to output, head last."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.config import ConfigError, NotFound

# Models see [0, 1] pixels and normalize inside, so shifts act on raw pixels. ImageNet statistics for all:
# torchvision weights and the CIFAR ResNet-20..56 weights (akamaster) were both trained with them.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Normalized(nn.Module):
    """(x - mean) / std in front of a body; the buffers are not persistent, so state_dicts are the body's."""

    def __init__(self, body: nn.Module, mean=MEAN, std=STD):
        super().__init__()
        self.body = body
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return self.body((x - self.mean) / self.std)


# --- CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of n BasicBlocks at 16/32/64 channels, option-A
# zero-padded shortcuts. Attribute names follow akamaster/pytorch_resnet_cifar10, so its weights load as-is.

class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin  # option A: subsample and zero-pad channels, no parameters

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.pad:
            short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad // 2))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    def __init__(self, n: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        widths, cin, stages = (16, 32, 64), 16, []
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(*[_Block(cin if j == 0 else w, w, 2 if (i and j == 0) else 1) for j in range(n)]))
            cin = w
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def features(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x):
        return self.linear(self.features(x))


def _cifar_resnet(n):
    def build(num_classes):
        net = CifarResNet(n, num_classes)
        groups = {"stem": nn.ModuleList([net.conv1, net.bn1]), "layer1": net.layer1, "layer2": net.layer2,
                  "layer3": net.layer3, "head": net.linear}
        return Normalized(net), groups
    return build


def _tv_resnet(arch):
    def build(num_classes):
        import torchvision.models as tvm

        net = getattr(tvm, arch)(num_classes=num_classes)
        groups = {"stem": nn.ModuleList([net.conv1, net.bn1]), "layer1": net.layer1, "layer2": net.layer2,
                  "layer3": net.layer3, "layer4": net.layer4, "head": net.fc}
        return Normalized(net), groups
    build.torchvision = arch
    return build


class _Params(nn.Module):
    """Loose parameters (ViT's class token and position embedding) held by a module, so a group can own them."""

    def __init__(self, **params):
        super().__init__()
        for name, p in params.items():
            self.register_parameter(name, p)


def _stages(features, bounds):
    """features[a:b] for consecutive (a, b) bounds, one ModuleList per stage."""
    return [nn.ModuleList(features[a:b]) for a, b in zip(bounds, bounds[1:])]


# Torchvision models other than ResNet, split like ResNet: stem, then stage1..4 at output strides 4, 8, 16, 32
# (by where the resolution halves), the layers between the last stage and the logits folded into stage4, and
# the final Linear as the head. So freeze_layers means the same depth for every architecture: 5 = linear probe.
def _mobilenet_v3(net, bounds):
    stages = _stages(net.features, bounds)
    stages[-1].extend([net.features[bounds[-1]], net.classifier[0]])  # 1x1 conv to 960/576 and pre-logits Linear
    return {"stem": stages[0], **{f"stage{i}": m for i, m in enumerate(stages[1:], 1)}, "head": net.classifier[3]}


def _efficientnet(net):
    stem, s1, s2, s3, s4 = _stages(net.features, [0, 2, 3, 4, 6, 8])
    s4.append(net.features[8])  # 1x1 conv to 1280
    return {"stem": stem, "stage1": s1, "stage2": s2, "stage3": s3, "stage4": s4, "head": net.classifier[1]}


def _convnext(net):
    # features: stem, stage, downsample, stage, ...; each downsample goes with the stage it feeds
    stem, s1, s2, s3, s4 = _stages(net.features, [0, 1, 2, 4, 6, 8])
    s4.append(net.classifier[0])  # final LayerNorm
    return {"stem": stem, "stage1": s1, "stage2": s2, "stage3": s3, "stage4": s4, "head": net.classifier[2]}


def _vit(net):
    # 12 encoder blocks in 4 stages of 3; the stem is the patch embedding, class token and position embedding
    stem = nn.ModuleList([net.conv_proj, _Params(class_token=net.class_token, pos_embedding=net.encoder.pos_embedding)])
    s1, s2, s3, s4 = _stages(net.encoder.layers, [0, 3, 6, 9, 12])
    s4.append(net.encoder.ln)
    return {"stem": stem, "stage1": s1, "stage2": s2, "stage3": s3, "stage4": s4, "head": net.heads.head}


def _tv(arch, split, image_size=None):
    def build(num_classes):
        import torchvision.models as tvm

        net = getattr(tvm, arch)(num_classes=num_classes)
        return Normalized(net), split(net)
    build.torchvision = arch
    if image_size:
        build.image_size = image_size  # the only input size it accepts; config.validate names data.image_size
    return build


# registry models that accept one input size only (see their entries); config.validate names data.image_size when
# it differs
FIXED_IMAGE_SIZE = {"vit_b_16": 224}


# name -> builder(num_classes) -> (model, groups). resnet8 (n=1, 78k params) is the CPU default: one trial of
# 6 epochs on 540 digits takes seconds on 2 cores; resnet20..56 match the CIFAR-10 weights of akamaster.
MODELS = {
    "resnet8": _cifar_resnet(1), "resnet20": _cifar_resnet(3), "resnet32": _cifar_resnet(5),
    "resnet44": _cifar_resnet(7), "resnet56": _cifar_resnet(9),
    "resnet18": _tv_resnet("resnet18"), "resnet34": _tv_resnet("resnet34"), "resnet50": _tv_resnet("resnet50"),
    "mobilenet_v3_large": _tv("mobilenet_v3_large", lambda net: _mobilenet_v3(net, [0, 2, 4, 7, 13, 16])),
    "mobilenet_v3_small": _tv("mobilenet_v3_small", lambda net: _mobilenet_v3(net, [0, 1, 2, 4, 9, 12])),
    "efficientnet_b0": _tv("efficientnet_b0", _efficientnet),
    "convnext_tiny": _tv("convnext_tiny", _convnext),
    # ViT-B/16: 224x224 only (its position embeddings are for 14x14 patches of 16 px), so data.image_size = 224
    "vit_b_16": _tv("vit_b_16", _vit, image_size=FIXED_IMAGE_SIZE["vit_b_16"]),
}


def resolve(name: str):
    """A registry name, or 'package.module:function' returning (model, groups) for num_classes."""
    if name in MODELS:
        return MODELS[name]
    if ":" in name:
        module, _, fn = name.partition(":")
        try:
            return getattr(importlib.import_module(module), fn)
        except (ImportError, AttributeError) as e:
            raise ConfigError("model.name", f"cannot import {name!r} ({e})") from None
    raise ConfigError("model.name", f"unknown model {name!r}; choose one of {', '.join(MODELS)} "
                      f"or 'package.module:function'")


def _call_factory(name: str, factory, num_classes: int):
    """factory(num_classes) -> (model, groups). A user's factory that raises, calls sys.exit or reads stdin (given
    /dev/null, so it fails at once instead of waiting on a terminal) is a ValueError naming model.name and the
    cause; nothing it does can end the harness with its own exit code."""
    import os
    import sys

    stdin = sys.stdin
    try:
        with open(os.devnull) as devnull:
            sys.stdin = devnull
            out = factory(num_classes)
    except SystemExit as e:
        raise ConfigError("model.name", f"{name}({num_classes}) called sys.exit({e.code!r}) instead of returning "
                          f"(model, groups)") from None
    except EOFError as e:
        raise ConfigError("model.name", f"{name}({num_classes}) read standard input (EOFError: {e}); a model factory "
                          f"must build the model from num_classes alone") from None
    except Exception as e:  # noqa: BLE001 - whatever a user's code raises is that code's fault, reported as such
        # (not BaseException: every trial builds its model here, and a SIGTERM turned into this error was a trial
        # failed for a "bad model" while the worker, its signal spent, ran on until its launcher's SIGKILL)
        cause = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        raise ConfigError("model.name", f"{name}({num_classes}) raised {type(e).__name__}"
                          f"{': ' + cause[:200] if cause else ''}") from None
    finally:
        sys.stdin = stdin
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], nn.Module) and hasattr(out[1], "items")):
        raise ConfigError("model.name", f"{name}({num_classes}) must return (model, groups): an nn.Module and a "
                          f"dict of layer groups ending in 'head', got {type(out).__name__}")
    return out


def build(name: str, num_classes: int, seed: int = 0):
    """A freshly initialized model (seeded) and its ordered groups; checks the groups cover every parameter once."""
    torch.manual_seed(seed)
    model, groups = _call_factory(name, resolve(name), num_classes)
    groups = dict(groups)
    if list(groups)[-1] != "head":
        raise ConfigError("model.name", f"{name} must return groups whose last entry is 'head', got {list(groups)}")
    seen = {}
    for g, module in groups.items():
        for p in module.parameters():
            if id(p) in seen:
                raise ConfigError("model.name", f"parameter in both groups {seen[id(p)]!r} and {g!r}")
            seen[id(p)] = g
    missing = [n for n, p in model.named_parameters() if id(p) not in seen]
    if missing:
        raise ConfigError("model.name", f"{name} groups miss parameters {missing[:5]}")
    return model, groups


def head_prefix(model: nn.Module, groups: dict) -> str:
    """State-dict prefix of the head, relative to the body ('linear.', 'fc.')."""
    body = model.body if isinstance(model, Normalized) else model
    for n, m in body.named_modules():
        if m is groups["head"]:
            return n + "."
    raise ValueError("the head is not a submodule of the model")


# what model.weights may be, for every error about it
WEIGHTS_ALLOWED = ("model.weights is 'pretrain', 'none', a torchvision weights name (e.g. IMAGENET1K_V1) or a "
                   "checkpoint path (.pt, .pth, .th, .bin, .safetensors)")
SAVE_HINT = "save model.state_dict() with torch.save or safetensors"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th", ".bin", ".safetensors")
# where training scripts put the state_dict inside a checkpoint dict (akamaster: state_dict; torchvision reference
# and many repos: model; the PyTorch tutorial: model_state_dict)
STATE_KEYS = ("state_dict", "model_state_dict", "model")
# wrappers whose name prefixes every key: DataParallel/DDP (module.), torch.compile (_orig_mod.), ours (body.)
PREFIXES = ("module.", "_orig_mod.", "body.")


def is_checkpoint_path(weights: str) -> bool:
    """Torchvision weights names are identifiers (IMAGENET1K_V1, DEFAULT). A separator, a leading ~ or ., a
    lower-case file extension (.ckpt, .pkl, ...) or an existing file make it a path instead, so a typo'd file name
    is reported as a missing file, never looked up as a weights name."""
    p = Path(weights).expanduser()
    return ("/" in weights or "\\" in weights or weights.startswith(("~", ".")) or p.suffix.lower() in CHECKPOINT_SUFFIXES
            or re.fullmatch(r"\.[a-z0-9_]+", p.suffix) is not None or p.is_file())


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its header length (8 bytes, little-endian) and a JSON header ('{')."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{"


def _sentence(text: str, limit: int = 300) -> str:
    """The first sentence of text, whole when it fits in `limit` characters, else cut at a word and marked '...'."""
    first = text.split(". ")[0].rstrip(".")
    if len(first) <= limit:
        return first
    return first[:limit].rsplit(" ", 1)[0] + " ..."


def _reason(err: Exception, path: Path) -> str:
    """One line of why a checkpoint could not be read. torch's weights_only refusal is ten lines; keep its cause. A
    file that is neither a torch.save zip, a legacy torch pickle (protocol 2: b'\\x80\\x02') nor safetensors is named
    as such: torch's own error for it is a bare 'KeyError: 101' or 'invalid load key'."""
    import zipfile

    text = str(err)
    if "WeightsUnpickler error:" in text or text.startswith("Weights only load failed"):
        # torch 2.4: "... WeightsUnpickler error: <cause>"; torch 2.6+: an explanation, then "\n\n<cause>\n\nCheck ..."
        rest = (text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text
                else text.split("\n\n", 1)[-1])
        line = next((ln.strip() for ln in rest.splitlines()
                     if ln.strip() and not ln.startswith("Check the documentation")), "")
        return "torch.load(weights_only=True) refused it: " + _sentence(line)
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "the file is empty"
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        return f"it is not a torch.save or safetensors file: it starts with {head[:12]!r}"
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(err).__name__}: {_sentence(line)}" if line else type(err).__name__


def read_checkpoint(path: str | Path) -> dict:
    """A state_dict from safetensors or a torch file (weights_only=True, so no pickled code runs); the dict itself or
    one under 'state_dict' / 'model_state_dict' / 'model'; 'module.' / '_orig_mod.' / 'body.' prefixes stripped.
    Every way a file can fail to be one (corrupt, truncated, a pickled object) is a ValueError naming model.weights."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFound("model.weights", f"checkpoint not found: {path} ({WEIGHTS_ALLOWED})")
    try:
        if path.suffix == ".safetensors" or _is_safetensors(path):
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, SafetensorError, EOFError, a torn zip's RuntimeError, ...
        raise ConfigError("model.weights", f"{path}: not a readable checkpoint ({_reason(e, path)}); "
                          f"{SAVE_HINT}") from None
    if isinstance(state, dict):
        state = next((state[k] for k in STATE_KEYS if isinstance(state.get(k), dict)), state)
    if not isinstance(state, dict) or not state:
        raise ConfigError("model.weights", f"{path} holds a {type(state).__name__}, not a state_dict; {SAVE_HINT}")
    other = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if other:
        raise ConfigError("model.weights", f"{path} is not a state_dict: entries {other[:3]} are not tensors (a "
                          f"state_dict maps names to tensors, optionally under one of {', '.join(STATE_KEYS)}); "
                          f"{SAVE_HINT}")
    stripped = True
    while stripped:  # e.g. a compiled model saved from DataParallel: module._orig_mod.conv1.weight
        stripped = False
        for prefix in PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state, stripped = {k[len(prefix):]: v for k, v in state.items()}, True
    return state


def torchvision_state(arch: str, weights: str) -> dict:
    """Weights from torchvision's enum, read from the local torch hub cache; never downloads."""
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(arch)[weights]
    except KeyError:
        options = ", ".join(w.name for w in tvm.get_model_weights(arch))
        raise ConfigError("model.weights", f"{weights!r} is not a weights name of {arch}; choose one of {options}, "
                          f"or give a checkpoint path") from None
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    if not file.is_file():
        raise NotFound("model.weights", f"{enum} needs {file.name}, which is not in {file.parent}; "
                       f"download {enum.url} on a connected machine and put it there")
    return torch.load(file, map_location="cpu", weights_only=True)


def load_weights(model: nn.Module, groups: dict, state: dict) -> list[str]:
    """Copy a state_dict into the body; head tensors whose shape differs (other classes) keep their fresh init.

    Returns the skipped keys. Any other missing, unexpected or mis-shaped key is an error naming it."""
    body = model.body if isinstance(model, Normalized) else model
    own, head = body.state_dict(), head_prefix(model, groups)
    skipped = [k for k in state if k.startswith(head) and k in own and own[k].shape != state[k].shape]
    state = {k: v for k, v in state.items() if k not in skipped}
    bad = [k for k in state if k in own and own[k].shape != state[k].shape]
    # a missing head keeps its fresh init; checkpoints from before torch 0.4.1 lack BN's num_batches_tracked
    missing = [k for k in own if k not in state and not k.startswith(head) and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if bad or missing or unexpected:
        raise ConfigError("model.weights", f"checkpoint does not fit the model: shape mismatch {bad[:3]}, "
                          f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    body.load_state_dict(state, strict=False)
    return skipped


def initial_weights(name: str, weights: str, model: nn.Module, groups: dict) -> str:
    """Apply model.weights other than 'pretrain' (which the pretrain module provides). Returns a description."""
    if weights in ("none", ""):
        return "random init"
    builder = resolve(name)
    if is_checkpoint_path(weights):
        skipped = load_weights(model, groups, read_checkpoint(weights))
        return f"checkpoint {weights}" + (" (head re-initialized)" if skipped else "")
    arch = getattr(builder, "torchvision", None)
    if arch is None:
        raise ConfigError("model.weights", f"{weights!r} is no file, and {name} is not a torchvision model, so it "
                          f"cannot be a torchvision weights name; {WEIGHTS_ALLOWED}")
    state = torchvision_state(arch, weights)
    need, crop = getattr(builder, "image_size", None), _weights_transforms(arch, weights).crop_size[0]
    if need and crop != need:
        raise ConfigError("model.weights", f"{weights} of {arch} is for {crop} px inputs; this model is built for "
                          f"{need} px (choose weights for {need} px, e.g. IMAGENET1K_V1)")
    skipped = load_weights(model, groups, state)
    match_preprocessing(model, arch, weights)
    return f"torchvision {arch} {weights}" + (" (head re-initialized)" if skipped else "")


def _weights_transforms(arch: str, weights: str):
    import torchvision.models as tvm

    return tvm.get_model_weights(arch)[weights].transforms()


def match_preprocessing(model: nn.Module, arch: str, weights: str) -> None:
    """Normalize with the weights' own mean and std (ImageNet's for every torchvision classification weight today).
    Their resize-then-crop is not replayed: data.image_size sets the resolution once, when images are cached."""
    tf = _weights_transforms(arch, weights)
    if isinstance(model, Normalized):
        model.mean.copy_(torch.tensor(tf.mean).view(1, -1, 1, 1))
        model.std.copy_(torch.tensor(tf.std).view(1, -1, 1, 1))

"""Frozen-prefix activation cache: what a model's first k frozen groups output per image set, computed once per worker
and reused by every epoch and trial that freezes the same prefix of the same weights.

A frozen group is in eval mode with fixed weights (train.set_frozen) and training images carry no augmentation
(train.augment = "none"), so the prefix output of an image is the same in every epoch of every trial that freezes
it. The key names everything that output depends on: the initial weights (model, weights, seed, classes), k, the
image tensor (its identity and in-place version), its shape and dtype, the device, the autocast dtype, the model's
memory format and the batch size it is computed in. A trial's view lowers k as groups unfreeze and never raises it
(no strategy refreezes a group that trained), so a group that trained never serves cached outputs.
"""

from __future__ import annotations

import dataclasses
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import models, stream, train


def segments(model: nn.Module, groups: dict) -> list | None:
    """The model's forward cut at every group boundary: callables s_0..s_n with model(x) == s_n(...s_0(x)), where s_i
    ends where group i ends and carries the parameter-free ops that follow it (ReLU, pooling), so the first k groups
    output s_{k-1}(...s_0(x)). The same ops in the same order as the model's own forward: equal floats (a test
    checks it). Known for the CIFAR ResNets and torchvision's ResNets with the registry's groups; None for any
    other model, whose prefix is recomputed."""
    if not isinstance(model, models.Normalized):
        return None
    net = model.body
    norm = lambda x: (x - model.mean) / model.std  # noqa: E731 - Normalized.forward's op
    if isinstance(net, models.CifarResNet) and _grouped(groups, [[net.conv1, net.bn1], net.layer1, net.layer2,
                                                                 net.layer3, net.linear]):
        return [lambda x: F.relu(net.bn1(net.conv1(norm(x)))), net.layer1, net.layer2,
                lambda x: F.adaptive_avg_pool2d(net.layer3(x), 1).flatten(1), net.linear]
    tv = sys.modules.get("torchvision.models")
    if tv is not None and isinstance(net, tv.ResNet) and _grouped(
            groups, [[net.conv1, net.bn1], net.layer1, net.layer2, net.layer3, net.layer4, net.fc]):
        return [lambda x: net.maxpool(net.relu(net.bn1(net.conv1(norm(x))))), net.layer1, net.layer2, net.layer3,
                lambda x: torch.flatten(net.avgpool(net.layer4(x)), 1), net.fc]
    return None


def _grouped(groups: dict, expected: list) -> bool:
    """The groups are exactly these modules, in this order (a custom factory may group the same class otherwise)."""
    got = [list(g) if isinstance(g, nn.ModuleList) else g for g in groups.values()]
    return len(got) == len(expected) and all(
        (isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(m is n for m, n in zip(a, b)))
        or a is b for a, b in zip(got, expected))


def run(segs: list, start: int, stop: int, x):
    """segs[start:stop] applied in order: the groups start..stop-1 and their trailing ops."""
    for s in segs[start:stop]:
        x = s(x)
    return x


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Cache:
    """A worker's prefix outputs, shared by its trials (Context.prefix): key -> (images, outputs), budget bytes in all.
    Entries stay for the worker's life (a study revisits the same few k); one that would overflow the budget is not
    stored, and that prefix is recomputed, which is said once per worker."""
    budget: int  # bytes; 0 = off (train.cache_mb * 2**20)
    entries: dict = dataclasses.field(default_factory=dict)
    refused: set = dataclasses.field(default_factory=set)  # keys that did not fit: recomputed, never measured again
    used: int = 0  # bytes held
    hits: int = 0
    misses: int = 0  # computed and stored
    said: bool = False  # the fallback to recomputing has been said
    log: object = _warn


@dataclasses.dataclass
class View:
    """One model seen through the cache. train.fit and train.predict take it where they take the model: its first k
    groups have stayed frozen since the weights named by `weights` were loaded, so their outputs come from the
    cache; the rest of the model runs as usual. With no cache, no known split or k = 0 it is the model itself.
    At k = len(groups) - 1 the cached outputs are the head's input: the penultimate features a linear probe fits on."""
    model: nn.Module
    groups: dict
    segments: list | None
    cache: Cache | None
    weights: tuple  # what the initial weights are: (model name, Context.weights_key, seed, classes)
    k: int  # groups 0..k-1 untouched so far; fit lowers it as groups unfreeze

    def eval(self):
        self.model.eval()
        return self

    def train_with(self, frozen) -> None:
        """An epoch trains with set_frozen(frozen): only the groups frozen now and at every epoch before stay
        untouched (no strategy refreezes a group, so this is the leading frozen groups of the epoch)."""
        self.k = min(self.k, train.n_leading(frozen))

    def inputs(self, x: torch.Tensor, batch_size: int, device, shuffled: bool = False):
        return inputs(self, x, batch_size, device, shuffled)


def view(cache: Cache | None, model: nn.Module, groups: dict, weights: tuple, compiled: bool = False) -> View:
    """A freshly built model (its weights exactly those `weights` names) seen through the cache. A compiled model
    (train.compile) keeps its compiled whole forward: no cache."""
    segs = None if compiled or cache is None or cache.budget <= 0 else segments(model, groups)
    return View(model=model, groups=groups, segments=segs, cache=cache, weights=weights,
                k=len(groups) - 1 if segs is not None else 0)


def for_trial(ctx, model: nn.Module, groups: dict, seed: int) -> View:
    """A trial's fresh model (harness.trial.fresh_model, built with `seed`) seen through its worker's cache
    (Context.prefix). The seed is in the key: a body that no pretrained weights cover is initialized from it, so a
    seed replicate's prefix is another one."""
    cfg = ctx.cfg
    weights = (cfg.model.name, ctx.weights_key, seed, len(ctx.data["classes"]))
    return view(ctx.prefix, model, groups, weights, compiled=cfg.train.compile)


def _key(v: View, x: torch.Tensor, batch_size: int, device) -> tuple:
    first = next(v.model.parameters())
    conv = next((p for p in v.model.parameters() if p.dim() == 4), first)
    amp = torch.bfloat16 if device.type == "cuda" else None  # train.autocast
    # inference tensors keep no version counter; a streamed split (harness.stream) is a read-only file
    version = -1 if not isinstance(x, torch.Tensor) or x.is_inference() else x._version
    return (v.weights, v.k, id(x), version, tuple(x.shape), x.dtype, str(x.device), str(device), amp, first.dtype,
            conv.is_contiguous(memory_format=torch.channels_last), batch_size)


def _prefix(v: View, xb: torch.Tensor, device) -> torch.Tensor:
    """The first k groups' output on one batch. Normal tensors even when called under train.predict's inference
    mode: a cached training split is indexed and fed to layers that save their input for backward."""
    with torch.inference_mode(False), torch.no_grad(), train.autocast(device):
        return run(v.segments, 0, v.k, train.to_device_batch(xb, device))


def _compute(v: View, x: torch.Tensor, batch_size: int, device, first: torch.Tensor) -> torch.Tensor:
    """The prefix output of every image of x, in the chunks of batch_size that train.predict uses (so evaluation sets
    see exactly the floats predict would compute), stored where x lives (pinned when that is the CPU of a GPU run)."""
    with torch.inference_mode(False):
        out = torch.empty((len(x), *first.shape[1:]), dtype=first.dtype, device=x.device,
                          pin_memory=x.device.type == "cpu" and device.type == "cuda",
                          memory_format=torch.channels_last if first.dim() == 4 else torch.contiguous_format)
        out[:len(first)] = first
        for i in range(batch_size, len(x), batch_size):
            out[i:i + batch_size] = _prefix(v, x[i:i + batch_size], device)
    return out


def inputs(v: View, x: torch.Tensor, batch_size: int, device, shuffled: bool = False):
    """(what the model is fed, what to feed it to) for the images x: (cached prefix outputs, the rest of the model)
    when the cache holds them or they fit in its budget, else (x, the model). `shuffled`: x is trained on in
    shuffled batches of batch_size rather than evaluated in chunks. A streamed split (harness.stream.Streamed, issue
    26) is cached the same way: its rows are read from the file once, in those chunks, and its prefix outputs held in
    memory within the same budget (a set whose outputs do not fit streams its images every epoch, as before).

    Exact on CPU: an image's prefix output does not depend on which other images share its batch (train.predict's
    chunks, fit's shuffled batches: equal floats, tests/test_prefix.py), as long as the batch holds more than one
    image: oneDNN convolves a batch of one with another kernel (resnet8 from layer2 on, resnet18 from layer1 on,
    differ in the last bits at batch 1, with 1 or 2 threads; never at any other size tried, 2..128 for resnet8).
    Shuffled training batches of one happen when len(x) % batch_size == 1: then x is recomputed on CPU."""
    if v.segments is None or v.k == 0 or not isinstance(x, (torch.Tensor, stream.Streamed)):
        return x, v.model
    if shuffled and device.type == "cpu" and len(x) % batch_size == 1:
        return x, v.model
    rest = lambda h: run(v.segments, v.k, len(v.segments), h)  # noqa: E731
    c, key = v.cache, _key(v, x, batch_size, device)
    if key in c.entries:
        c.hits += 1
        return c.entries[key][1], rest
    if key in c.refused:
        return x, v.model
    for g in list(v.groups)[:v.k]:  # frozen groups are in eval mode (set_frozen); a fresh model is in train mode
        v.groups[g].eval()
    first = _prefix(v, x[:batch_size], device)
    size = first[0].numel() * first.element_size() * len(x)
    if c.used + size > c.budget:
        c.refused.add(key)
        if not c.said:
            c.said = True
            c.log(f"prefix cache: {size / 2**20:.1f} MiB more (k = {v.k}, {len(x)} images) would exceed "
                  f"train.cache_mb = {c.budget / 2**20:.0f} ({c.used / 2**20:.1f} MiB held); recomputing what does not "
                  f"fit (said once per worker)")
        return x, v.model
    out = _compute(v, x, batch_size, device, first)
    c.entries[key] = (x, out)  # x held: its id cannot be reused while the entry lives
    c.used += size
    c.misses += 1
    return out, rest

"""Training on device-resident tensors: freeze, optimizer, LR schedule, the one fit loop, evaluation."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import strategies
from harness.config import ConfigError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("study.device", "'cuda' requested but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def setup_device(device: torch.device) -> None:
    if device.type == "cuda":
        # TF32 matmuls/convs: ~2x on Ampere+ for fp32 parts left outside autocast, accuracy unaffected for SGD
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); plain fp32 on CPU for bit-reproducibility."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare(model: nn.Module, device: torch.device, compile: bool = False) -> nn.Module:
    # NHWC (channels_last) everywhere: tensor-core friendly convs on CUDA, and on CPU oneDNN's NHWC kernels ran
    # resnet8 inference 1.5x faster here (4400 vs 3000 img/s at batch 64, 2 cores), training at the same speed
    model = model.to(device).to(memory_format=torch.channels_last)
    if compile:
        # in place (nn.Module.compile): same module, same state_dict keys, the groups still point into it. Each
        # freeze/unfreeze and each trial recompiles (tens of seconds), so it pays off for trials of minutes.
        model.compile()
    return model


def to_device_batch(xb: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of images -> the device, float in [0, 1] (uint8 at rest, harness.data.pixels, converted there: a
    quarter of the bytes cross the bus), channels_last (as the model, see prepare). Batches of data kept on the CPU
    (too large for the device) land in pageable memory; pinning them (torch's caching host allocator) lets the copy
    run async with non_blocking."""
    if xb.device != device:
        if device.type == "cuda" and not xb.is_pinned():
            xb = xb.pin_memory()
        xb = xb.to(device, non_blocking=True)
    xb = xb.float() / 255 if xb.dtype == torch.uint8 else xb  # harness.data.pixels (train imports no data module)
    return xb.contiguous(memory_format=torch.channels_last) if xb.dim() == 4 else xb


def set_frozen(model: nn.Module, groups: dict, frozen) -> None:
    """Freeze some groups; all others train. `frozen` is either an int k, the first k groups (the head is never
    frozen: today's prefix, 0..number of groups before the head), or a collection of group indices into
    list(groups) (0..len(groups)-1, the head last), which may include the head (surgical fine-tuning of one block
    without it) but not every group (then nothing would train and backward() would fail).

    Frozen means frozen: requires_grad=False, and the group is put in eval mode so its BatchNorm running
    statistics do not move either (in train mode they would drift towards the target data even with no
    gradient). Call after model.train(), which would otherwise put every BN back in training mode."""
    names = list(groups)
    if isinstance(frozen, bool) or not isinstance(frozen, (int, set, frozenset, list, tuple)):
        raise ValueError(f"frozen must be an int or a collection of group indices, got {frozen!r}")
    if isinstance(frozen, int):
        if not 0 <= frozen <= len(names) - 1:
            raise ValueError(f"freeze_layers must be in [0, {len(names) - 1}], got {frozen}")
        frozen = set(range(frozen))  # the head is the last group: never among the first k
    else:
        frozen = set(frozen)
        bad = [i for i in frozen if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(names)]
        if bad:
            raise ValueError(f"frozen group indices must be in [0, {len(names) - 1}] ({', '.join(names)}), got {bad}")
        if len(frozen) == len(names):
            raise ValueError(f"every group ({', '.join(names)}) frozen: nothing would train")
    for i, name in enumerate(names):
        for p in groups[name].parameters():
            p.requires_grad_(i not in frozen)
        if i in frozen:
            groups[name].eval()


def make_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float, param_groups=None):
    """One optimizer over all parameters. Frozen ones get no .grad, and torch optimizers skip params whose
    grad is None, so unfreezing needs no new param group and the optimizer really updates them from then on.
    param_groups: a strategy's rule (its groups, each {"params"} with an optional "lr_scale", a factor on the scheduled
    lr, and "weight_decay"), which must hold every parameter once: one left out would never train; None: one group."""
    params = list(model.parameters()) if param_groups is None else _every_param_once(model, param_groups)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"train.optimizer: unknown {name!r}")


def _every_param_once(model: nn.Module, param_groups) -> list[dict]:
    held = [id(p) for g in param_groups for p in g["params"]]
    if sorted(held) != sorted(id(p) for p in model.parameters()):
        raise ValueError(f"param_groups must hold every parameter of the model exactly once: {len(held)} held, "
                         f"{len(set(held))} distinct, the model has {len(list(model.parameters()))}")
    return [{**g, "params": list(g["params"])} for g in param_groups]


def lr_at(step: int, total: int, base: float, schedule: str) -> float:
    """Per-step learning rate: cosine to 0, constant, or step decay x0.1 at 50% and 75% of training."""
    if schedule == "constant":
        return base
    if schedule == "step":
        return base * (0.1 ** ((step >= total // 2) + (step >= 3 * total // 4)))
    return 0.5 * base * (1 + math.cos(math.pi * step / max(1, total)))


AUGMENTS = ("none", "flip_crop")
# He et al. 2016 (section 4.2, the CIFAR ResNets of harness.models) translate by up to 4 px; reflect padding as
# airbench's loader (F.pad(images, (pad,) * 4, "reflect") in cifar10-airbench's airbench94_muon.py): zero padding
# would give training images black borders that no test image has
CROP_PAD = 4


def flip_crop(xb: torch.Tensor, gen: torch.Generator, pad: int = CROP_PAD) -> torch.Tensor:
    """Each image flipped left-right with probability 1/2 and shifted by -pad..pad pixels on each axis (a random crop
    of the reflect-padded image), batched on the batch's device as airbench's batch_flip_lr and batch_crop. The draws
    come from `gen`, a CPU generator: one seed gives the same augmentation on every device."""
    n, c, h, w = xb.shape
    flip = (torch.rand(n, generator=gen) < 0.5).to(xb.device)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=gen).to(xb.device)
    xb = F.pad(torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb), (pad,) * 4, mode="reflect")
    rows = (dy + torch.arange(h, device=xb.device))[:, None, :, None]  # n x 1 x h x 1: the crop's rows per image
    cols = (dx + torch.arange(w, device=xb.device))[:, None, None, :]
    out = xb[torch.arange(n, device=xb.device)[:, None, None, None], torch.arange(c, device=xb.device)[:, None, None],
             rows, cols]
    return out.contiguous(memory_format=torch.channels_last)


# A loss: (logits, labels) -> the batch's mean loss; Recipe.loss names one. Label smoothing with epsilon 0.1, Szegedy
# et al. 2016's (section 7, ImageNet): the target puts 0.9 + 0.1/K on the label and 0.1/K on each other class
LOSSES = {"cross_entropy": F.cross_entropy,
          "label_smoothing": functools.partial(F.cross_entropy, label_smoothing=0.1)}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every epoch of a fit shares: its batches (size, device), the lr schedule over the fit's steps, the loss."""
    batch_size: int
    lr: float  # the schedule's base lr; a param group with an "lr_scale" gets that factor on the scheduled lr
    schedule: str  # lr_at's: cosine, constant or step
    total: int  # the fit's steps, every epoch's: the schedule's length
    device: torch.device
    loss: Callable = F.cross_entropy  # (logits, labels) -> the batch's mean loss (LOSSES)
    term: Callable | None = None  # (xb, yb, logits) -> a scalar added to it: a strategy's loss hook


def batches(x, y, plan: Plan, gen: torch.Generator, augment: torch.Generator | None = None):
    """(images, labels) batches of (x, y) on the plan's device, in a random order drawn from gen; augment: a generator
    to flip_crop every batch with (None: no augmentation). Images kept on the CPU are copied a batch at a time."""
    chunks = torch.randperm(len(x), generator=gen).to(x.device).split(plan.batch_size)
    for idx, xb in zip(chunks, rows(x, chunks, plan.device)):
        xb, yb = to_device_batch(xb, plan.device), y[idx.to(y.device)].to(plan.device, non_blocking=True)
        yield (xb if augment is None else flip_crop(xb, augment)), yb


def rows(x, chunks, device: torch.device):
    """x's rows for each chunk of indices, in order: indexed in memory, or read from disk by a streamed set's
    DataLoader workers (harness.stream.Streamed.batches)."""
    return x.batches(chunks, device) if hasattr(x, "batches") else (x[idx] for idx in chunks)


def set_training(model: nn.Module, groups: dict, frozen, bn: str = "train") -> None:
    """The model in training mode, but for the groups `frozen` names (set_frozen: no gradient, eval mode). bn "eval":
    the whole model stays in eval mode (Lee et al. 2023's train_mode: eval): every BatchNorm normalizes with its
    running statistics and never updates them, the trained groups' weights still get gradients."""
    if bn not in strategies.BN_MODES:
        raise ValueError(f"bn must be one of {', '.join(strategies.BN_MODES)}, got {bn!r}")
    model.train(bn == "train")
    set_frozen(model, groups, frozen)  # after train(), which would put every BatchNorm back in training mode


def train_one_epoch(forward, opt, data, plan: Plan, step: int) -> tuple[float, int]:
    """One pass over `data`, (images, labels) batches on the device (batches), from the fit's step `step` on: per batch
    the scheduled lr, the plan's loss (plus its term), one optimizer step. Returns (mean loss, the next step); NaN if it
    diverged. forward: the model, set to train what it should (set_training), or the rest of it when the batches hold
    cached prefix outputs (prefix.inputs)."""
    total_loss, seen = torch.zeros((), device=plan.device), 0
    for xb, yb in data:
        lr = lr_at(step, plan.total, plan.lr, plan.schedule)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"] if "lr_scale" in g else lr
        with autocast(plan.device):
            logits = forward(xb)
            loss = plan.loss(logits, yb)
            if plan.term is not None:
                loss = loss + plan.term(xb, yb, logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        total_loss += loss.detach() * len(yb)  # accumulate on device: no host sync per step
        seen += len(yb)
    return (total_loss / seen).item(), step


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one fine-tune trains: trials, source-task pretraining and sustain updates all go through fit()."""
    lr: float
    epochs: int
    batch_size: int
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    freeze_layers: int = 0  # the first k groups are frozen before unfreeze_epoch
    unfreeze_epoch: int = 0  # from this epoch on every group trains; >= epochs: never
    strategy: str = "prefix"  # its entry in harness.strategies.STRATEGIES: which groups train (frozen_at), its hooks
    tune_group: int = 0  # surgical: the one group (0 = the first, before the head) that trains
    tune_head: bool = True  # surgical: whether the head trains too
    gradual_every: int = 1  # gradual: epochs between two unfreezings
    tune_set: tuple = ()  # surgical: the indices of the groups that train (head = the last), overriding tune_group
    bn: str = "train"  # "eval": every BatchNorm keeps its running statistics (set_training)
    augment: str = "none"  # "flip_crop": every training batch flipped and cropped (flip_crop), else as it is
    loss: str = "cross_entropy"  # its entry in LOSSES
    settings: dict = dataclasses.field(default_factory=dict)  # a new strategy's own settings, for its hooks


def frozen_at(recipe: Recipe, epoch: int, n_groups: int):
    """What set_frozen gets at an epoch, for a model of n_groups groups before the head: the freezing schedule of the
    recipe's strategy (harness.strategies: prefix's int k, surgical's set of indices, gradual's shrinking k, ...)."""
    return strategies.get(recipe.strategy).frozen(recipe, epoch, n_groups)


def n_frozen(frozen) -> int:
    """How many groups a set_frozen argument freezes (the frozen_layers metric)."""
    return frozen if isinstance(frozen, int) else len(frozen)


def n_leading(frozen) -> int:
    """How many groups from the input on a set_frozen argument freezes with no trained group between them: the
    prefix whose output is fixed (a surgical set {0, 1, 3} -> 2)."""
    if isinstance(frozen, int):
        return frozen
    k = 0
    while k in frozen:
        k += 1
    return k


def fit(model, groups, x, y, recipe: Recipe, seed: int, device, view=None):
    """The training loop. Yields (epoch, mean train loss, number of frozen groups, lr at the epoch's end) after every
    epoch, so the caller validates, logs, reports and prunes between epochs (raising out of its loop stops training).
    Which groups train at each epoch is frozen_at(recipe, epoch), the loss LOSSES[recipe.loss]; the strategy's hooks
    (harness.strategies: a loss term, a param-group rule, an after-epoch step), where it has them, act in this loop.

    One optimizer for the whole run (frozen params get no grad and are skipped, so unfreezing needs no new param
    group); one seeded generator for the batch order of every epoch. Raises FloatingPointError on a non-finite
    loss: a diverged run must fail with its reason, not train on NaNs.

    view: the model seen through the prefix cache (prefix.View): while the first groups stay frozen, epochs train on
    their cached outputs. Not with augmentation, whose images differ every epoch (the view still serves the
    caller's evaluation sets: those are not augmented)."""
    r = recipe
    if r.augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, got {r.augment!r}")
    if r.loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {r.loss!r}")
    entry, hook = strategies.get(r.strategy), strategies.Fit(model, groups, r, {})
    opt = make_optimizer(model, r.optimizer, r.lr, r.momentum, r.weight_decay,
                         entry.param_groups(hook) if entry.param_groups else None)
    plan = Plan(r.batch_size, r.lr, r.schedule, r.epochs * -(-len(x) // r.batch_size), device, LOSSES[r.loss],
                functools.partial(entry.loss, hook) if entry.loss else None)
    gen = torch.Generator().manual_seed(seed)
    # augmentation draws from a stream of its own (seed + 1): the batch order stays that of augment = "none", and
    # the flips are not drawn from the numbers that drew the order
    aug = torch.Generator().manual_seed(seed + 1) if r.augment == "flip_crop" else None
    step = 0
    with contextlib.ExitStack() as held:
        # streamed images (harness.stream): one reader, its worker processes kept for every epoch, ended after the last
        # epoch's batches, or when the caller stops early (an exception, a pruned trial: the generator closed)
        xr = held.enter_context(x.reader(device, -(-len(x) // r.batch_size))) if hasattr(x, "reader") else x
        for epoch in range(r.epochs):
            frozen = frozen_at(r, epoch, len(groups) - 1)
            xs, forward = x, model
            if view is not None:
                view.train_with(frozen)
                if aug is None:
                    xs, forward = view.inputs(x, r.batch_size, device, shuffled=True)
            set_training(model, groups, frozen, r.bn)
            loss, step = train_one_epoch(forward, opt, batches(xr if xs is x else xs, y, plan, gen, aug), plan, step)
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite train_loss ({loss}) at epoch {epoch} (lr {r.lr:g})")
            if entry.after_epoch is not None:
                entry.after_epoch(hook, epoch)
            if epoch == r.epochs - 1:
                held.close()  # no worker waits while the caller evaluates the last epoch
            yield epoch, loss, n_frozen(frozen), lr_at(step, plan.total, r.lr, r.schedule)


@torch.inference_mode()
def predict(model, x, batch_size, device) -> torch.Tensor:
    """Logits (float32) for x in eval mode. `model` may be a prefix.View: then the outputs of its frozen groups on x
    come from the cache when it holds them, and only the rest of the model runs."""
    model.eval()
    x, forward = model.inputs(x, batch_size, device) if hasattr(model, "inputs") else (x, model)
    out = []
    chunks = [slice(i, i + batch_size) for i in range(0, len(x), batch_size)]
    for xb in rows(x, chunks, device):
        xb = to_device_batch(xb, device)
        with autocast(device):
            out.append(forward(xb).float())
    return torch.cat(out)


def evaluate(model, x, y, batch_size, device) -> dict:
    """Accuracy and mean cross-entropy on (x, y), and the logits (reused, e.g. for BBSE's confusion matrix)."""
    logits = predict(model, x, batch_size, device)
    y = y.to(logits.device)
    return {"acc": (logits.argmax(1) == y).float().mean().item(), "loss": F.cross_entropy(logits, y).item(),
            "logits": logits}

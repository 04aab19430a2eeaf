"""Source-task pretraining for the embedded default, cached on disk by content hash and shared by all trials."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from harness import models, store, train
from harness.config import Config

VERSION = 1  # bump when the recipe below changes


def cache_key(cfg: Config, data_key: str) -> str:
    return store.cache_key({"model": cfg.model.name, "pretrain": cfg.pretrain.__dict__, "data": data_key,
                            "seed": cfg.study.seed, "v": VERSION})


def pretrained(cfg: Config, data: dict, device: torch.device, cache_dir: Path, log=print) -> tuple[dict, dict]:
    """(body state_dict without the head, info). Trains on source_train once; later calls read the cache."""
    key = cache_key(cfg, data["key"])
    path = cache_dir / f"pretrain-{key}.safetensors"
    cached = store.load_tensors(path)
    if cached is not None and cached[1] is not None:
        return cached[0], {**cached[1], "cached": True}

    p, t = cfg.pretrain, cfg.train
    vx, vy = data["source_val"]
    model, groups = models.build(cfg.model.name, len(data["source_classes"]), seed=cfg.study.seed)
    model = train.prepare(model, device)
    recipe = train.Recipe(lr=p.lr, epochs=p.epochs, batch_size=p.batch_size, optimizer="sgd", momentum=0.9,
                          weight_decay=5e-4, schedule="cosine")
    history, t0 = [], time.perf_counter()
    for epoch, loss, _, _ in train.fit(model, groups, *data["source_train"], recipe, cfg.study.seed, device):
        val = train.evaluate(model, vx, vy, t.eval_batch_size, device)
        history.append({"epoch": epoch, "loss": loss, "val_acc": val["acc"]})
        log(f"pretrain epoch {epoch + 1}/{p.epochs}  loss {loss:.3f}  source val_acc {val['acc']:.3f}")
    head = models.head_prefix(model, groups)
    # the source head predicts other classes: fine-tuning always starts from a fresh head
    state = {k: v.detach().cpu().contiguous() for k, v in model.body.state_dict().items() if not k.startswith(head)}
    info = {"key": key, "source_val_acc": history[-1]["val_acc"], "seconds": time.perf_counter() - t0,
            "history": history, "source_classes": data["source_classes"], "cached": False}
    store.save_tensors(state, path, meta=info)
    return state, info

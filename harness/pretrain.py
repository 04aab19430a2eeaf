"""Source-task pretraining for the embedded default, cached on disk by content hash and shared by all trials."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness import models, train
from harness.config import Config

VERSION = 1  # bump when the recipe below changes


def cache_key(cfg: Config, data_key: str) -> str:
    blob = json.dumps({"model": cfg.model.name, "pretrain": cfg.pretrain.__dict__, "data": data_key,
                       "seed": cfg.study.seed, "v": VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pretrained(cfg: Config, data: dict, device: torch.device, cache_dir: Path, log=print) -> tuple[dict, dict]:
    """(body state_dict without the head, info). Trains on source_train once; later calls read the cache."""
    key = cache_key(cfg, data["key"])
    path = cache_dir / f"pretrain-{key}.safetensors"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
        info["cached"] = True
        return load_file(str(path)), info

    p, t = cfg.pretrain, cfg.train
    x, y = data["source_train"]
    vx, vy = data["source_val"]
    model, groups = models.build(cfg.model.name, len(data["source_classes"]), seed=cfg.study.seed)
    model = train.prepare(model, device)
    opt = train.make_optimizer(model, "sgd", p.lr, 0.9, 5e-4)
    gen = torch.Generator().manual_seed(cfg.study.seed)
    total, step, history, t0 = p.epochs * -(-len(x) // p.batch_size), 0, [], time.perf_counter()
    for epoch in range(p.epochs):
        loss, step = train.train_one_epoch(model, groups, 0, opt, x, y, p.batch_size, gen, step, total, p.lr,
                                           "cosine", device)
        val = train.evaluate(model, vx, vy, t.eval_batch_size, device)
        history.append({"epoch": epoch, "loss": loss, "val_acc": val["acc"]})
        log(f"pretrain epoch {epoch + 1}/{p.epochs}  loss {loss:.3f}  source val_acc {val['acc']:.3f}")
    head = models.head_prefix(model, groups)
    # the source head predicts other classes: fine-tuning always starts from a fresh head
    state = {k: v.detach().cpu().contiguous() for k, v in model.body.state_dict().items() if not k.startswith(head)}
    info = {"key": key, "source_val_acc": history[-1]["val_acc"], "seconds": time.perf_counter() - t0,
            "history": history, "source_classes": data["source_classes"], "cached": False}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    meta.write_text(json.dumps(info))
    tmp.replace(path)  # atomic: concurrent workers or a kill never leave half a file under the final name
    return state, info

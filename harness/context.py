"""The context every trial, replay and benchmark runs in: config, device, data, shift suite, pretrained weights, stores.

Opened by one function, `open_context`, for harness.launch (launcher and workers), harness.sustain and harness.bench.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import optuna
import torch

from harness import (bookkeeping, config, data as datamod, domainfiles, prefix, pretrain, schema, store,
                     suite as suitemod, target, tracking, train)


@dataclasses.dataclass
class Context:
    cfg: config.Config
    device: torch.device
    data: dict | None  # every split, resident on the device when it fits (data.to_device); None in a launcher
    data_cpu: dict  # the same splits on the CPU (the one host copy: data's own when it stays there), "key", "classes"
    suite: suitemod.Suite | None  # the evaluation sets on the device (suite.build); None when not asked for
    pretrained: dict | None  # body state of the source-task pretraining (model.weights = "pretrain"), else None
    weights_key: str  # what the initial weights are, for cache keys: "pretrain-<key>" or model.weights
    n_groups: int  # freezable layer groups of the model (the head excluded)
    client: object  # store.Client on the tracking URI
    uri: str
    storage: optuna.storages.RDBStorage | None  # the Optuna storage, when asked for
    exp_id: str
    parent_id: str
    created: bool  # the parent run was created by this open (first invocation of the study)
    cache: Path
    info: dict  # "pretrain", "suite" (build info) and "seconds" (time to open), for the launcher's log
    prefix: prefix.Cache | None = None  # frozen-prefix outputs kept across this worker's trials (train.cache_mb)


def open_context(cfg: config.Config, n_groups: int, role: str = schema.ROLE_STUDY, with_suite: bool = True,
                 with_storage: bool = True, log=print, memory_share: float = 1.0) -> Context:
    """Everything a worker needs, from the caches when they exist: the stores first (a dead tracking server or
    Optuna storage fails in seconds, before any training), then data, pretraining, shift suite and the MLflow
    experiment and parent run (role "study" or "sustain"). `log` receives the pretraining's progress.
    `memory_share`: the fraction of the GPU's memory this process may allocate (packed workers, harness.launch):
    the data stays on the device only when it fits half of what is free of that share."""
    root, device = store.home(), train.pick_device(cfg.study.device)
    train.setup_device(device)
    torch.manual_seed(cfg.study.seed)
    uri = cfg.study.tracking_uri or store.default_tracking_uri()
    store.check_reachable(uri)  # dead servers fail here, before mlruns/ or any sqlite file exists
    if with_storage and cfg.study.storage:
        store.check_reachable(cfg.study.storage, flag="--storage")
    root.mkdir(parents=True, exist_ok=True)
    for url in (uri, cfg.study.storage):  # a sqlite file's folder, as mlruns/ (preflight checked it can be written)
        if store.sqlite_path(url or "") is not None:
            store.sqlite_path(url).parent.mkdir(parents=True, exist_ok=True)
    client = store.connect(uri)
    storage = bookkeeping.storage(cfg.study.storage or store.default_storage(), client) if with_storage else None
    cache, t0, info = store.cache_dir(), time.perf_counter(), {}

    data = datamod.load(cfg.data, cfg.study.seed, cache)
    pre_state, weights_key = None, cfg.model.weights
    if cfg.model.weights == "pretrain":
        pre_device = torch.device("cpu") if device.type == "cpu" else device
        pre_state, info["pretrain"] = pretrain.pretrained(cfg, data, pre_device, cache, log=log)
        weights_key = f"pretrain-{info['pretrain']['key']}"
    data = target.target_domain(cfg.data, data, cfg.study.seed, cache)  # after pretraining: it is source data
    suite = None
    if with_suite:
        suite, info["suite"] = suitemod.build(cfg.shifts, data, cache, domainfiles.target_of(cfg.data, cfg.shifts))
        suite = suitemod.to_device(suite, device)
    info["seconds"] = time.perf_counter() - t0

    exp_id = tracking.experiment(client, cfg.study.name, root if uri.startswith(store.SQLITE) else None)
    parent_id, created = tracking.parent_run(client, exp_id, cfg.study.name, role=role)
    budget = 0.5  # data.to_device's default: half the free memory, the rest for model, activations, shift suite
    if device.type == "cuda" and memory_share < 1.0:  # a packed worker: half of its own share at most
        free, total = torch.cuda.mem_get_info(device)
        budget *= min(1.0, memory_share * total / free)
    placed = datamod.to_device(data, device, budget)
    return Context(cfg=cfg, device=device, data=placed, data_cpu=datamod.host(data, placed), suite=suite,
                   pretrained=pre_state, weights_key=weights_key, n_groups=n_groups, client=client, uri=uri,
                   storage=storage, exp_id=exp_id, parent_id=parent_id, created=created, cache=cache, info=info,
                   prefix=prefix.Cache(budget=cfg.train.cache_mb * 2**20))

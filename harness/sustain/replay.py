"""One policy on one seed's stream: the deployed model, the period loop, the stream metrics, and its child run."""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Callable

import torch

from harness import config, context, schema, store, tracking, train, trial as trialmod
from harness.sustain import policies, streams, versions

VERSION = 4  # part of harness.sustain_key and of the deployed model's cache key: bump when the protocol changes
# (2: the deployed model trains on one half of the train split, the stream draws from the other; forgetting metric;
# 3: the accuracy monitor reads only labelled images no update trained on; 4: search and reported streams evaluate on
# disjoint halves of the test split, the deployed model is early-stopped on validation, control streams, issue 24)

# accuracy_matrix.json's definitions: R's own, the metrics' from the schema (one wording in the store)
DEFINITIONS = {"definition": "R[i][j] = accuracy on period j's evaluation set of the model after period i (after its "
                             "update, if any), 0-based; initial[j] = the deployed model before any update",
               "stream_acc_definition": schema.PERIOD[schema.STREAM_ACC],
               **{f"{k}_definition": schema.STREAM_FINAL[k] for k in (schema.BWT, schema.FORGETTING, schema.FWT)}}


@dataclasses.dataclass
class SeedContext:
    """Per seed, built once and shared by every policy: the stream and the deployed model's weights."""
    recipes: list[dict]  # streams.schedule
    stream: list[dict]  # the periods' tensors on the device (streams.make_stream)
    init: dict  # the deployed model's state_dict
    deploy_idx: torch.Tensor  # the train-split images it was fine-tuned on
    pool_idx: torch.Tensor  # the stream pool's (streams.split_pool)
    control: list[dict] | None = None  # the no-drift control stream (streams.control), when stream.control
    eval_idx: torch.Tensor | None = None  # the test-split images of this seed's half (streams.eval_halves)
    half: str = "reported"  # which half: "search" for a policy search's seeds
    deployed: dict | None = None  # how the deployed model converged (converge), and the reachable one's (reported)


@dataclasses.dataclass
class SustainRun:
    """One sustain process: its Context and what its policy runs share."""
    ctx: context.Context
    log: Callable[[str], None]
    finished: dict = dataclasses.field(default_factory=dict)  # harness.sustain_key -> FINISHED child run (reused)
    seeds: dict = dataclasses.field(default_factory=dict)  # (seed, half) -> SeedContext, or the error its build raised

    @property
    def reference_x(self) -> torch.Tensor:
        """The deployed model's reference inputs for the unlabelled monitors: the clean validation images."""
        return self.ctx.data["val"][0]


def fine_tune(model, groups, x, y, lr, freeze_layers, epochs, tcfg: config.Train, device, seed) -> None:
    """One update (or the deployed model's fine-tune): train.fit with [train]'s optimizer and schedule, a fresh
    optimizer, `epochs` seeded passes over (x, y), the first freeze_layers groups frozen throughout. Raises
    FloatingPointError on divergence."""
    recipe = train.Recipe(lr=lr, epochs=epochs, batch_size=tcfg.batch_size, optimizer=tcfg.optimizer,
                          momentum=tcfg.momentum, weight_decay=tcfg.weight_decay, schedule=tcfg.schedule,
                          freeze_layers=freeze_layers, unfreeze_epoch=epochs)
    for _ in train.fit(model, groups, x, y, recipe, seed, device):
        pass


def _correct(model, x, y, batch_size, device) -> torch.Tensor:
    return train.predict(model, x, batch_size, device).argmax(1) == y


def _accuracy_on(model, x, y, batch_size, device) -> float:
    return _correct(model, x, y, batch_size, device).double().mean().item()


def converge(model, groups, x, y, val, lr, max_epochs, patience, tcfg: config.Train, device, seed) -> dict:
    """Full fine-tuning of `model` in place on (x, y) to convergence: at most max_epochs ([train]'s optimizer and
    schedule over max_epochs), clean validation accuracy after every epoch, stopped after `patience` epochs without a
    better one, the best epoch's weights restored (issue 24: 6 fixed epochs left the deployed model 13-23 points short
    of what its data reaches, and 'never updating' lost what more training alone would have bought). Returns
    {epochs (run), best_epoch, val_acc (at best_epoch), train_images, max_epochs, patience, lr}."""
    recipe = train.Recipe(lr=lr, epochs=max_epochs, batch_size=tcfg.batch_size, optimizer=tcfg.optimizer,
                          momentum=tcfg.momentum, weight_decay=tcfg.weight_decay, schedule=tcfg.schedule,
                          freeze_layers=0, unfreeze_epoch=max_epochs)
    best, state, best_epoch, ran = -1.0, None, 0, 0
    for epoch, *_ in train.fit(model, groups, x, y, recipe, seed, device):
        ran = epoch + 1
        acc = _accuracy_on(model, *val, tcfg.eval_batch_size, device)
        if acc > best:  # ties keep the earlier epoch
            best, best_epoch, state = acc, epoch + 1, copy.deepcopy(model.state_dict())
        elif ran - best_epoch >= patience:
            break
    model.load_state_dict(state)
    return {"epochs": ran, "best_epoch": best_epoch, schema.VAL_ACC: best, "train_images": len(y),
            "max_epochs": max_epochs, "patience": patience, "lr": lr}


def replay(model, groups, stream: list[dict], spec: dict, reference_x, tcfg: config.Train, device, seed: int,
           on_update=None) -> dict:
    """Run one policy over the stream, in place on `model` (the deployed model). Returns R, initial, stream_acc,
    labelled_acc, updated, monitor, monitor_threshold, update_seconds, update_examples (see harness.sustain.cli).
    on_update(t, model, stat, threshold) runs after each update, outside the timed update (model versions)."""
    bs = tcfg.eval_batch_size
    head = groups["head"]
    decide = policies.POLICIES[spec["policy"]].decide

    def row():  # per period: which evaluation images the model gets right
        return [_correct(model, p["eval_x"], p["eval_y"], bs, device) for p in stream]

    def accs(bits):
        return [b.double().mean().item() for b in bits]

    current_bits = row()
    initial = current = accs(current_bits)
    correct = []  # the model in service on each period's evaluation images (0/1): stream_acc per image
    ref_x, ref_cache = reference_x, {}
    R, stream_acc, labelled_acc, updated, monitor, threshold, since = [], [], [], [], [], [], []
    seconds, examples = 0.0, 0
    trained = set()  # pool positions of every labelled image an update has trained on
    for t, p in enumerate(stream):
        stream_acc.append(current[t])  # test on the near future: before any update on period t
        correct.append(current_bits[t].int().tolist())
        # the labelled accuracy the accuracy monitor reads (its reference included) counts only images no update has
        # trained on: pool images come back over the stream, and with replay 5-11 of a period's 50 were pixel-identical
        # training images, which flatter the model and hide a drop (issue 11). None when every image was trained on.
        fresh = torch.tensor([int(i) not in trained for i in p["idx"].tolist()], device=p["y"].device) \
            if "idx" in p else torch.ones(len(p["y"]), dtype=torch.bool, device=p["y"].device)
        labelled_acc.append(_accuracy_on(model, p["x"][fresh], p["y"][fresh], bs, device) if fresh.any() else None)
        if labelled_acc[-1] is not None:
            since.append(labelled_acc[-1])

        def ref_features():  # cached until the next update changes the model and the reference
            if "f" not in ref_cache:
                ref_cache["f"] = policies.features(model, head, ref_x, bs, device)
            return ref_cache["f"]

        fire, stat, used = decide(policies.Observation(
            t=t, spec=spec, seed=seed, labelled=since, ref_features=ref_features,
            cur_features=lambda: policies.features(model, head, p["eval_x"], bs, device)))
        monitor.append(stat)
        threshold.append(used)
        if fire:
            window = stream[max(0, t - spec["replay"]):t + 1]
            x = torch.cat([w["x"] for w in window])
            y = torch.cat([w["y"] for w in window])
            trained |= {int(i) for w in window if "idx" in w for i in w["idx"].tolist()}
            t0 = time.perf_counter()
            fine_tune(model, groups, x, y, spec["lr"], spec["freeze_layers"], spec["epochs"], tcfg, device,
                      seed * 1000 + t)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t0
            examples += len(x) * spec["epochs"]
            if on_update is not None:
                on_update(t, model, stat, used)
            current_bits = row()
            current = accs(current_bits)
            ref_x, ref_cache, since = p["eval_x"], {}, []
        updated.append(int(fire))
        R.append(current)
    return {"R": R, "initial": initial, schema.STREAM_ACC: stream_acc, schema.LABELLED_ACC: labelled_acc,
            schema.UPDATED: updated, schema.MONITOR: monitor, schema.MONITOR_THRESHOLD: threshold,
            schema.UPDATE_SECONDS: seconds, schema.UPDATE_EXAMPLES: examples, "stream_correct": correct}


def stream_metrics(R: list[list[float]], initial: list[float]) -> dict:
    """stream_acc per period, its mean and worst, GEM bwt, Chaudhry forgetting and forward transfer against the
    never-updated deployed model (harness.sustain.cli)."""
    T = len(R)
    acc = [initial[0]] + [R[t - 1][t] for t in range(1, T)]
    return {schema.STREAM_ACC: acc, schema.STREAM_ACC_MEAN: sum(acc) / T, schema.STREAM_ACC_WORST: min(acc),
            # GEM (Lopez-Paz & Ranzato 2017): against the accuracy right after period i
            schema.BWT: sum(R[T - 1][i] - R[i][i] for i in range(T - 1)) / (T - 1),
            # Chaudhry et al. 2018: against the best accuracy on period i since it arrived (l >= i: before that the
            # model had not met period i, and a drifting stream can make R[l][i] high for l < i by chance)
            schema.FORGETTING: sum(max(R[l][i] for l in range(i, T - 1)) - R[T - 1][i] for i in range(T - 1)) / (T - 1),
            # not GEM's FWT (whose baseline is a randomly initialized model): the baseline here is the deployed model
            # never updated, initial[i], so fwt is what the updates so far bought on the next period
            schema.FWT: sum(R[i - 1][i] - initial[i] for i in range(1, T)) / (T - 1)}


def sustain_key(cfg: config.Config, spec: dict, seed: int, device: str, variant: str = schema.STREAM_DRIFT,
                half: str = "reported") -> str:
    """Everything that determines one child's result; equal keys replay to equal metrics on CPU. `device` is the
    resolved one (cpu, cuda), never "auto": a CUDA result must not be reused on a CPU machine or back."""
    st = {k: v for k, v in config.to_dict(cfg)["stream"].items()
          if k in ("kind", "shift", "shift_b", "severity", "phase", "alpha", "periods", "labelled", "eval_size",
                   "init_lr", "init_epochs", "init_patience")}
    return store.cache_key({"data": cfg.data.__dict__, "model": cfg.model.__dict__, "pretrain": cfg.pretrain.__dict__,
                            "train": cfg.train.__dict__, "study_seed": cfg.study.seed, "stream": st, "spec": spec,
                            "seed": seed, "device": device, "pool": cfg.stream.pool_fraction, "v": VERSION,
                            "variant": variant, "half": half,
                            # a run replayed without registering its models is not reused by one that registers them
                            **({"register_models": True} if getattr(cfg.stream, "register_models", False) else {})})


# ---------------------------------------------------------------------------------------------------- seeds

def seed_context(run: SustainRun, seed: int, half: str = "reported") -> SeedContext:
    """The seed's stream (evaluating on `half` of the test split: "search" for a policy search's seeds), its control
    and deployed model, built on first use. A failure (e.g. the deployed model's fine-tune diverged) is remembered and
    raised again for every policy of the seed."""
    known = run.seeds.get((seed, half))
    if isinstance(known, Exception):
        raise known
    if known is None:
        try:
            known = run.seeds[(seed, half)] = _build_seed_context(run, seed, half)
        except Exception as err:
            run.seeds[(seed, half)] = err
            raise
    return known


def _build_seed_context(run: SustainRun, seed: int, half: str) -> SeedContext:
    ctx, st = run.ctx, run.ctx.cfg.stream
    data = ctx.data_cpu
    recipes = streams.schedule(st, len(data["classes"]), seed)
    deploy_idx, pool_idx = streams.split_pool(data["train"][1], seed, st.pool_fraction)
    eval_idx = streams.eval_halves(*data["test"], ctx.cfg.study.seed)[half]
    x, y = data["train"]
    # labelled batches only from the pool; evaluation images only from this seed's half of the test split
    cpu = {"train": (x[pool_idx], y[pool_idx]), "test": (data["test"][0][eval_idx], data["test"][1][eval_idx])}

    def on_device(rs):
        return [{k: v.to(ctx.device) if torch.is_tensor(v) else v for k, v in p.items()}
                for p in streams.make_stream(cpu, rs, st.labelled, st.eval_size, seed)]

    model, groups = trialmod.fresh_model(ctx.cfg.model, len(data["classes"]), ctx.pretrained, ctx.device, seed,
                                         compile=ctx.cfg.train.compile)  # head init seeded by the replicate seed
    deployed = {"deployed": _deploy(ctx, seed, model, groups, deploy_idx, "deployed")}
    init = copy.deepcopy(model.state_dict())
    if half == "reported":  # the best reachable on the same data: the same recipe on the whole train split
        best, groups_b = trialmod.fresh_model(ctx.cfg.model, len(data["classes"]), ctx.pretrained, ctx.device, seed,
                                              compile=ctx.cfg.train.compile)
        deployed["reachable"] = _deploy(ctx, seed, best, groups_b, torch.arange(len(y)), "reachable")
        deployed["gap"] = deployed["reachable"]["test_acc"] - deployed["deployed"]["test_acc"]
    d = deployed["deployed"]
    run.log(f"seed {seed}: deployed model {d['how']}: {d['epochs']} epochs (best {d['best_epoch']}), val acc "
            f"{d[schema.VAL_ACC]:.3f}, clean test acc {d['test_acc']:.3f}" + (
                f"; reachable (whole train split) {deployed['reachable']['test_acc']:.3f}, gap "
                f"{100 * deployed['gap']:+.1f} points" if "gap" in deployed else ""))
    return SeedContext(recipes=recipes, stream=on_device(recipes), init=init, deploy_idx=deploy_idx,
                       pool_idx=pool_idx, control=on_device(streams.control(recipes)) if st.control else None,
                       eval_idx=eval_idx, half=half, deployed=deployed)


def _deploy(ctx: context.Context, seed: int, model, groups, train_idx, what: str) -> dict:
    """The deployed model ("deployed": its part of the clean train split) or the best reachable one ("reachable": the
    whole train split), in place on the fresh `model`: converge() at stream.init_lr, cached like the pretraining, so
    every policy, trial and re-run of this seed starts from it. Returns converge()'s record plus test_acc (clean,
    the whole test split, evaluated now) and how it came ("cached" or the fine-tune's time), for deployed.json."""
    cfg, st = ctx.cfg, ctx.cfg.stream
    # device.type is the resolved device (cpu / cuda), never "auto": weights fine-tuned on a GPU are not reused on
    # a CPU-only machine, where they would differ from what a CPU run computes
    key = store.cache_key({"data": ctx.data_cpu["key"], "weights": ctx.weights_key, "model": cfg.model.name,
                           "train": cfg.train.__dict__, "init_lr": st.init_lr, "init_epochs": st.init_epochs,
                           "init_patience": st.init_patience, "seed": seed, "device": ctx.device.type,
                           "pool": st.pool_fraction, "what": what, "v": VERSION})
    path = ctx.cache / f"sustain-{what}-{key}.safetensors"
    cached = store.load_tensors(path, device=str(ctx.device))
    if cached is not None and cached[1]:
        model.load_state_dict(cached[0])
        info, how = dict(cached[1]), "cached"
    else:
        t0 = time.perf_counter()
        xd, yd = ctx.data["train"]
        info = converge(model, groups, xd[train_idx.to(xd.device)], yd[train_idx.to(yd.device)], ctx.data["val"],
                        st.init_lr, st.init_epochs, st.init_patience, cfg.train, ctx.device, seed)
        store.save_tensors(model.state_dict(), path, meta=info)
        how = f"fine-tuned on {len(train_idx)} clean train images in {time.perf_counter() - t0:.1f} s"
    test_acc = _accuracy_on(model, *ctx.data["test"], cfg.train.eval_batch_size, ctx.device)
    return {**info, "test_acc": test_acc, "how": how}


# ---------------------------------------------------------------------------------------------------- child runs

def finished_children(ctx: context.Context) -> dict:
    """harness.sustain_key -> FINISHED child run of this parent (read only; reused instead of replayed)."""
    runs = ctx.client.search_runs([ctx.exp_id], f"tags.{schema.TAG_PARENT_RUN} = '{ctx.parent_id}' and "
                                  f"attributes.status = 'FINISHED'", max_results=10000)
    return {r.data.tags[schema.TAG_SUSTAIN_KEY]: r for r in runs if schema.TAG_SUSTAIN_KEY in r.data.tags}


def run_policy(run: SustainRun, spec: dict, seed: int, trial_number: int = -1, tags: dict | None = None,
               variant: str = schema.STREAM_DRIFT) -> dict:
    """Replay one policy on one seed's stream (variant "control": its no-drift control) into its own child run.
    A search trial (trial_number >= 0) evaluates on the search half of the test split, any other run on the reported
    half. Returns the final metrics. On any error the child run ends FAILED with tag harness.fail_reason and the error
    is raised again for the caller to record."""
    ctx, st, lab = run.ctx, run.ctx.cfg.stream, policies.label(spec)
    half = "search" if trial_number >= 0 else "reported"
    name = (f"policy-{lab}-seed{seed}" if trial_number < 0 else f"trial-{trial_number:04d}-{lab}-seed{seed}") + (
        "-control" if variant == schema.STREAM_CONTROL else "")
    key = sustain_key(ctx.cfg, spec, seed, ctx.device.type, variant, half)
    if trial_number < 0 and key in run.finished:
        done = run.finished[key]
        run.log(f"seed {seed} {lab:<10} reused finished run {done.info.run_id} ({done.info.run_name})")
        return {"run_id": done.info.run_id, **{k: done.data.metrics.get(k) for k in schema.STREAM_FINAL}}
    values = {**spec, schema.PARAM_STREAM: st.kind, schema.PARAM_SHIFT: streams.stream_shift(st),
              schema.PARAM_PERIODS: st.periods, schema.PARAM_SEED: seed}
    params = {k: "none" if values[k] is None else values[k] for k in schema.POLICY_PARAMS}
    run_id = tracking.child_run(ctx.client, ctx.exp_id, ctx.parent_id, ctx.cfg.study.name, trial_number, params,
                                {schema.TAG_ROLE: schema.ROLE_POLICY, schema.TAG_POLICY: lab,
                                 schema.TAG_SEED: str(seed), schema.TAG_SUSTAIN_KEY: key,
                                 schema.TAG_STREAM_VARIANT: variant, **(tags or {})})
    tracking.set_tags(ctx.client, run_id, {schema.TAG_RUN_NAME: name})  # child_run names runs trial-NNNN
    try:
        final, when = _replay_into(run, spec, seed, run_id, variant, half)
    except Exception as err:
        reason = f"{type(err).__name__}: {err}"
        tracking.end_run(ctx.client, run_id, "FAILED", {schema.TAG_FAIL_REASON: reason[:5000]})
        run.log(f"seed {seed} {lab:<10} FAILED ({name}, run {run_id}): {reason}")
        raise
    run.log(f"seed {seed} {lab:<10} stream_acc mean {final[schema.STREAM_ACC_MEAN]:.3f} worst "
            f"{final[schema.STREAM_ACC_WORST]:.3f}  bwt {final[schema.BWT]:+.3f}  "
            f"forgetting {final[schema.FORGETTING]:+.3f}  "
            f"fwt {final[schema.FWT]:+.3f}  {final[schema.N_UPDATES]} updates (periods {','.join(when) or '-'}) "
            f"{final[schema.UPDATE_SECONDS]:.1f} s")
    return {"run_id": run_id, **final}


def _replay_into(run: SustainRun, spec: dict, seed: int, run_id: str, variant: str, half: str) -> tuple[dict, list]:
    """The replay of run_policy and everything it logs; returns (final metrics, update periods)."""
    ctx, cfg, client = run.ctx, run.ctx.cfg, run.ctx.client
    sc = seed_context(run, seed, half)
    stream = sc.control if variant == schema.STREAM_CONTROL else sc.stream
    if stream is None:
        raise ValueError("a control run needs stream.control = true")
    model, groups = trialmod.fresh_model(cfg.model, len(ctx.data_cpu["classes"]), ctx.pretrained, ctx.device, seed,
                                         compile=cfg.train.compile)
    model.load_state_dict(sc.init)
    # None unless stream.register_models; a control run is a diagnostic, not a model in service: never registered
    registry = versions.start(ctx, run_id, policies.label(spec), seed) if variant == schema.STREAM_DRIFT else None
    versions.register(registry, model, -1, "deployed")
    res = replay(model, groups, stream, spec, run.reference_x, cfg.train, ctx.device, seed,
                 on_update=None if registry is None else
                 lambda t, m, stat, used: versions.register(registry, m, t, versions.trigger(spec, stat, used)))
    m = stream_metrics(res["R"], res["initial"])
    totals = {**m, schema.N_UPDATES: sum(res[schema.UPDATED]), schema.UPDATE_SECONDS: res[schema.UPDATE_SECONDS],
              schema.UPDATE_EXAMPLES: res[schema.UPDATE_EXAMPLES]}
    final = {k: totals[k] for k in schema.STREAM_FINAL}
    curves = {**res, **m}  # the per-period curves, by their schema.PERIOD names
    for name in schema.PERIOD:  # the monitor curves only at periods that have a value (triggered policies)
        steps = {t: v for t, v in enumerate(curves[name]) if v is not None}
        if steps:
            tracking.log_steps(client, run_id, name, steps)
    tracking.log_metrics(client, run_id, final)
    matrix = {**DEFINITIONS, **{k: curves[k] for k in ("R", "initial", *schema.PERIOD)},
              "periods": [{k: v for k, v in p.items() if not torch.is_tensor(v)} for p in stream], "policy": spec,
              "seed": seed, "variant": variant, "eval_half": half, "stream_correct": res["stream_correct"],
              # test-split positions of each period's evaluation images (stream_correct[t][i] is eval_idx[t][i]'s)
              "eval_idx": [sc.eval_idx[p["eval_idx"].cpu()].tolist() for p in stream], **final}
    tracking.log_json(client, run_id, matrix, schema.MATRIX_ARTIFACT)
    used = sorted({v for v in res[schema.MONITOR_THRESHOLD] if v is not None})
    tags = {schema.TAG_THRESHOLD_USED: ",".join(f"{v:.4g}" for v in used)} if used else {}
    when = [str(t) for t, u in enumerate(res[schema.UPDATED]) if u]
    if registry is not None:
        tags.update({schema.TAG_REGISTERED_MODEL: registry.name, schema.TAG_MODEL_VERSION: registry.versions[-1]})
        run.log(f"seed {seed} {policies.label(spec):<10} {len(registry.versions)} model versions of {registry.name} "
                f"in {registry.seconds:.1f} s (alias {versions.ALIAS} on version {registry.versions[-1]})")
    tracking.end_run(client, run_id, "FINISHED", {schema.TAG_UPDATE_PERIODS: ",".join(when), **tags})
    return final, when

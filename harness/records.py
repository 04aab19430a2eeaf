"""What a run records in MLflow besides its metrics: the data it read as dataset inputs (with content digests), its
description in words, and its system metrics while it runs. Written through harness.tracking."""

from __future__ import annotations

import hashlib
import math

import torch

from harness import schema, strategies, tracking

DIGEST_CHARS = 20  # MLflow's datasets.digest column holds 36 characters; 80 bits tell any two splits apart
SPLIT_CONTEXT = {"train": "training", "val": "validation", "test": "test", "subpop": "test"}


def digest(x: torch.Tensor, y: torch.Tensor | None = None) -> str:
    """sha256 of the images' bytes as held (uint8 or float32, harness.data; and the labels'): changes when any pixel
    or label changes. 1.3 ms for the default's 1.1 MB of test images, ~0.5 s for CIFAR-10's 600 MB of float training
    images (2 cores). uint8 is hashed as it is: a float copy would be 4x the data's bytes at once."""
    if not isinstance(x, torch.Tensor):  # a streamed split (harness.stream): its file, read in pieces
        from harness import stream

        h = stream.digest(x)
    else:
        x = x.detach().cpu()
        h = hashlib.sha256((x if x.dtype == torch.uint8 else x.float()).contiguous().numpy().tobytes())
    if y is not None:
        h.update(y.detach().long().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:DIGEST_CHARS]


def data_source(cfg) -> str:
    """Where the images come from: the folder for imagefolder and torchvision sets, else the dataset's name."""
    if cfg.data.path:
        return str(cfg.data.path)
    return {"digits": "sklearn.datasets.load_digits"}.get(cfg.data.source, cfg.data.source)


def dataset_inputs(cfg, data: dict, suite) -> list:
    """MLflow dataset inputs for the clean splits (train, validation, test, subpopulation) and every evaluation set
    of the suite (harness.suite.Suite; None: none): name, digest, source and context, plus input tags for the split,
    shift, severity, seed and the label (target) shift's prior."""
    src, base = data_source(cfg), cfg.data.source
    out = []
    for split in ("train", "val", "test", "subpop"):
        if split in data:
            x, y = data[split]
            tags = {schema.INPUT_SPLIT: split, schema.INPUT_IMAGES: len(y)}
            if cfg.data.target_shift and split != "subpop":  # the target domain the study adapts to
                tags[schema.INPUT_TARGET_SHIFT] = ",".join(cfg.data.target_shift)
            out.append(tracking.dataset_input(f"{base}/{split}", digest(x, y), src, SPLIT_CONTEXT[split], tags,
                                              shape=[-1, *x.shape[1:]]))
    for role, split, sets in (("selection", "val", suite.selection), ("test", "test", suite.test)) if suite else ():
        for e in sets:
            tags = {schema.INPUT_SPLIT: split, schema.INPUT_SHIFT: e.name, schema.INPUT_SEED: e.provenance.seed}
            where = e.provenance.source or src
            if e.kind != "severity":  # one set with its own labels
                if e.provenance.prior:  # the target (label) shift: test resampled to Dirichlet(alpha) class priors
                    tags[schema.INPUT_TARGET_SHIFT] = e.provenance.prior
                out.append(tracking.dataset_input(f"{base}/{split}/{e.name}", digest(e.images[0], e.labels), where,
                                                  f"{role}-shift", {**tags, schema.INPUT_IMAGES: len(e.labels)}))
                continue
            for s, xs in e.at():
                # a paired set's labels are its split's (recorded above); an unpaired one's are its own
                out.append(tracking.dataset_input(f"{base}/{split}/{e.name}/s{s}",
                                                  digest(xs, None if e.paired else e.labels), where, f"{role}-shift",
                                                  {**tags, schema.INPUT_SEVERITY: s, schema.INPUT_IMAGES: len(xs)}))
    return out


def context_inputs(ctx) -> list:
    """dataset_inputs of a Context, computed once per process (every trial of a worker records the same ones)."""
    if "dataset_inputs" not in ctx.info:
        ctx.info["dataset_inputs"] = dataset_inputs(ctx.cfg, ctx.data_cpu, ctx.suite)
    return ctx.info["dataset_inputs"]


def lr_words(lr: float) -> str:
    return f"{lr:.2g}" if lr >= 1e-3 else f"{lr:.1e}"


def strategy(params: dict, epochs: int, n_groups: int, baseline: str = "") -> str:
    """A trial's fine-tuning strategy in words, e.g. "freeze 2 groups, unfreeze at epoch 1, lr 0.18": its entry's words
    (harness.strategies; an unknown strategy or baseline is an error), its lr, its baseline family."""
    words = strategies.of(params, baseline).words(params, epochs)["run"] + strategies.bn_words(params)
    if params.get("lr") is not None:
        words += f", lr {lr_words(float(params['lr']))}"
    if baseline:
        words += f" (baseline: {strategies.BASELINES[baseline].label})"
    return words


def trial_description(ctx, params: dict, baseline: str = "") -> str:
    return (f"{strategy(params, ctx.cfg.train.epochs, ctx.n_groups, baseline)}; {ctx.cfg.train.epochs} epochs "
            f"of {ctx.cfg.train.optimizer} ({ctx.cfg.train.schedule} schedule) on {ctx.cfg.model.name}")


def start(ctx, run_id: str, params: dict, baseline: str = ""):
    """At a trial's start: its description, its dataset inputs, and its system-metrics sampler (returned; pass it to
    stop). Two requests (~10 ms each on sqlite) and a sampling thread."""
    tracking.set_description(ctx.client, run_id, trial_description(ctx, params, baseline))
    tracking.log_inputs(ctx.client, run_id, context_inputs(ctx))
    sampler = tracking.start_system_metrics(ctx.client, run_id, system_interval(ctx.cfg), ctx.device.type == "cuda")
    ctx.info["system_sampler"] = sampler  # the latest trial's, for harness.bench's overhead figure
    return sampler


def stop(sampler) -> float:
    """The sampler's final sample; returns the seconds sampling cost."""
    return tracking.stop_system_metrics(sampler)


def system_interval(cfg) -> float:
    return float(getattr(cfg.study, "system_metrics", tracking.SYSTEM_INTERVAL))


def fmt_acc(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def study_description(name: str, counts: dict, objective: str, selected: dict | None, model: dict | None,
                      report: str | None) -> str:
    """The parent run's description (markdown, a few lines): counts, the selected configuration with its ID and OOD
    accuracy, the registered model, where the report is. selected: {run_name, strategy, id_acc, ood_acc_mean,
    ood_acc_worst}; model: champion.publish's result; report: a URL or an artifact path."""
    lines = [f"**Study {name}**: {counts.get('complete', 0)} complete, {counts.get('pruned', 0)} pruned, "
             f"{counts.get('fail', 0)} failed trials; objective {objective}."]
    if selected:
        lines.append(f"Selected: **{selected['run_name']}**, {selected['strategy']}; ID accuracy "
                     f"{fmt_acc(selected.get(schema.ID_ACC))}, OOD accuracy "
                     f"{fmt_acc(selected.get(schema.OOD_ACC_MEAN))} "
                     f"(worst shift {fmt_acc(selected.get(schema.OOD_ACC_WORST))}).")
    else:
        lines.append("No trial completed yet.")
    if model:
        lines.append(f"Registered model: `{model['name']}` version {model['version']} (alias `champion`), "
                     f"loadable with `mlflow.pyfunc.load_model(\"models:/{model['name']}@champion\")`.")
    if report:
        lines.append(f"Report: [{report.rsplit('/', 1)[-1] if '://' in report else report}]({report})"
                     if "://" in report else f"Report: artifact `{report}` of this run.")
    return "\n\n".join(lines)

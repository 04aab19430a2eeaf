"""The study's selected trial as an MLflow model: logged with the pytorch flavour on its run and registered as a model
version with the alias `champion`, once at the end of a study (after the workers; the selection is tag_best's)."""

from __future__ import annotations

import time

import torch

from harness import data as datamod, model_registry, records, schema, tracking, trial as trialmod

ALIAS = schema.ALIAS_CHAMPION
EXAMPLE_IMAGES = 4  # the input example stored with the model (test images)


def registered_name(cfg) -> str | None:
    """study.registered_model, "" = the study name, "none" = no model logged."""
    name = cfg.study.registered_model or cfg.study.name
    return None if name == "none" else name


def load_trial_model(ctx, run_id: str):
    """The trial's fine-tuned model on the CPU, eval mode: the architecture with the weights saved on its run
    (model/weights.safetensors, workers.save_if_best). None when the run has no weights."""
    from safetensors.torch import load

    from harness import results

    blob = results.artifact(ctx.client, run_id, "model/weights.safetensors")
    if blob is None:
        return None
    model, _ = trialmod.fresh_model(ctx.cfg.model, len(ctx.data_cpu["classes"]), ctx.pretrained,
                                    torch.device("cpu"), ctx.cfg.study.seed)
    model.load_state_dict(load(blob))
    return model.eval()


def publish(ctx, log=print) -> dict | None:
    """Log and register the selected trial's model (parent tags harness.best_trial / harness.best_run_id), move the
    alias champion onto it and tag the parent. Nothing new when champion already points at that trial's run (a
    resume that selects the same trial). Returns {"name", "version", "run_id", "seconds", "new"} or None."""
    name = registered_name(ctx.cfg)
    if name is None:
        return None
    client = ctx.client
    tags = client.get_run(ctx.parent_id).data.tags
    # a soup that beat the selected trial on validation (harness.soups.crown), else the selected trial
    run_id = schema.tag(tags, schema.TAG_CHAMPION_RUN_ID) or schema.tag(tags, schema.TAG_BEST_RUN_ID)
    if not run_id:
        return None
    t0 = time.perf_counter()
    current = model_registry.alias_version(client, name, ALIAS)
    if current is not None and current.run_id == run_id:
        return {"name": name, "version": str(current.version), "run_id": run_id, "seconds": 0.0, "new": False}
    model = load_trial_model(ctx, run_id)
    if model is None:
        log(f"warning: the selected trial's run {run_id} has no model/weights.safetensors; no model registered")
        return None
    run = client.get_run(run_id)
    params = {k: v for k, v in run.data.params.items() if k in schema.TRIAL_PARAMS}  # strings; strategy() casts
    tags = run.data.tags
    strategy = records.strategy(params, ctx.cfg.train.epochs, ctx.n_groups, schema.tag(tags, schema.TAG_BASELINE, ""))
    info = {schema.MV_STUDY: ctx.cfg.study.name, schema.MV_TRIAL: schema.tag(tags, schema.TAG_TRIAL_NUMBER, ""),
            schema.MV_RUN_NAME: run.info.run_name, schema.MV_STRATEGY: strategy}
    metrics = {k: round(v, 6) for k, v in run.data.metrics.items()
               if k in (schema.ID_ACC, schema.OOD_ACC_MEAN, schema.OOD_ACC_WORST, schema.OOD_VAL_ACC,
                        schema.VAL_ACC_FINAL, schema.ID_ECE, schema.MCE)}
    example = datamod.pixels(ctx.data_cpu["test"][0][:EXAMPLE_IMAGES])  # what the model takes: float in [0, 1]
    model_id = model_registry.log_pytorch_model(client, ctx.exp_id, run_id, model, example, name="model",
                                                tags={**info, **metrics})
    version = model_registry.register_model(client, name, model_id, run_id, {**info, **metrics}, ALIAS)
    tracking.set_tags(client, ctx.parent_id, {schema.TAG_REGISTERED_MODEL: name, schema.TAG_MODEL_VERSION: version})
    return {"name": name, "version": version, "run_id": run_id, "seconds": time.perf_counter() - t0, "new": True}

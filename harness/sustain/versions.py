"""A policy run's models as versions of one registered model: the deployed model is version 1, each update adds one
(tagged with its period, policy, seed and why it fired), and the alias `production` follows the model in service.
On when stream.register_models is true (off by default: see `ALIAS`' note on its cost)."""

from __future__ import annotations

import dataclasses
import time

from harness import data as datamod, model_registry, schema

ALIAS = schema.ALIAS_PRODUCTION
# Cost, measured on the default sustain study (python -m harness.sustain, 2 CPU cores): each version is a pt2 export,
# an upload and a registry write, ~1-3 s; the 3 seeds x 4 policies make ~38 versions, more than the replay's own time
# (README, "Sustainability"). Hence off by default.


@dataclasses.dataclass
class Versions:
    client: object
    exp_id: str
    run_id: str
    name: str  # registered model: <study>-<policy label>-seed<s>
    example: object  # input example: a few clean test images
    tags: dict  # policy, seed
    versions: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def registered_name(study: str, label: str, seed: int) -> str:
    return f"{study}-{label}-seed{seed}"


def start(ctx, run_id: str, label: str, seed: int):
    """A Versions for this policy run, or None when stream.register_models is off."""
    if not getattr(ctx.cfg.stream, "register_models", False):
        return None
    return Versions(ctx.client, ctx.exp_id, run_id, registered_name(ctx.cfg.study.name, label, seed),
                    datamod.pixels(ctx.data_cpu["test"][0][:4]), {schema.TAG_POLICY: label, schema.TAG_SEED: seed})


def trigger(spec: dict, stat, used) -> str:
    """Why the policy updated, in words."""
    if spec["policy"] == "every":
        return f"schedule (every {spec['k']} periods)"
    if stat is None:
        return spec["policy"]
    return f"{spec['policy']} monitor {stat:.4g} > threshold {used:.4g}" if used is not None else \
        f"{spec['policy']} monitor {stat:.4g}"


def register(v: Versions | None, model, period: int, reason: str) -> str | None:
    """Log `model` on the policy run (a LoggedModel at step period + 1; the deployed model: period -1, step 0),
    register it as the next version of v.name and move the alias production onto it. Returns the version."""
    if v is None:
        return None
    t0 = time.perf_counter()
    tags = {**v.tags, schema.MV_PERIOD: period, schema.MV_TRIGGER: reason}
    model_id = model_registry.log_pytorch_model(v.client, v.exp_id, v.run_id, model, v.example,
                                                name=f"model-period{period}" if period >= 0 else "model-deployed",
                                                tags=tags, step=period + 1)
    version = model_registry.register_model(v.client, v.name, model_id, v.run_id, tags, ALIAS)
    v.versions.append(version)
    v.seconds += time.perf_counter() - t0
    return version

"""A trained model in MLflow: a LoggedModel of the pytorch flavour (pt2) on its run, and the versions of a registered
model with an alias that moves. By explicit ids, as harness.tracking writes runs."""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from pathlib import Path

from mlflow.exceptions import MlflowException

from harness import schema


def log_pytorch_model(client, exp_id: str, run_id: str, model, example, name: str = "model",
                      tags: dict | None = None, step: int = 0) -> str:
    """`model` as an MLflow LoggedModel of the pytorch flavour on run `run_id` (its output), with a signature and
    input example from `example` (float32 N x 3 x H x W in [0, 1]; the harness models normalize inside). Returns
    the model id; its URI is models:/<id>.

    mlflow.pytorch.log_model is not used: it resolves the experiment of the new LoggedModel from the fluent state
    (the active run, else the default experiment "0"), not from run_id, so from a client with explicit ids it files
    the model under the wrong experiment. Here: create the LoggedModel in the run's experiment, save the flavour
    to a temporary folder, upload, link it to the run as an output, mark it READY."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model, infer_signature

    model = copy.deepcopy(model).eval().cpu()  # a copy: the caller's model stays on its device and in its mode
    x = example.detach().float().cpu().contiguous()
    with torch.no_grad():
        y = model(x)
    signature = infer_signature(x.numpy(), y.numpy())
    logged = client.create_logged_model(exp_id, name=name, source_run_id=run_id,
                                        tags={k: str(v) for k, v in (tags or {}).items()})
    # pinned requirements: MLflow's inference of them loads the model in a subprocess (seconds per model)
    import torchvision

    reqs = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"torchvision=={torchvision.__version__.split('+')[0]}"]
    env_log = logging.getLogger("mlflow.utils.environment")  # "Failed to resolve installed pip version": uv venvs
    level = env_log.level
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch.export's "No complete tensor found in the group"
        env_log.setLevel(logging.ERROR)
        local = Path(tmp) / "model"
        meta = Model(artifact_path=logged.artifact_location, run_id=run_id, model_uuid=logged.model_id,
                     model_id=logged.model_id)
        try:
            # pt2 (torch.export): a graph, loadable with torch alone (no harness code, no pickle), dynamic batch
            mlflow.pytorch.save_model(model, str(local), mlflow_model=meta, signature=signature,
                                      input_example=x.numpy(), pip_requirements=reqs, serialization_format="pt2")
        finally:
            env_log.setLevel(level)
        client.log_model_artifacts(logged.model_id, str(local))
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=step)])
    client.finalize_logged_model(logged.model_id, "READY")
    return logged.model_id


def register_model(client, name: str, model_id: str, run_id: str, tags: dict, alias: str) -> str:
    """A new version of registered model `name` (created when absent) from LoggedModel `model_id`, with `tags`,
    and `alias` moved onto it. Returns the version."""
    try:
        client.create_registered_model(name, tags={schema.RM_REGISTERED_BY: "harness"})
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
            raise
    # source = the LoggedModel's storage location, not models:/<id>: the sqlite registry resolves a models:/ source
    # through a fresh MlflowClient() on the global tracking URI (an open to-do in MLflow), i.e. ./mlflow.db in the cwd
    source = client.get_logged_model(model_id).artifact_location
    mv = client.create_model_version(name, source=source, run_id=run_id, model_id=model_id,
                                     tags={k: str(v)[:5000] for k, v in tags.items()}, await_creation_for=0)
    client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def alias_version(client, name: str, alias: str):
    """The ModelVersion that `alias` points at, or None (no such model or alias)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None

"""The only MLflow writer: experiment per study, parent run per study, child run per trial, by explicit run ids."""

from __future__ import annotations

import io
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness import store
from harness.config import ROOT

# MlflowClient with explicit run ids, never the fluent active-run stack: that stack is per thread and per
# process, the root of the "Run already active" and lost-parent bugs peers hit (optuna#4088, mlflow#3592).


def experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The study's experiment, created once (by the launcher, before workers start); tolerates a creation race."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = (artifact_root / "artifacts" / name).resolve().as_uri() if artifact_root else None
        try:
            return client.create_experiment(name, artifact_location=location, tags={"harness.study_name": name})
        except MlflowException:
            exp = client.get_experiment_by_name(name)  # another process won the race
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise RuntimeError(f"MLflow experiment {name!r} is deleted; restore it in the UI or choose another "
                           f"--study-name")
    return exp.experiment_id


def parent_run(client: MlflowClient, exp_id: str, study_name: str, role: str = "study") -> tuple[str, bool]:
    """(run id, created): the study's parent run (tag harness.role = study, or sustain for harness.sustain), reused
    and set RUNNING again on resume."""
    runs = client.search_runs([exp_id], f"tags.`harness.role` = '{role}'", max_results=1,
                              order_by=["attributes.start_time ASC"])
    if runs:
        client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id, False
    run = client.create_run(exp_id, run_name=study_name,
                            tags={"harness.role": role, "optuna.study_name": study_name})
    # two machines starting the same study at once may both create one: the earliest wins, the other is deleted
    first = client.search_runs([exp_id], f"tags.`harness.role` = '{role}'", max_results=1,
                               order_by=["attributes.start_time ASC", "attributes.run_id ASC"])[0].info.run_id
    if first != run.info.run_id:
        client.delete_run(run.info.run_id)
        return first, False
    return run.info.run_id, True


def existing_role(uri: str, name: str) -> str | None:
    """'study' or 'sustain': what the MLflow experiment `name` already holds (None if nothing), read without
    creating a store. A study and a sustain study must not share an experiment."""
    path = store.sqlite_path(uri)
    if path is not None and not path.is_file():
        return None
    client = store.connect(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return None
    for role in ("study", "sustain"):
        if client.search_runs([exp.experiment_id], f"tags.`harness.role` = '{role}'", max_results=1):
            return role
    if client.search_runs([exp.experiment_id], "tags.`harness.role` = 'trial'", max_results=1):
        return "study"
    return None


def child_run(client, exp_id, parent_id, study_name, number, params: dict, tags: dict = None) -> str:
    """A trial's run, created when the trial starts, so its curves are visible while it trains."""
    run = client.create_run(exp_id, run_name=f"trial-{number:04d}", tags={
        "mlflow.parentRunId": parent_id, "harness.role": "trial", "optuna.study_name": study_name,
        "optuna.trial_number": str(number), **(tags or {})})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def replicate_run(client, exp_id, parent_id, study_name, number: int, seed: int, params: dict, baseline: str) -> str:
    """A seed replicate of trial `number` (harness.trial.replicate): run name trial-NNNN-seedS, role replicate, tags
    harness.replicate_of and harness.seed, no optuna.trial_number (it is no Optuna trial and counts toward none)."""
    tags = {"mlflow.parentRunId": parent_id, "harness.role": "replicate", "optuna.study_name": study_name,
            "harness.replicate_of": str(number), "harness.seed": str(seed)}
    if baseline:
        tags["harness.baseline"] = baseline
    run = client.create_run(exp_id, run_name=f"trial-{number:04d}-seed{seed}", tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def log_metrics(client, run_id: str, metrics: dict, step: int = 0, series: dict | None = None,
                wait: bool = True) -> None:
    """Many metrics in one request (MLflow caps a batch at 1000): `metrics` at `step`, and `series`
    {key: {step: value}} such as shift/<name>/acc by severity. Each request costs ~7-11 ms on sqlite here: a trial's
    ~30 final keys one by one cost ~5% of a default trial, in one batch well under 1%. wait=False (per-epoch
    metrics) hands the batch to a logging thread, off the training loop; flush() or end_run() waits for it."""
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
    items += [Metric(k, float(v), now, int(s)) for k, vals in (series or {}).items() for s, v in vals.items()]
    if wait:
        client.flush(run_id)
    for i in range(0, len(items), 1000):
        if wait:
            client.log_batch(run_id, metrics=items[i:i + 1000])
        else:
            client.log_batch_later(run_id, items[i:i + 1000])


def log_steps(client, run_id: str, key: str, values: dict) -> None:
    """One metric at many steps, e.g. shift/<name>/acc with step = severity."""
    now = int(time.time() * 1000)
    items = [Metric(key, float(v), now, int(s)) for s, v in values.items()]
    client.log_batch(run_id, metrics=items)


def set_tags(client, run_id: str, tags: dict) -> None:
    # tag values are capped at 5000 characters by MLflow
    client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def log_params(client, run_id: str, params: dict) -> None:
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def end_run(client, run_id: str, status: str, tags: dict = None) -> None:
    """FINISHED (completed), KILLED (pruned), FAILED (error); tags say why. Pending async batches are waited for
    first; if one failed, the run still ends, with the error in the tag harness.logging_error."""
    try:
        client.flush(run_id)
    except Exception as e:
        tags = {**(tags or {}), "harness.logging_error": f"{type(e).__name__}: {e}"}
    if tags:
        set_tags(client, run_id, tags)
    client.set_terminated(run_id, status=status)


def log_text(client, run_id: str, text: str, path: str) -> None:
    client.log_text(run_id, text, path)


def log_bytes(client, run_id: str, data: bytes, path: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / Path(path).name
        file.write_bytes(data)
        client.log_artifact(run_id, str(file), str(Path(path).parent) if "/" in path else None)


def log_figure(client, run_id: str, figure, path: str) -> None:
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    log_bytes(client, run_id, buf.getvalue(), path)


def running_children(client, exp_id: str, parent_id: str) -> list[tuple[int, str]]:
    """(trial number, run id) of the parent's child runs still RUNNING (bookkeeping for crash recovery)."""
    runs = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'",
                              max_results=10000)
    return [(int(r.data.tags.get("optuna.trial_number", -1)), r.info.run_id) for r in runs]


def replicate_runs(client, exp_id: str, parent_id: str) -> list[dict]:
    """The parent's replicate runs: [{"run_id", "status", "of" (source trial number), "seed"}]."""
    runs = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}' and tags.`harness.role` = 'replicate'",
                              max_results=10000)
    return [{"run_id": r.info.run_id, "status": r.info.status, "of": int(r.data.tags["harness.replicate_of"]),
             "seed": int(r.data.tags["harness.seed"])} for r in runs]


def fail_runs(client, run_ids: list[str], reason: str) -> None:
    """End runs FAILED whatever their status: their trial failed in Optuna (its worker died), and a kill between
    the run's end and Optuna's tell may have left the run FINISHED. Optuna's state is the truth."""
    for run_id in run_ids:
        try:
            end_run(client, run_id, "FAILED", {"harness.fail_reason": reason})
        except MlflowException:
            pass  # the run never got created: nothing to clean


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def versions() -> dict:
    import mlflow
    import numpy
    import optuna
    import torch
    import torchvision

    out = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "optuna": optuna.__version__, "mlflow": mlflow.__version__, "numpy": numpy.__version__,
           "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def log_json(client, run_id: str, obj, path: str) -> None:
    client.log_text(run_id, json.dumps(obj, indent=2, sort_keys=True, default=str), path)

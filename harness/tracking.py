"""The MLflow writer of runs: experiment per study, parent run per study, child run per trial, by explicit run ids."""

from __future__ import annotations

import dataclasses
import io
import json
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness import schema, store
from harness.config import ROOT

# MlflowClient with explicit run ids, never the fluent active-run stack: that stack is per thread and per
# process, the root of the "Run already active" and lost-parent bugs peers hit (optuna#4088, mlflow#3592).


def experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The study's experiment, created once (by the launcher, before workers start); tolerates a creation race."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = (artifact_root / "artifacts" / name).resolve().as_uri() if artifact_root else None
        try:
            return client.create_experiment(name, artifact_location=location, tags={schema.TAG_STUDY_NAME: name,
                                                                                   EXPERIMENT_KIND: "finetuning"})
        except MlflowException:
            exp = client.get_experiment_by_name(name)  # another process won the race
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise RuntimeError(f"MLflow experiment {name!r} is deleted; restore it in the UI or choose another "
                           f"--study-name")
    if EXPERIMENT_KIND not in exp.tags:  # made before the kind was tagged
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, "finetuning")
    return exp.experiment_id


def parent_run(client: MlflowClient, exp_id: str, study_name: str, role: str = schema.ROLE_STUDY) -> tuple[str, bool]:
    """(run id, created): the study's parent run (tag harness.role = study, or sustain for harness.sustain), reused
    and set RUNNING again on resume."""
    runs = client.search_runs([exp_id], f"tags.`{schema.TAG_ROLE}` = '{role}'", max_results=1,
                              order_by=["attributes.start_time ASC"])
    if runs:
        client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id, False
    run = client.create_run(exp_id, run_name=study_name,
                            tags={schema.TAG_ROLE: role, schema.TAG_OPTUNA_STUDY: study_name})
    # two machines starting the same study at once may both create one: the earliest wins, the other is deleted
    first = client.search_runs([exp_id], f"tags.`{schema.TAG_ROLE}` = '{role}'", max_results=1,
                               order_by=["attributes.start_time ASC", "attributes.run_id ASC"])[0].info.run_id
    if first != run.info.run_id:
        client.delete_run(run.info.run_id)
        return first, False
    return run.info.run_id, True


def existing_experiment(uri: str, name: str):
    """(client, experiment) of the MLflow experiment `name` in the tracking store `uri`, or None when the store or the
    experiment does not exist; read without creating a store (a missing sqlite file stays missing)."""
    path = store.sqlite_path(uri)
    if path is not None and not path.is_file():
        return None
    client = store.connect(uri)
    exp = client.get_experiment_by_name(name)
    return None if exp is None else (client, exp)


def existing_role(uri: str, name: str) -> str | None:
    """'study' or 'sustain': what the MLflow experiment `name` already holds (None if nothing), read without
    creating a store. A study and a sustain study must not share an experiment."""
    found = existing_experiment(uri, name)
    if found is None:
        return None
    client, exp = found
    for role in (schema.ROLE_STUDY, schema.ROLE_SUSTAIN):
        if client.search_runs([exp.experiment_id], f"tags.`{schema.TAG_ROLE}` = '{role}'", max_results=1):
            return role
    if client.search_runs([exp.experiment_id], f"tags.`{schema.TAG_ROLE}` = '{schema.ROLE_TRIAL}'", max_results=1):
        return schema.ROLE_STUDY
    return None


def child_run(client, exp_id, parent_id, study_name, number, params: dict, tags: dict = None) -> str:
    """A trial's run, created when the trial starts, so its curves are visible while it trains."""
    run = client.create_run(exp_id, run_name=f"trial-{number:04d}", tags={
        schema.TAG_PARENT_RUN: parent_id, schema.TAG_ROLE: schema.ROLE_TRIAL, schema.TAG_OPTUNA_STUDY: study_name,
        schema.TAG_TRIAL_NUMBER: str(number), **(tags or {})})
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def replicate_run(client, exp_id, parent_id, study_name, number: int, seed: int, params: dict, baseline: str) -> str:
    """A seed replicate of trial `number` (harness.trial.replicate): run name trial-NNNN-seedS, role replicate, tags
    harness.replicate_of and harness.seed, no optuna.trial_number (it is no Optuna trial and counts toward none)."""
    tags = {schema.TAG_PARENT_RUN: parent_id, schema.TAG_ROLE: schema.ROLE_REPLICATE,
            schema.TAG_OPTUNA_STUDY: study_name, schema.TAG_REPLICATE_OF: str(number), schema.TAG_SEED: str(seed)}
    if baseline:
        tags[schema.TAG_BASELINE] = baseline
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
    # tag values are capped at 5000 characters by MLflow; every value redacted (a fail reason may quote a URL)
    client.log_batch(run_id, tags=[RunTag(k, store.redact(str(v))[:5000]) for k, v in tags.items()])


def log_params(client, run_id: str, params: dict) -> None:
    items = [Param(k, store.redact(str(v))[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def end_run(client, run_id: str, status: str, tags: dict = None) -> None:
    """FINISHED (completed), KILLED (pruned), FAILED (error); tags say why. Pending async batches are waited for
    first; if one failed, the run still ends, with the error in the tag harness.logging_error."""
    try:
        client.flush(run_id)
    except Exception as e:
        tags = {**(tags or {}), schema.TAG_LOGGING_ERROR: f"{type(e).__name__}: {e}"}
    if tags:
        set_tags(client, run_id, tags)
    client.set_terminated(run_id, status=status)


def log_text(client, run_id: str, text: str, path: str) -> None:
    """A text artifact, redacted: the config (config/resolved.toml, config/invocations/*.toml) carries the storage
    and tracking URIs, the report quotes them."""
    client.log_text(run_id, store.redact(text), path)


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
    runs = client.search_runs([exp_id], f"tags.`{schema.TAG_PARENT_RUN}` = '{parent_id}' "
                                          "and attributes.status = 'RUNNING'", max_results=10000)
    return [(int(r.data.tags.get(schema.TAG_TRIAL_NUMBER, -1)), r.info.run_id) for r in runs]


def replicate_runs(client, exp_id: str, parent_id: str) -> list[dict]:
    """The parent's replicate runs: [{"run_id", "status", "of" (source trial number), "seed"}]."""
    runs = client.search_runs([exp_id], f"tags.`{schema.TAG_PARENT_RUN}` = '{parent_id}' and "
                                          f"tags.`{schema.TAG_ROLE}` = '{schema.ROLE_REPLICATE}'", max_results=10000)
    return [{"run_id": r.info.run_id, "status": r.info.status, "of": int(r.data.tags[schema.TAG_REPLICATE_OF]),
             "seed": int(r.data.tags[schema.TAG_SEED])} for r in runs]


def fail_runs(client, run_ids: list[str], reason: str) -> None:
    """End runs FAILED whatever their status: their trial failed in Optuna (its worker died), and a kill between
    the run's end and Optuna's tell may have left the run FINISHED. Optuna's state is the truth."""
    for run_id in run_ids:
        try:
            end_run(client, run_id, "FAILED", {schema.TAG_FAIL_REASON: reason})
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
    log_text(client, run_id, json.dumps(obj, indent=2, sort_keys=True, default=str), path)


# ------------------------------------------------------------------------------------ MLflow-native records
# Dataset inputs, system metrics and descriptions, all by explicit ids as above (models and their versions:
# harness.model_registry).

DESCRIPTION = schema.TAG_NOTE  # the run's description in the MLflow UI (markdown)
EXPERIMENT_KIND = schema.TAG_EXPERIMENT_KIND  # the UI opens a "finetuning" experiment on its runs, not on GenAI traces


def set_description(client, run_id: str, text: str) -> None:
    set_tags(client, run_id, {DESCRIPTION: text})


def set_experiment_kind(client, exp_id: str, kind: str = "finetuning") -> None:
    """Tag the experiment with its kind once (experiments made before this tag existed get it on the next open)."""
    if client.get_experiment(exp_id).tags.get(EXPERIMENT_KIND) != kind:
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND, kind)


def dataset_input(name: str, digest: str, source: str, context: str, tags: dict | None = None, shape=None):
    """One MLflow dataset input: `name` and `digest` (content hash) as the UI's dataset column shows them, `source`
    (a path or dataset name), `context` (mlflow.data.context: train, validation, test, or a shifted set) and extra
    input tags (shift, severity, seed, target shift)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    schema_json = json.dumps({"mlflow_tensorspec": {"features": json.dumps(
        [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": list(shape)}}]) if shape else None}})
    ds = Dataset(name=name, digest=digest, source_type="local" if "/" in source else "code",
                 source=json.dumps({"uri": source} if "/" in source else {"tags": {"name": source}}),
                 schema=schema_json if shape else None)
    input_tags = [InputTag(schema.INPUT_CONTEXT, context)]
    input_tags += [InputTag(k, str(v)) for k, v in (tags or {}).items()]
    return DatasetInput(ds, tags=input_tags)


# MLflow's log_inputs reads which datasets its experiment has, then inserts the missing ones in one transaction;
# two processes logging the same new datasets at once (two launchers on a fresh store, two workers) both insert and
# the second fails on the unique key (experiment, name, digest). Its transaction is rolled back whole, and a retry
# finds the winner's rows. Each backend's words for that key: sqlite, PostgreSQL, MySQL.
_DUPLICATE = ("UNIQUE constraint failed", "duplicate key value violates unique constraint", "Duplicate entry")
INPUT_RETRIES = 5


def log_inputs(client, run_id: str, inputs: list) -> None:
    """Every dataset input of a run in one request (a trial's ~60: one call); a lost insert race is retried."""
    for attempt in range(INPUT_RETRIES if inputs else 0):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as e:
            if attempt == INPUT_RETRIES - 1 or not any(d in str(e) for d in _DUPLICATE):
                raise
            time.sleep(0.05 * (attempt + 1))


SYSTEM_INTERVAL = 10.0  # seconds between system-metric samples (study.system_metrics); one request per sample


@dataclasses.dataclass
class SystemSampler:
    """CPU, memory and (CUDA) GPU utilization of this machine, sampled on a thread of its own every `interval` s
    and logged as system/* metrics on run_id (MLflow's names, so its UI's system-metrics tab shows them). MLflow's
    own SystemMetricsMonitor is not used: it drops the samples of its last interval on stop, so a trial shorter than
    the interval (every default trial: 1-5 s) got none, and it polls get_run every sample. Here stop() logs a final
    sample covering the time since the last one: every run has at least one."""
    client: object
    run_id: str
    interval: float
    gpu: bool = False
    step: int = 0
    stop_event: threading.Event = dataclasses.field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    seconds: float = 0.0  # time spent sampling and logging (overhead, harness.bench)


def _sample(s: SystemSampler) -> None:
    import psutil

    t0 = time.perf_counter()
    vm = psutil.virtual_memory()
    m = {schema.SYSTEM_CPU_PERCENT: psutil.cpu_percent(None),  # since the previous call
         schema.SYSTEM_MEMORY_MB: (vm.total - vm.available) / 2**20,
         schema.SYSTEM_MEMORY_PERCENT: vm.percent,
         schema.SYSTEM_PROCESS_RSS_MB: psutil.Process().memory_info().rss / 2**20}
    if s.gpu:
        import torch

        try:
            m[schema.SYSTEM_GPU_PERCENT] = float(torch.cuda.utilization(0))  # needs pynvml
        except Exception:
            pass
        free, total = torch.cuda.mem_get_info(0)
        m[schema.SYSTEM_GPU_MEMORY_MB] = (total - free) / 2**20
        m[schema.SYSTEM_GPU_MEMORY_PERCENT] = 100.0 * (total - free) / total
    now = int(time.time() * 1000)
    s.client.log_batch(s.run_id, metrics=[Metric(k, float(v), now, s.step) for k, v in m.items()])
    s.step += 1
    s.seconds += time.perf_counter() - t0


def start_system_metrics(client, run_id: str, interval: float = SYSTEM_INTERVAL, gpu: bool = False):
    """A started SystemSampler on run_id, or None when interval <= 0 (off)."""
    if interval <= 0:
        return None
    import psutil

    psutil.cpu_percent(None)  # primes the counter: the first sample then covers the time since now
    s = SystemSampler(client, run_id, interval, gpu)

    def loop():
        while not s.stop_event.wait(s.interval):
            try:
                _sample(s)
            except Exception:  # a lost sample is no reason to disturb the trial
                pass

    s.thread = threading.Thread(target=loop, daemon=True, name="harness-system-metrics")
    s.thread.start()
    return s


def stop_system_metrics(s) -> float:
    """Stop the sampler, log the final sample; returns the seconds its sampling cost (0 when off)."""
    if s is None or s.thread is None:  # off, or stopped already (a trial stops it before its run ends)
        return 0.0 if s is None else s.seconds
    s.stop_event.set()
    s.thread.join()
    s.thread = None
    try:
        _sample(s)
    except Exception:
        pass
    return s.seconds

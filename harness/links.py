"""URLs into the MLflow UI (3.x hash routes, read from its bundle's route table): a run, an experiment's runs view,
a comparison of runs, an artifact. Pure: no MLflow import."""

from __future__ import annotations

import json
import urllib.parse

from harness import schema, store

HOST = "127.0.0.1"
PORT = 5000  # harness.ui's default


def ui_base(tracking_uri: str, ui_url: str | None = None) -> str | None:
    """The UI's base URL: --ui-url when given, else an http(s) tracking URI (a tracking server serves the UI), else
    None (a sqlite store has no UI until `python -m harness.ui` serves one)."""
    if ui_url:
        return ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return store.split_userinfo(tracking_uri)[0].rstrip("/")  # the browser asks for the credentials
    return None


def local_base(port: int = PORT) -> str:
    """The UI `python -m harness.ui --port N` serves."""
    return f"http://{HOST}:{port}"


def run_url(base: str, exp_id: str, run_id: str, tab: str = "") -> str:
    """A run's page; tab: "" (overview), "system-metrics", "model-metrics", "artifacts"."""
    return f"{base}/#/experiments/{exp_id}/runs/{run_id}" + (f"/{tab}" if tab else "") + f"?{MODEL_TRAINING}"


def artifact_url(base: str, exp_id: str, run_id: str, path: str) -> str:
    return f"{base}/#/experiments/{exp_id}/runs/{run_id}/artifactPath/{urllib.parse.quote(path)}"


# MLflow 3.17's UI reads its GenAI / Model-training switch from ?workflowType= (else from the browser's storage,
# GenAI by default, which opens experiments on a traces overview), not from the experiment's mlflow.experimentKind
MODEL_TRAINING = "workflowType=machine_learning"


def runs_url(base: str, exp_id: str, study_name: str, order_by: str = schema.VAL_ACC_FINAL) -> str:
    """The experiment's runs view in Model-training mode with the parent and every trial listed, best first. The runs
    table nests child runs under a collapsed parent when it is sorted by start time (its default, even with a search
    filter): filtered on the study's tag (parent and trials carry it) and sorted by the metric `order_by`, descending,
    it lists them all, flat, the selected trial on top."""
    q = urllib.parse.quote(f"tags.`optuna.study_name` = '{study_name}'", safe="")
    order = urllib.parse.quote(f"metrics.`{order_by}`", safe="")
    return (f"{base}/#/experiments/{exp_id}/runs?{MODEL_TRAINING}&searchFilter={q}&orderByKey={order}"
            f"&orderByAsc=false")


def compare_url(base: str, exp_id: str, run_ids: list[str]) -> str:
    """MLflow's compare-runs page for these runs (params, metrics, parallel coordinates)."""
    runs = urllib.parse.quote(json.dumps(list(dict.fromkeys(run_ids)), separators=(",", ":")), safe="")
    exps = urllib.parse.quote(json.dumps([exp_id], separators=(",", ":")), safe="")
    return f"{base}/#/compare-runs?runs={runs}&experiments={exps}&{MODEL_TRAINING}"

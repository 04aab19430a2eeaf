"""URLs into the MLflow UI (3.x hash routes, read from its bundle's route table): a run, an experiment's runs view,
a comparison of runs, an artifact. Pure: no MLflow import."""

from __future__ import annotations

import json
import urllib.parse

from harness import store

HOST = "127.0.0.1"
PORT = 5000  # harness.ui's default


def ui_base(tracking_uri: str, ui_url: str | None = None) -> str | None:
    """The UI's base URL: --ui-url when given, else an http(s) tracking URI (a tracking server serves the UI), else
    None (a sqlite store has no UI until `python -m harness.ui` serves one)."""
    if ui_url:
        return ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return store.redact(tracking_uri).rstrip("/")
    return None


def local_base(port: int = PORT) -> str:
    """The UI `python -m harness.ui --port N` serves."""
    return f"http://{HOST}:{port}"


def run_url(base: str, exp_id: str, run_id: str, tab: str = "") -> str:
    """A run's page; tab: "" (overview), "system-metrics", "model-metrics", "artifacts"."""
    return f"{base}/#/experiments/{exp_id}/runs/{run_id}" + (f"/{tab}" if tab else "")


def artifact_url(base: str, exp_id: str, run_id: str, path: str) -> str:
    return f"{base}/#/experiments/{exp_id}/runs/{run_id}/artifactPath/{urllib.parse.quote(path)}"


def runs_url(base: str, exp_id: str, study_name: str) -> str:
    """The experiment's runs view with the parent and every trial listed (not the GenAI overview). The runs table
    nests child runs under a collapsed parent unless a search filter is set; filtering on the study's tag, which the
    parent and every trial carry, lists them all, flat."""
    q = urllib.parse.quote(f"tags.`optuna.study_name` = '{study_name}'", safe="")
    return f"{base}/#/experiments/{exp_id}/runs?searchFilter={q}"


def compare_url(base: str, exp_id: str, run_ids: list[str]) -> str:
    """MLflow's compare-runs page for these runs (params, metrics, parallel coordinates)."""
    runs = urllib.parse.quote(json.dumps(list(dict.fromkeys(run_ids)), separators=(",", ":")), safe="")
    exps = urllib.parse.quote(json.dumps([exp_id], separators=(",", ":")), safe="")
    return f"{base}/#/compare-runs?runs={runs}&experiments={exps}"

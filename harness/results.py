"""The only MLflow reader: a study's parent run, trial runs, metric curves, Optuna trials and sustain policy runs as
plain dicts."""

from __future__ import annotations

import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness import schema, store

# Run status -> trial state, as harness/tracking.py writes them (DESIGN §6).
STATES = {"FINISHED": "complete", "KILLED": "pruned", "FAILED": "failed", "RUNNING": "running",
          "SCHEDULED": "running"}
# Small artifacts of the parent run that the report shows; anything else is listed, not read.
TEXT_ARTIFACTS = ("config/resolved.toml", "versions.json", "search_space.json", schema.BASELINE_GRID_ARTIFACT,
                  schema.WISE_FT_ARTIFACT)
# One get_metric_history call per (run, key): ~1 ms on sqlite, ~10 ms over HTTP; 8 threads keep a
# 12-trial default study (~60 keys a run) at a second or two over HTTP.
THREADS = 8


class StudyNotFound(LookupError):
    """The tracking store has no experiment or parent run for this study, or there is no store at all (bad input:
    exit 2)."""


def study_names(client: MlflowClient) -> list[str]:
    """Experiments that hold a harness study (for 'did you mean' messages)."""
    try:
        return sorted(e.name for e in client.search_experiments(max_results=1000)
                      if schema.tag(e.tags, schema.TAG_STUDY_NAME))
    except MlflowException:
        return []


def _role_filter(role: str) -> str:
    return f"tags.`{schema.TAG_ROLE}` = '{role}'"


def find_parent(client: MlflowClient, study_name: str):
    """(experiment, parent run) of a study, or StudyNotFound naming the studies that do exist."""
    exp = client.get_experiment_by_name(study_name)
    runs = []
    if exp is not None and exp.lifecycle_stage == "active":
        runs = client.search_runs([exp.experiment_id], _role_filter(schema.ROLE_STUDY), max_results=1,
                                  order_by=["attributes.start_time ASC"])
        if not runs:  # a harness.sustain study (see the sustainability block at the end)
            runs = client.search_runs([exp.experiment_id], _role_filter(schema.ROLE_SUSTAIN), max_results=1,
                                      order_by=["attributes.start_time ASC"])
    if not runs:
        known = study_names(client)
        hint = f"; studies in this store: {', '.join(repr(n) for n in known)}" if known else "; the store has no study"
        raise StudyNotFound(f"study {study_name!r} not found{hint}")
    return exp, runs[0]


def artifact(client: MlflowClient, run_id: str, path: str) -> bytes | None:
    """One artifact's bytes, or None when it is absent."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except (MlflowException, OSError):
            return None
        p = Path(local)
        return p.read_bytes() if p.is_file() else None


def _texts(client, run_id: str, arts, paths) -> dict:
    """{path: text (None when unreadable)} for those of `paths` the run holds."""
    out = {}
    for path in paths:
        if path in arts:
            raw = artifact(client, run_id, path)
            out[path] = raw.decode("utf-8", "replace") if raw is not None else None
    return out


def _list_artifacts(client: MlflowClient, run_id: str, folder: str | None = None, depth: int = 3) -> list[str]:
    out = []
    try:
        items = client.list_artifacts(run_id, folder)
    except (MlflowException, OSError):
        return out
    for a in items:
        if a.is_dir and depth > 0:
            out += _list_artifacts(client, run_id, a.path, depth - 1)
        elif not a.is_dir:
            out.append(a.path)
    return out


def _typed(value: str):
    """MLflow params are strings; lr/freeze_layers/unfreeze_epoch come back as numbers."""
    for cast in (int, float):
        try:
            return cast(value)
        except (TypeError, ValueError):
            pass
    return value


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    hist = client.get_metric_history(run_id, key)
    # a key logged twice at one step (a resumed trial) keeps its latest value, as the MLflow UI does
    latest = {}
    for m in sorted(hist, key=lambda m: (m.step, m.timestamp)):
        latest[m.step] = m.value
    return sorted(latest.items())


def _trial(run, curves: dict) -> dict:
    tags = dict(run.data.tags)
    number, of, seed = (schema.tag(tags, schema.TAG_TRIAL_NUMBER), schema.tag(tags, schema.TAG_REPLICATE_OF, ""),
                        schema.tag(tags, schema.TAG_SEED, ""))
    return {"number": int(number) if number is not None and number.isdigit() else None,
            "run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
            "state": STATES.get(run.info.status, run.info.status.lower()),
            "baseline": schema.tag(tags, schema.TAG_BASELINE, ""),
            "role": schema.tag(tags, schema.TAG_ROLE, schema.ROLE_TRIAL),
            "replicate_of": int(of) if of.isdigit() else None,
            "seed": int(seed) if seed.isdigit() else None,
            "params": {k: _typed(v) for k, v in run.data.params.items()},
            "metrics": dict(run.data.metrics),  # the latest value of every key (MLflow's own summary)
            "curves": curves,  # key -> [(step, value)]: epochs for train/val keys, severities for shift/*
            "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.")},
            "start_time": run.info.start_time, "end_time": run.info.end_time}


def _children(client: MlflowClient, exp_id: str, parent_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], f"tags.{schema.TAG_PARENT_RUN} = '{parent_id}'", max_results=1000,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def trials(client: MlflowClient, exp_id: str, parent_id: str) -> list[dict]:
    """Every child run of the parent (trials and seed replicates), with its full metric histories and, for FINISHED
    runs, its per-image correctness (correct.json, None when absent) and on validation (val_correct.json), ordered by trial number (replicates last)."""
    runs = _children(client, exp_id, parent_id)
    jobs = [(r.info.run_id, k) for r in runs for k in r.data.metrics]
    finished = [r.info.run_id for r in runs if r.info.status == "FINISHED"]
    with ThreadPoolExecutor(THREADS) as pool:
        hists = dict(zip(jobs, pool.map(lambda j: _history(client, *j), jobs)))
        correct = dict(zip(finished, pool.map(
            lambda rid: _json_or_none(artifact(client, rid, schema.CORRECT_ARTIFACT)), finished)))
        val_correct = dict(zip(finished, pool.map(
            lambda rid: _json_or_none(artifact(client, rid, schema.VAL_CORRECT_ARTIFACT)), finished)))
    out = [{**_trial(r, {k: hists[(r.info.run_id, k)] for k in r.data.metrics}), "correct": correct.get(r.info.run_id),
            "val_correct": val_correct.get(r.info.run_id)} for r in runs]
    return sorted(out, key=lambda t: (t["number"] is None, t["number"] if t["number"] is not None else 0,
                                      t["seed"] or 0))


def optuna_study(study_name: str, storage: str | None) -> dict:
    """The Optuna side, when its storage is reachable: directions and trials (states, values, params,
    distributions, user attrs). Never creates a storage: a missing sqlite file is reported, not made."""
    if not storage:
        return {"available": False, "error": "no Optuna storage given"}
    path = store.sqlite_path(storage)
    if path is not None and not path.is_file():
        return {"available": False, "error": f"no Optuna storage at {path}"}
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=study_name, storage=storage)
        frozen = study.get_trials(deepcopy=False)
    except Exception as e:  # KeyError (no such study), SQLAlchemy errors, a dead server: the report goes on
        return {"available": False, "error": f"{type(e).__name__}: {e}"}
    return {"available": True, "error": None,
            "directions": [d.name.lower() for d in study.directions],
            "trials": [{"number": t.number, "state": t.state.name.lower(), "values": t.values,
                        "params": dict(t.params), "distributions": dict(t.distributions),
                        "user_attrs": dict(t.user_attrs)} for t in frozen]}


def load(study_name: str, tracking_uri: str, storage: str | None = None) -> dict:
    """A study read back into plain Python: {"name", "tracking_uri", "experiment_id", "parent": {run_id, status,
    start_time, end_time, tags, params, metrics, curves, artifacts: [paths], texts: {path: str}, shift_examples:
    PNG bytes or None}, "trials": [...] (see _trial), "optuna": {...} (see optuna_study)}.
    Raises StudyNotFound for an unknown study or a missing sqlite store. A harness.sustain study comes back from
    load_sustain instead (its "kind" is "sustain")."""
    try:
        client = store.connect(tracking_uri, existing=True)
    except store.StoreNotFound as e:  # the wrong path, to the user: a study that is not there
        raise StudyNotFound(*e.args) from None
    exp, parent = find_parent(client, study_name)
    if schema.tag(parent.data.tags, schema.TAG_ROLE) == schema.ROLE_SUSTAIN:
        return load_sustain(client, exp, parent, study_name, tracking_uri)
    pid = parent.info.run_id
    arts = _list_artifacts(client, pid)
    texts = _texts(client, pid, arts, TEXT_ARTIFACTS)
    runs = trials(client, exp.experiment_id, pid)
    pretrain = [p for p in arts if p.startswith("pretrain/") and p.endswith(".json")]
    if pretrain:
        raw = artifact(client, pid, pretrain[-1])
        texts[pretrain[-1]] = raw.decode("utf-8", "replace") if raw is not None else None
    return {
        "name": study_name, "tracking_uri": store.redact(tracking_uri), "experiment_id": exp.experiment_id,
        "parent": {"run_id": pid, "status": parent.info.status, "start_time": parent.info.start_time,
                   "end_time": parent.info.end_time, "tags": dict(parent.data.tags),
                   "params": dict(parent.data.params), "metrics": dict(parent.data.metrics),
                   "curves": {k: _history(client, pid, k) for k in parent.data.metrics},
                   "artifacts": arts, "texts": texts,
                   "shift_examples": artifact(client, pid, "shift_examples.png") if "shift_examples.png" in arts else None},
        "trials": [t for t in runs if t["role"] not in (schema.ROLE_REPLICATE, schema.ROLE_SOUP, schema.ROLE_BUDGET)],
        "soups": [t for t in runs if t["role"] == schema.ROLE_SOUP],  # harness.soups' runs
        # seed replicates (harness.trial.replicate)
        "replicates": [t for t in runs if t["role"] == schema.ROLE_REPLICATE],
        "budgets": [t for t in runs if t["role"] == schema.ROLE_BUDGET],  # label budgets (harness.budgets)
        "optuna": optuna_study(study_name, storage),
    }


# ===================================================================================================== sustainability
# harness.sustain studies (DESIGN §8): a parent run tagged harness.role=sustain and one child run per (policy, seed),
# tagged harness.role=sustain_policy, with per-period curves (step = period) and an accuracy_matrix.json artifact.
# load_sustain reads them back (load() hands sustain parents to it); sustain_numbers.summarize_sustain makes the
# report's numbers.

SUSTAIN_TEXTS = ("config/resolved.toml", "versions.json", "stream.json", "summary.json", "search_space.json",
                 "deployed.json")


def _json_or_none(raw: bytes | None):
    try:
        return json.loads(raw) if raw is not None else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _policy_run(run, curves: dict, matrix) -> dict:
    tags = dict(run.data.tags)
    seed, number = schema.tag(tags, schema.TAG_SEED, ""), schema.tag(tags, schema.TAG_TRIAL_NUMBER, "")
    return {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
            "state": STATES.get(run.info.status, run.info.status.lower()),
            "label": schema.tag(tags, schema.TAG_POLICY, schema.param(run.data.params, schema.PARAM_POLICY, "?")),
            "seed": int(seed) if seed.isdigit() else None,
            "trial": int(number) if number.isdigit() else None,  # -1 (not a search trial) is not a digit string
            "params": {k: _typed(v) for k, v in run.data.params.items()}, "metrics": dict(run.data.metrics),
            "curves": curves, "matrix": matrix, "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.")},
            "start_time": run.info.start_time, "end_time": run.info.end_time}


def load_sustain(client: MlflowClient, exp, parent, study_name: str, tracking_uri: str) -> dict:
    """A sustain study read back: {"kind": "sustain", "name", "tracking_uri", "experiment_id", "parent": {run_id,
    status, start_time, end_time, tags, params, artifacts, texts}, "runs": [see _policy_run]}; the accuracy matrix
    is read for FINISHED runs only (a failed run has none)."""
    pid = parent.info.run_id
    arts = _list_artifacts(client, pid)
    texts = _texts(client, pid, arts, SUSTAIN_TEXTS)
    runs = _children(client, exp.experiment_id, pid)
    jobs = [(r.info.run_id, k) for r in runs for k in schema.PERIOD if k in r.data.metrics]
    finished = [r.info.run_id for r in runs if r.info.status == "FINISHED"]
    with ThreadPoolExecutor(THREADS) as pool:
        hists = dict(zip(jobs, pool.map(lambda j: _history(client, *j), jobs)))
        matrices = dict(zip(finished, pool.map(
            lambda rid: _json_or_none(artifact(client, rid, schema.MATRIX_ARTIFACT)), finished)))
    out = [_policy_run(r, {k: hists[(r.info.run_id, k)] for k in schema.PERIOD if (r.info.run_id, k) in hists},
                       matrices.get(r.info.run_id)) for r in runs]
    return {"kind": "sustain", "name": study_name, "tracking_uri": store.redact(tracking_uri), "experiment_id": exp.experiment_id,
            "parent": {"run_id": pid, "status": parent.info.status, "start_time": parent.info.start_time,
                       "end_time": parent.info.end_time, "tags": dict(parent.data.tags),
                       "params": dict(parent.data.params), "artifacts": arts, "texts": texts},
            "runs": sorted(out, key=lambda r: r["start_time"] or 0)}

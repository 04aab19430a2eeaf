"""The only MLflow reader: a study's parent run, trial runs, metric curves and Optuna trials as plain dicts."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import NormalDist

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

# Run status -> trial state, as harness/tracking.py writes them (DESIGN §6).
STATES = {"FINISHED": "complete", "KILLED": "pruned", "FAILED": "failed", "RUNNING": "running",
          "SCHEDULED": "running"}
# Small artifacts of the parent run that the report shows; anything else is listed, not read.
TEXT_ARTIFACTS = ("config/resolved.toml", "versions.json", "search_space.json")
# One get_metric_history call per (run, key): ~1 ms on sqlite, ~10 ms over HTTP; 8 threads keep a
# 12-trial default study (~60 keys a run) at a second or two over HTTP.
THREADS = 8


class StudyNotFound(LookupError):
    """The tracking store has no experiment or parent run for this study (bad input: exit 2)."""


def default_tracking_uri(cwd: Path | None = None) -> str:
    return f"sqlite:///{((cwd or Path.cwd()) / 'mlruns' / 'mlflow.db').resolve()}"


def default_storage(cwd: Path | None = None) -> str:
    return f"sqlite:///{((cwd or Path.cwd()) / 'mlruns' / 'optuna.db').resolve()}"


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:/// URI (None for any other scheme)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def connect(tracking_uri: str) -> MlflowClient:
    """A client on an existing store. A missing sqlite file is an error here: MLflow would silently create an
    empty database, and the user would read 'unknown study' instead of 'wrong path'."""
    path = sqlite_path(tracking_uri)
    if path is not None and not path.is_file():
        raise StudyNotFound(f"no MLflow store at {path} (from --tracking-uri {tracking_uri}); run a study first "
                            f"or pass the store the study used")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per small artifact is noise
    if tracking_uri.startswith(("http://", "https://")):
        # a dead server should cost seconds, not MLflow's default 7 retries with backoff (minutes)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    return MlflowClient(tracking_uri=tracking_uri)


def study_names(client: MlflowClient) -> list[str]:
    """Experiments that hold a harness study (for 'did you mean' messages)."""
    try:
        return sorted(e.name for e in client.search_experiments(max_results=1000)
                      if e.tags.get("harness.study_name"))
    except MlflowException:
        return []


def find_parent(client: MlflowClient, study_name: str):
    """(experiment, parent run) of a study, or StudyNotFound naming the studies that do exist."""
    exp = client.get_experiment_by_name(study_name)
    runs = []
    if exp is not None and exp.lifecycle_stage == "active":
        runs = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'study'", max_results=1,
                                  order_by=["attributes.start_time ASC"])
        if not runs:  # a harness.sustain study (see the sustainability block at the end)
            runs = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'sustain'", max_results=1,
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
    number = tags.get("optuna.trial_number")
    return {"number": int(number) if number is not None and number.isdigit() else None,
            "run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
            "state": STATES.get(run.info.status, run.info.status.lower()),
            "baseline": tags.get("harness.baseline", ""),
            "params": {k: _typed(v) for k, v in run.data.params.items()},
            "metrics": dict(run.data.metrics),  # the latest value of every key (MLflow's own summary)
            "curves": curves,  # key -> [(step, value)]: epochs for train/val keys, severities for shift/*
            "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.")},
            "start_time": run.info.start_time, "end_time": run.info.end_time}


def _children(client: MlflowClient, exp_id: str, parent_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def trials(client: MlflowClient, exp_id: str, parent_id: str) -> list[dict]:
    """Every child run of the parent, with its full metric histories, ordered by trial number."""
    runs = _children(client, exp_id, parent_id)
    jobs = [(r.info.run_id, k) for r in runs for k in r.data.metrics]
    with ThreadPoolExecutor(THREADS) as pool:
        hists = dict(zip(jobs, pool.map(lambda j: _history(client, *j), jobs)))
    out = [_trial(r, {k: hists[(r.info.run_id, k)] for k in r.data.metrics}) for r in runs]
    return sorted(out, key=lambda t: (t["number"] is None, t["number"] if t["number"] is not None else 0))


def optuna_study(study_name: str, storage: str | None) -> dict:
    """The Optuna side, when its storage is reachable: directions and trials (states, values, params,
    distributions, user attrs). Never creates a storage: a missing sqlite file is reported, not made."""
    if not storage:
        return {"available": False, "error": "no Optuna storage given"}
    path = sqlite_path(storage)
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
    client = connect(tracking_uri)
    exp, parent = find_parent(client, study_name)
    if parent.data.tags.get("harness.role") == "sustain":
        return load_sustain(client, exp, parent, study_name, tracking_uri)
    pid = parent.info.run_id
    arts = _list_artifacts(client, pid)
    texts = _texts(client, pid, arts, TEXT_ARTIFACTS)
    pretrain = [p for p in arts if p.startswith("pretrain/") and p.endswith(".json")]
    if pretrain:
        raw = artifact(client, pid, pretrain[-1])
        texts[pretrain[-1]] = raw.decode("utf-8", "replace") if raw is not None else None
    return {
        "name": study_name, "tracking_uri": tracking_uri, "experiment_id": exp.experiment_id,
        "parent": {"run_id": pid, "status": parent.info.status, "start_time": parent.info.start_time,
                   "end_time": parent.info.end_time, "tags": dict(parent.data.tags),
                   "params": dict(parent.data.params), "metrics": dict(parent.data.metrics),
                   "curves": {k: _history(client, pid, k) for k in parent.data.metrics},
                   "artifacts": arts, "texts": texts,
                   "shift_examples": artifact(client, pid, "shift_examples.png") if "shift_examples.png" in arts else None},
        "trials": trials(client, exp.experiment_id, pid),
        "optuna": optuna_study(study_name, storage),
    }


def json_artifact(study: dict, path: str):
    """A parsed JSON artifact of the parent run ({} when absent or unreadable)."""
    try:
        return json.loads(study["parent"]["texts"].get(path) or "{}")
    except json.JSONDecodeError:
        return {}


# ------------------------------------------------------------------------------------------- numbers
# Everything below turns one load() result into the JSON-able numbers the report shows. No MLflow, no torch.

Z95 = 1.959963984540054  # two-sided 95% normal quantile
EPOCH_KEYS = ("train_loss", "val_acc", "val_loss", "frozen_layers", "lr")
BASELINES = {"full_ft": "full FT", "linear_probe": "linear probe", "lp_ft": "LP-FT"}


def wilson(p: float | None, n: int | None, z: float = Z95) -> list[float] | None:
    """Wilson score interval of a binomial proportion p observed on n trials (better than p +- z*se near 0 and 1
    and at the ~100-image test sets of a tiny study)."""
    if p is None or not n or not math.isfinite(p):
        return None
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / den
    return [max(0.0, centre - half), min(1.0, centre + half)]


def probit(p: float, n: int | None) -> float:
    """Phi^-1(p) with p clipped to [1/(2n), 1 - 1/(2n)] (Miller et al. 2021): 0% or 100% would be infinite."""
    eps = 1 / (2 * n) if n else 1e-4
    return NormalDist().inv_cdf(min(max(p, eps), 1 - eps))


def fit_line(xs: list[float], ys: list[float]) -> dict | None:
    """Least squares y = slope * x + intercept with R^2; None below 3 points or without spread in x."""
    k = len(xs)
    if k < 3:
        return None
    mx, my = sum(xs) / k, sum(ys) / k
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx < 1e-12:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {"slope": slope, "intercept": intercept, "r2": 1 - ss_res / ss_tot if ss_tot > 1e-12 else None, "n": k}


def on_the_line(points: dict, n: int | None) -> dict | None:
    """Accuracy-on-the-line for {trial: (id_acc, ood_acc)}: the probit fit and each trial's effective robustness
    ood - Phi(slope * probit(id) + intercept), in accuracy units (Taori et al. 2020; Miller et al. 2021)."""
    keys = [t for t, (x, y) in points.items() if x is not None and y is not None]
    fit = fit_line([probit(points[t][0], n) for t in keys], [probit(points[t][1], n) for t in keys])
    if fit is None:
        return None
    nd = NormalDist()
    fit["effective_robustness"] = {t: points[t][1] - nd.cdf(fit["slope"] * probit(points[t][0], n) + fit["intercept"])
                                   for t in keys}
    return fit


def pareto(points: dict) -> list:
    """Keys of the non-dominated points of {key: (id, ood)} (both maximized)."""
    return sorted(k for k, (a, b) in points.items()
                  if not any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for a2, b2 in points.values()))


def infer_test_size(values: list[float], limit: int = 20000) -> int | None:
    """The smallest n for which every accuracy is a multiple of 1/n: the test-set size, which the study does not
    log. Needs >= 3 distinct values; below n = 10 the guess is refused (an accuracy of 0.5 fits n = 2)."""
    vals = sorted({v for v in values if v is not None and 0 < v < 1})
    if len(vals) < 3:
        return None
    for n in range(10, limit + 1):
        if all(abs(v * n - round(v * n)) < 1e-6 for v in vals):
            return n
    return None


def _sample_size(logged, accs: list) -> tuple[int | None, str]:
    """(n, where it came from): the logged tag, else inferred from accuracies measured on n images."""
    if logged and str(logged).isdigit():
        return int(logged), "logged"
    n = infer_test_size(accs)
    return n, (f"not logged; inferred: every accuracy is a multiple of 1/{n}" if n else
               "not logged and not inferable (too few distinct accuracies): no confidence intervals")


def shift_families(study: dict) -> dict:
    """Shift name -> family (noise, blur, weather, digital, geometric, label). A logged tag wins; else the
    FAMILY dict of harness/shifts.py is read from its source (importing it would import torch)."""
    tag = study["parent"]["tags"].get("harness.shifts.family", "")
    if tag:
        return dict(item.split(":", 1) for item in tag.split(",") if ":" in item)
    try:
        spec = importlib.util.find_spec("harness.shifts")
        tree = ast.parse(Path(spec.origin).read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "FAMILY" for t in node.targets):
                return {**ast.literal_eval(node.value), "label_shift": "label"}
    except (AttributeError, OSError, SyntaxError, ValueError):
        pass
    return {"label_shift": "label"}


def _float(v):
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _severities(study: dict) -> list[int]:
    raw = study["parent"]["params"].get("shifts.severities", "")
    try:
        return [int(v) for v in json.loads(raw)]
    except (json.JSONDecodeError, TypeError, ValueError):
        steps = {s for t in study["trials"] for k, c in t["curves"].items() if k.startswith("shift/") for s, _ in c}
        return sorted(steps)


def _shift_names(study: dict) -> dict:
    """selection and test (severity) shifts from the parent's tags; 'sets' are the other held-out sets that log
    shift/<name>/acc (label shift, subpopulation) at one step."""
    tags = study["parent"]["tags"]
    sel = [n for n in tags.get("harness.shifts.selection", "").split(",") if n]
    test = [n for n in tags.get("harness.shifts.test", "").split(",") if n]
    seen = []
    for t in study["trials"]:
        for k in t["curves"]:
            parts = k.split("/")
            if len(parts) == 3 and parts[0] == "shift" and parts[2] == "acc" and parts[1] not in seen:
                seen.append(parts[1])
    return {"selection": sel, "test": test, "sets": [n for n in seen if n not in sel and n not in test]}


def _strategy(k, e, epochs) -> dict:
    """How a trial fine-tunes, in words: freeze_layers k and unfreeze_epoch e (>= epochs: never)."""
    if k is None:
        return {"unfreeze": "", "text": ""}
    if k == 0:
        return {"unfreeze": "-", "text": "train everything"}
    never = e is None or (epochs is not None and e >= epochs)
    return {"unfreeze": "never" if never else f"epoch {e}",
            "text": f"freeze {k} group{'s' if k != 1 else ''}" + (", never unfreeze" if never else f", unfreeze at epoch {e}")}


def _row(t: dict, shifts: dict, epochs, objective: str) -> dict:
    m, c, p = t["metrics"], t["curves"], t["params"]
    names = shifts["selection"] + shifts["test"] + shifts["sets"]
    per = {n: {str(s): v for s, v in c.get(f"shift/{n}/acc", [])} for n in names if f"shift/{n}/acc" in c}
    ece = {n: {str(s): v for s, v in c.get(f"shift/{n}/ece", [])} for n in names if f"shift/{n}/ece" in c}
    means = {n: _mean(list(v.values())) for n, v in per.items()}
    held = {n: v for n, v in means.items() if n not in shifts["selection"]}
    worst = min(held, key=held.get) if held else None
    # the objective's value as Optuna saw it: validation accuracy, or the mean over selection shifts
    obj_key = {"val_acc": "val_acc_final", "ood_val_acc": "ood_val_acc"}.get(objective, "val_acc_final")
    finals = {k: _float(v) for k, v in m.items()
              if k not in EPOCH_KEYS and not (k.startswith("shift/") and k.rsplit("/", 1)[-1] in ("acc", "ece", "nll"))
              and len(c.get(k, ())) <= 1}  # a series (label_shift/prior_*: step = class index) is not one final value
    row = {"number": t["number"], "run_id": t["run_id"], "run_name": t["run_name"], "state": t["state"],
           "baseline": t["baseline"], "lr": p.get("lr"), "freeze_layers": p.get("freeze_layers"),
           "unfreeze_epoch": p.get("unfreeze_epoch"), **_strategy(p.get("freeze_layers"), p.get("unfreeze_epoch"), epochs),
           "objective": _float(m.get(obj_key)), "val_acc": _float(m.get("val_acc_final")),
           "id_acc": _float(m.get("id_acc")), "ood_acc_mean": _float(m.get("ood_acc_mean")),
           "ood_acc_worst": _float(m.get("ood_acc_worst")), "worst_shift": worst,
           "ood_val_acc": _float(m.get("ood_val_acc")), "id_ece": _float(m.get("id_ece")),
           "ood_ece_mean": _float(m.get("ood_ece_mean")), "shift_acc": per, "shift_ece": ece, "shift_mean": means,
           "curves": {k: [[s, v] for s, v in c[k]] for k in EPOCH_KEYS if k in c},
           "final": finals, "seconds": ((t["end_time"] or 0) - (t["start_time"] or 0)) / 1000 if t["end_time"] else None,
           "reason": t["tags"].get("harness.pruned_reason") or t["tags"].get("harness.fail_reason") or "",
           "stopped_epoch": t["tags"].get("harness.pruned_epoch", t["tags"].get("harness.failed_epoch"))}
    return row


def _importances(rows: list[dict], search: dict) -> dict:
    """fANOVA importances (Optuna) of lr, freeze_layers and unfreeze_epoch for ID and for OOD accuracy.
    unfreeze_epoch is conditional (sampled only when freeze_layers > 0); trials without frozen groups take 0, the
    value MLflow logs for them, so every trial enters one search space. Tiny studies get a note, not an error."""
    import optuna

    done = [r for r in rows if r["id_acc"] is not None and isinstance(r["lr"], (int, float)) and r["lr"] > 0]
    out = {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line per target
    try:
        _fanova(done, search, out)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return out


def _fanova(done: list[dict], search: dict, out: dict) -> None:
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    for target in ("id_acc", "ood_acc_mean"):
        use = [r for r in done if r[target] is not None]
        if len(use) < 3:
            out[target] = {"note": f"needs at least 3 completed trials, has {len(use)}"}
            continue
        try:
            space = search.get("lr") or {}  # {"low", "high", "log"} (search_space.json), or an older [low, high]
            bounds = [space.get("low"), space.get("high")] if isinstance(space, dict) else list(space)[:2]
            lrs = [r["lr"] for r in use] + bounds
            lrs = [v for v in lrs if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
            ks = [int(r["freeze_layers"] or 0) for r in use]
            es = [int(r["unfreeze_epoch"] or 0) if r["freeze_layers"] else 0 for r in use]
            dists = {"lr": FloatDistribution(min(lrs), max(lrs), log=True),
                     "freeze_layers": IntDistribution(min(ks), max(ks)), "unfreeze_epoch": IntDistribution(min(es), max(es))}
            varying = [name for name, vals in (("lr", [r["lr"] for r in use]), ("freeze_layers", ks), ("unfreeze_epoch", es))
                       if len(set(vals)) > 1]
            if not varying:
                out[target] = {"note": "no hyperparameter varies across the completed trials"}
                continue
            mem = optuna.create_study(direction="maximize")
            mem.add_trials([optuna.trial.create_trial(
                params={"lr": r["lr"], "freeze_layers": k, "unfreeze_epoch": e}, distributions=dists,
                value=r[target], user_attrs={target: r[target]}) for r, k, e in zip(use, ks, es)])
            imp = optuna.importance.get_param_importances(
                mem, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=varying,
                target=lambda t, key=target: t.user_attrs[key])
            out[target] = {"values": {k: float(v) for k, v in imp.items()}, "n": len(use)}
        except Exception as e:  # fANOVA on a handful of points can fail in many ways; the page says which
            out[target] = {"note": f"importance could not be computed ({type(e).__name__}: {e})"}


def _conditions(best: dict | None, oracle: dict | None, baselines: dict, line: dict | None, failed: int,
                sev_max, n_shift) -> list[dict]:
    """Pass / warn / fail checks on the selected configuration, deepchecks style; thresholds in points of
    accuracy (notes/science.md 7.3: OOD drop < 10 pp, ECE at severity 5 < 0.1, BBSE prior error < 0.05)."""
    if best is None:
        return []
    out = []

    def add(name, value, status, detail):
        out.append({"name": name, "value": value, "status": status, "detail": detail})

    def grade(v, ok, warn):  # smaller is better
        return "n/a" if v is None else "pass" if v < ok else "warn" if v < warn else "fail"

    drop = best["id_acc"] - best["ood_acc_mean"] if best["ood_acc_mean"] is not None else None
    add("OOD accuracy drop under 10 points", drop, grade(drop, 0.10, 0.20),
        "ID accuracy minus mean accuracy over held-out shifts; warn up to 20 points")
    wdrop = best["id_acc"] - best["ood_acc_worst"] if best["ood_acc_worst"] is not None else None
    add("Worst-shift drop under 20 points", wdrop, grade(wdrop, 0.20, 0.35),
        f"ID accuracy minus accuracy on the worst shift ({best['worst_shift'] or '-'}); warn up to 35 points")
    eces = [v.get(str(sev_max)) for n, v in best["shift_ece"].items() if str(sev_max) in v and len(v) > 1]
    ece5 = _mean(eces)
    add(f"ECE at severity {sev_max} under 0.10", ece5, grade(ece5, 0.10, 0.20),
        "mean expected calibration error (15 bins) over held-out shifts at the highest severity; warn up to 0.20")
    if oracle is not None and best["ood_acc_mean"] is not None:
        gap = oracle["ood_acc_mean"] - best["ood_acc_mean"]
        half = (wilson(best["ood_acc_mean"], n_shift) or [0, 0])
        tol = (half[1] - half[0]) / 2 if n_shift else 0.01
        add("Validation picks the OOD-best configuration", gap, "pass" if gap <= tol else "warn",
            f"trial {oracle['number']} has the highest held-out OOD accuracy; pass when the selected trial is within "
            f"the 95% CI half-width ({tol * 100:.1f} points)")
    base = {k: v for k, v in baselines.items() if v is not None and v["ood_acc_mean"] is not None}
    if base and best["ood_acc_mean"] is not None:
        top = max(base.values(), key=lambda r: r["ood_acc_mean"])
        margin = best["ood_acc_mean"] - top["ood_acc_mean"]
        add("Beats every baseline on OOD accuracy", margin, "pass" if margin >= 0 else "warn",
            f"margin over the best baseline ({BASELINES.get(top['baseline'], top['baseline'])}, trial {top['number']})")
    if line is not None:
        r2 = line["r2"]
        add("ID accuracy predicts OOD accuracy (R\u00b2 \u2265 0.7)", r2,
            "n/a" if r2 is None else "pass" if r2 >= 0.7 else "warn" if r2 >= 0.3 else "fail",
            "accuracy-on-the-line fit over all completed trials (probit scale); low R\u00b2 means validation "
            "accuracy is a poor proxy under this shift")
    l1 = best["final"].get("label_shift/prior_l1_error")
    if l1 is not None:
        add("Label-shift prior error (BBSE) under 0.05", l1, grade(l1, 0.05, 0.15),
            "L1 distance between the true and the BBSE-estimated class priors of the label-shifted test set")
    add("No failed trials", failed, "pass" if not failed else "warn", "failed trials are listed with their reasons")
    return out


def summarize(study: dict) -> dict:
    """Every number the report shows for one study, JSON-able (floats, strings, lists, dicts)."""
    if study.get("kind") == "sustain":
        return summarize_sustain(study)
    tags, params = study["parent"]["tags"], study["parent"]["params"]
    objective = tags.get("harness.objective", params.get("study.objective", "val_acc"))
    try:
        epochs = int(params.get("train.epochs", ""))
    except ValueError:
        epochs = None
    shifts = _shift_names(study)
    families = shift_families(study)
    shifts["families"] = {n: families.get(n, n) for n in shifts["selection"] + shifts["test"] + shifts["sets"]}
    shifts["severities"] = _severities(study)
    rows = [_row(t, shifts, epochs, objective) for t in study["trials"]]
    done = [r for r in rows if r["state"] == "complete" and r["id_acc"] is not None]
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "failed", "running")}

    # sample sizes: the clean test split (ID accuracy) and each shifted test set (a fixed subset of it, OOD
    # accuracy); logged as tags by the study, inferred from the accuracies for studies that predate the tags
    n_test, n_source = _sample_size(tags.get("harness.n_test"), [r["id_acc"] for r in done])
    n_shift, _ = _sample_size(tags.get("harness.n_shift_eval"),
                              [v for r in done for n in shifts["test"] for v in r["shift_acc"].get(n, {}).values()])
    n_shift = n_shift or n_test
    for r in rows:
        r["id_acc_ci"] = wilson(r["id_acc"], n_test)
        r["ood_acc_ci"] = wilson(r["ood_acc_mean"], n_shift)

    done.sort(key=lambda r: (-(r["objective"] if r["objective"] is not None else -1), r["number"] or 0))
    for i, r in enumerate(done, 1):
        r["rank"] = i
    best = done[0] if done else None
    with_ood = [r for r in done if r["ood_acc_mean"] is not None]
    oracle = max(with_ood, key=lambda r: (r["ood_acc_mean"], -(r["number"] or 0))) if with_ood else None
    baselines = {b: next((r for r in done if r["baseline"] == b), None) for b in BASELINES}

    line = on_the_line({r["number"]: (r["id_acc"], r["ood_acc_mean"]) for r in with_ood}, n_test)
    per_shift = {}
    for n in shifts["test"] + shifts["sets"] + shifts["selection"]:
        fit = on_the_line({r["number"]: (r["id_acc"], r["shift_mean"].get(n)) for r in done}, n_test)
        if fit is not None:
            per_shift[n] = fit
    for r in rows:
        r["effective_robustness"] = line["effective_robustness"].get(r["number"]) if line else None

    versions = json_artifact(study, "versions.json")
    search = json_artifact(study, "search_space.json")
    pre_path = next((p for p in study["parent"]["texts"] if p.startswith("pretrain/")), None)
    pre = json_artifact(study, pre_path) if pre_path else {}
    p = study["parent"]
    sev_max = max(shifts["severities"]) if shifts["severities"] else None
    opt = study["optuna"]
    message = None
    if not done:
        message = (f"Study \"{study['name']}\" has no completed trial yet ({counts['pruned']} pruned, "
                   f"{counts['failed']} failed, {counts['running']} running): there is nothing to rank. "
                   f"Failures and provenance are shown below.")
    return {
        "name": study["name"], "experiment_id": study["experiment_id"], "parent_run_id": p["run_id"],
        "tracking_uri": study["tracking_uri"], "message": message, "objective": objective, "epochs": epochs,
        "provenance": {
            "sampler": tags.get("harness.sampler"), "pruner": tags.get("harness.pruner"), "objective": objective,
            "seed": tags.get("harness.seed"), "n_trials_target": tags.get("harness.n_trials_target"),
            "git_sha": tags.get("harness.git_sha"), "device": tags.get("harness.device"),
            "optuna_storage": tags.get("harness.optuna_storage"), "data_key": tags.get("harness.data"),
            "shift_suite": tags.get("harness.shift_suite"), "status": p["status"],
            "versions": versions or {k[len("harness.version."):]: v for k, v in tags.items() if k.startswith("harness.version.")},
            "pretrain": {"key": tags.get("harness.pretrain"), "source_val_acc": _float(pre.get("source_val_acc")),
                         "seconds": _float(pre.get("seconds"))} if tags.get("harness.pretrain") else None,
            "started_ms": p["start_time"], "ended_ms": p["end_time"],
            "span_seconds": (p["end_time"] - p["start_time"]) / 1000 if p["end_time"] and p["start_time"] else None,
            "trial_seconds": sum(r["seconds"] for r in rows if r["seconds"]),
            "counts": counts,
            "optuna_counts": ({s: sum(t["state"] == s for t in opt["trials"]) for s in ("complete", "pruned", "fail", "running", "waiting")}
                              if opt.get("available") else None),
            "optuna_error": opt.get("error"), "best_trial_tag": tags.get("harness.best_trial"),
            "config": p["texts"].get("config/resolved.toml"), "params": dict(p["params"]), "search_space": search,
        },
        "n_test": n_test, "n_test_source": n_source, "n_shift_eval": n_shift, "shifts": shifts,
        "trials": rows, "best": best["number"] if best else None, "oracle": oracle["number"] if oracle else None,
        "baselines": {b: (r["number"] if r else None) for b, r in baselines.items()},
        "conditions": _conditions(best, oracle, baselines, line, counts["failed"], sev_max, n_shift),
        "on_the_line": {"mean": line, "per_shift": per_shift},
        "pareto": pareto({r["number"]: (r["id_acc"], r["ood_acc_mean"]) for r in with_ood}),
        "importances": _importances(done, search) if done else {},
    }


# ===================================================================================================== sustainability
# harness.sustain studies (DESIGN §8): a parent run tagged harness.role=sustain and one child run per (policy, seed),
# tagged harness.role=sustain_policy, with per-period curves (step = period) and an accuracy_matrix.json artifact.
# load_sustain reads them back (load() hands sustain parents to it); summarize_sustain makes the report's numbers.

SUSTAIN_CURVES = ("stream_acc", "labelled_acc", "updated", "monitor", "monitor_threshold")  # step = period
# final metrics of a policy run, in the report's column order; forgetting is absent on runs older than it
SUSTAIN_FINAL = ("stream_acc_mean", "stream_acc_worst", "bwt", "forgetting", "fwt", "n_updates", "update_seconds",
                 "update_examples")
SUSTAIN_TEXTS = ("config/resolved.toml", "versions.json", "stream.json", "summary.json", "search_space.json")


def _json_or_none(raw: bytes | None):
    try:
        return json.loads(raw) if raw is not None else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _policy_run(run, curves: dict, matrix) -> dict:
    tags = dict(run.data.tags)
    seed, number = tags.get("harness.seed", ""), tags.get("optuna.trial_number", "")
    return {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
            "state": STATES.get(run.info.status, run.info.status.lower()),
            "label": tags.get("harness.policy", run.data.params.get("policy", "?")),
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
    jobs = [(r.info.run_id, k) for r in runs for k in SUSTAIN_CURVES if k in r.data.metrics]
    finished = [r.info.run_id for r in runs if r.info.status == "FINISHED"]
    with ThreadPoolExecutor(THREADS) as pool:
        hists = dict(zip(jobs, pool.map(lambda j: _history(client, *j), jobs)))
        matrices = dict(zip(finished, pool.map(
            lambda rid: _json_or_none(artifact(client, rid, "accuracy_matrix.json")), finished)))
    out = [_policy_run(r, {k: hists[(r.info.run_id, k)] for k in SUSTAIN_CURVES if (r.info.run_id, k) in hists},
                       matrices.get(r.info.run_id)) for r in runs]
    return {"kind": "sustain", "name": study_name, "tracking_uri": tracking_uri, "experiment_id": exp.experiment_id,
            "parent": {"run_id": pid, "status": parent.info.status, "start_time": parent.info.start_time,
                       "end_time": parent.info.end_time, "tags": dict(parent.data.tags),
                       "params": dict(parent.data.params), "artifacts": arts, "texts": texts},
            "runs": sorted(out, key=lambda r: r["start_time"] or 0)}


def mean_sd(values: list) -> dict:
    """Mean and sample sd (n - 1; None below 2 values) of the non-missing values, which are kept as they are."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "sd": None, "n": 0, "values": []}
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return {"mean": mean, "sd": sd, "n": len(vals), "values": vals}


def _settings(label: str, p: dict, thresholds: list) -> str:
    """A policy in words: when it updates and how, e.g. 'every 3 periods; lr 0.01, freeze 0, 5 epochs, replay 2'."""
    policy = p.get("policy", label)
    if policy == "never":
        return "never updates"
    g = {k: f"{v:.3g}" if isinstance(v, float) else str(v) for k, v in p.items()}  # searched floats: 3 digits
    when = {"every": f"every {g.get('k')} periods",
            "accuracy": f"labelled accuracy drops > {g.get('threshold')} points (window {g.get('window')})",
            "embedding": f"domain-classifier AUC > {g.get('threshold')}",
            "mmd": f"MMD\u00b2 > {g.get('threshold')}"}.get(policy, str(policy))
    if thresholds and policy == "embedding":
        when += f" (used: {', '.join(thresholds)}, raised to the noise floor)"
    return (f"{when}; lr {g.get('lr')}, freeze {g.get('freeze_layers')}, epochs {g.get('epochs')}, "
            f"replay {g.get('replay')}")


def _per_period(rows: list[dict], key: str, periods: int) -> list[dict]:
    """mean_sd over seeds of one curve at each period (from the MLflow metric histories)."""
    by = [dict(r["curves"].get(key, [])) for r in rows]
    return [mean_sd([h.get(t) for h in by]) for t in range(periods)]


def _mean_matrix(rows: list[dict], periods: int) -> dict:
    """Element-wise mean over seeds of R and initial (accuracy_matrix.json), seeds with a T x T matrix only."""
    ms = [r["matrix"] for r in rows if r["matrix"] and len(r["matrix"].get("R", [])) == periods
          and all(len(row) == periods for row in r["matrix"]["R"]) and len(r["matrix"].get("initial", [])) == periods]
    if not ms:
        return {"R": None, "initial": None, "n": 0}
    return {"R": [[sum(m["R"][i][j] for m in ms) / len(ms) for j in range(periods)] for i in range(periods)],
            "initial": [sum(m["initial"][j] for m in ms) / len(ms) for j in range(periods)], "n": len(ms)}


def _policy_group(name: str, rows: list[dict]) -> dict:
    """One policy (one trial in search mode) over its seeds: the final metrics' mean and sd exactly as MLflow holds
    them per run, per-period stream accuracy, update markers and the mean accuracy matrix."""
    rows = sorted(rows, key=lambda r: (r["seed"] is None, r["seed"] or 0))
    first = rows[0]
    params = {k: v for k, v in first["params"].items() if k != "seed"}
    periods = int(params["periods"]) if isinstance(params.get("periods"), int) else \
        max((len(r["curves"].get("stream_acc", [])) for r in rows), default=0)
    thresholds = sorted({v for r in rows for v in r["tags"].get("harness.threshold_used", "").split(",") if v})
    updated = [dict(r["curves"].get("updated", [])) for r in rows]
    return {"key": name, "label": first["label"], "policy": params.get("policy"), "trial": first["trial"],
            "settings": _settings(first["label"], params, thresholds), "params": params,
            "threshold_used": thresholds, "seeds": [r["seed"] for r in rows], "n_seeds": len(rows),
            "run_ids": [r["run_id"] for r in rows], "run_names": [r["run_name"] for r in rows],
            "metrics": {k: mean_sd([r["metrics"].get(k) for r in rows]) for k in SUSTAIN_FINAL},
            "periods": periods, "stream_acc": _per_period(rows, "stream_acc", periods),
            "labelled_acc": _per_period(rows, "labelled_acc", periods),
            # share of seeds that updated at the end of period t (after it was evaluated)
            "update_share": [sum(u.get(t, 0) > 0.5 for u in updated) / len(rows) for t in range(periods)],
            "update_periods": {str(r["seed"]): [t for t, v in sorted(u.items()) if v > 0.5] for r, u in zip(rows, updated)},
            "matrix": _mean_matrix(rows, periods)}


def _group_runs(runs: list[dict]) -> dict:
    """display name -> the FINISHED runs of one policy configuration (all params but the seed equal; one trial in
    search mode), the latest run per seed. Two configurations under one label get their differing params added."""
    groups = {}
    for r in runs:
        if r["status"] != "FINISHED":
            continue
        key = (r["trial"], r["label"], tuple(sorted((k, str(v)) for k, v in r["params"].items() if k != "seed")))
        groups.setdefault(key, {})[r["seed"]] = r  # runs come by start time: a later run of a seed replaces it
    names = {}
    for (trial, lab, params), by_seed in groups.items():
        base = f"trial {trial}: {lab}" if trial is not None else lab
        names.setdefault(base, []).append((params, list(by_seed.values())))
    out = {}
    for base, variants in names.items():
        for params, rows in variants:
            if len(variants) == 1:
                out[base] = rows
                continue
            common = set.intersection(*(set(p) for p, _ in variants))
            diff = ", ".join(f"{k} {v}" for k, v in params if (k, v) not in common)
            out[f"{base} [{diff}]"] = rows
    return out


def summarize_sustain(study: dict) -> dict:
    """Every number the sustainability section shows for one sustain study, JSON-able. Policy metrics are means
    and sample sds over seeds of the child runs' MLflow metrics (FINISHED runs only)."""
    p, tags = study["parent"], study["parent"]["tags"]
    groups = [_policy_group(name, rows) for name, rows in _group_runs(study["runs"]).items()]
    groups.sort(key=lambda g: (g["trial"] is not None, g["trial"] or 0, g["policy"] != "never"))
    acc_cost = {g["key"]: (g["metrics"]["stream_acc_mean"]["mean"], g["metrics"]["update_examples"]["mean"])
                for g in groups}
    front = pareto({k: (a, -c) for k, (a, c) in acc_cost.items() if a is not None and c is not None})
    done_ids = {(r["trial"], r["label"], r["seed"], r["tags"].get("harness.sustain_key")) for r in study["runs"]
                if r["status"] == "FINISHED"}
    failed = [{"run_id": r["run_id"], "run_name": r["run_name"], "label": r["label"], "seed": r["seed"],
               "trial": r["trial"], "state": r["state"],
               "reason": r["tags"].get("harness.fail_reason", ""),
               # a later run of the same policy, seed and settings finished: the failure is history
               "retried": (r["trial"], r["label"], r["seed"], r["tags"].get("harness.sustain_key")) in done_ids}
              for r in study["runs"] if r["status"] != "FINISHED"]
    counts = {s: sum(r["state"] == s for r in study["runs"]) for s in ("complete", "failed", "running", "pruned")}
    # the most accurate policy; among equally accurate ones the cheapest (no update work buys nothing)
    best = max((g for g in groups if g["metrics"]["stream_acc_mean"]["mean"] is not None),
               key=lambda g: (g["metrics"]["stream_acc_mean"]["mean"], -(g["metrics"]["update_examples"]["mean"] or 0)),
               default=None)
    message = None
    if not groups:
        message = (f"Sustain study \"{study['name']}\" has no finished policy run yet ({counts['failed']} failed, "
                   f"{counts['running']} running): there is nothing to compare. Failures and provenance are shown "
                   f"below.")
    versions = json_artifact(study, "versions.json")
    return {
        "kind": "sustain", "name": study["name"], "experiment_id": study["experiment_id"], "parent_run_id": p["run_id"],
        "tracking_uri": study["tracking_uri"], "message": message,
        "provenance": {
            "status": p["status"], "git_sha": tags.get("harness.git_sha"), "device": tags.get("harness.device"),
            "stream": tags.get("harness.stream"), "stream_shift": tags.get("harness.stream_shift"),
            "pool_fraction": tags.get("harness.pool_fraction"), "policies": tags.get("harness.policies"),
            "seeds": tags.get("harness.seeds"), "search": tags.get("harness.search"), "versions": versions,
            "started_ms": p["start_time"], "ended_ms": p["end_time"],
            "span_seconds": (p["end_time"] - p["start_time"]) / 1000 if p["end_time"] and p["start_time"] else None,
            "counts": counts, "config": p["texts"].get("config/resolved.toml"), "params": dict(p["params"]),
            "search_space": json_artifact(study, "search_space.json"),
        },
        "stream": json_artifact(study, "stream.json"),  # seed -> period recipes (shift, severity, prior)
        "policies": groups, "pareto": front, "best": best["key"] if best else None, "failed": failed,
        "metric_definitions": {
            "stream_acc": "accuracy on period t of the model in service when t arrives (before any update on t)",
            "bwt": "GEM backward transfer: mean over i < T-1 of R[T-1][i] - R[i][i] (negative = forgetting)",
            "forgetting": "Chaudhry et al. 2018: mean over i < T-1 of max_{i<=l<T-1} R[l][i] - R[T-1][i] "
                          "(positive = forgetting)",
            "fwt": "GEM forward transfer: mean over i >= 1 of R[i-1][i] - initial[i] (initial = the deployed model)",
            "update_examples": "images x epochs trained by the updates"},
    }

"""Study numbers: one loaded study (results.load) summarized into the report's JSON-able dicts; rows, provenance."""

from __future__ import annotations

import json
import math

from harness import budget_curves, comparisons, conditions, domain_numbers, ensemble_numbers, reproduction, schema
from harness import selection, strategies
from harness.stats import importances, infer_test_size, on_the_line, pareto, seed_interval, wilson


def json_artifact(study: dict, path: str):
    """A parsed JSON artifact of the parent run ({} when absent or unreadable)."""
    try:
        return json.loads(study["parent"]["texts"].get(path) or "{}")
    except json.JSONDecodeError:
        return {}


def _float(v):
    return float(v) if v is not None and math.isfinite(float(v)) else None


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


# ================================================================================================ fine-tuning studies

def _sample_size(logged, accs: list) -> tuple[int | None, str]:
    """(n, where it came from): the logged tag, else inferred from accuracies measured on n images."""
    if logged and str(logged).isdigit():
        return int(logged), "logged"
    n = infer_test_size(accs)
    return n, (f"not logged; inferred: every accuracy is a multiple of 1/{n}" if n else
               "not logged and not inferable (too few distinct accuracies): no confidence intervals")


def shift_families(study: dict) -> dict:
    """Shift name -> family (noise, blur, weather, digital, geometric, label). A logged tag wins; else harness.shifts'
    FAMILY, imported only then (it imports torch, which the report otherwise never needs)."""
    tag = schema.tag(study["parent"]["tags"], schema.TAG_SHIFTS_FAMILY, "")
    if tag:
        return dict(item.split(":", 1) for item in tag.split(",") if ":" in item)
    from harness.shifts import FAMILY

    return {**FAMILY, "label_shift": "label"}


def _severities(study: dict) -> list[int]:
    raw = schema.param(study["parent"]["params"], "shifts.severities", "")
    try:
        return [int(v) for v in json.loads(raw)]
    except (json.JSONDecodeError, TypeError, ValueError):
        steps = {s for t in study["trials"] for k, c in t["curves"].items() if schema.shift_parts(k) for s, _ in c}
        return sorted(steps)


def _shifts(study: dict) -> dict:
    """selection and test (severity) shifts from the parent's tags; 'sets' are the other held-out sets that log
    shift/<name>/acc (label shift, subpopulation) at one step; each shift's family; the severities."""
    tags = study["parent"]["tags"]
    sel = [n for n in schema.tag(tags, schema.TAG_SHIFTS_SELECTION, "").split(",") if n]
    test = [n for n in schema.tag(tags, schema.TAG_SHIFTS_TEST, "").split(",") if n]
    seen = []
    for t in study["trials"]:
        for k in t["curves"]:
            name, what = schema.shift_parts(k) or (None, None)
            if what == "acc" and name not in seen:
                seen.append(name)
    out = {"selection": sel, "test": test, "sets": [n for n in seen if n not in sel and n not in test]}
    families = shift_families(study)
    out["families"] = {n: families.get(n, n) for n in out["selection"] + out["test"] + out["sets"]}
    out["severities"] = _severities(study)
    return out


def _tuning(p: dict, epochs, baseline: str = "") -> dict:
    """How a trial fine-tunes as the report groups and words it: its strategy param (prefix where none is logged), its
    registry entry (harness.strategies: an unknown one is an error) and that entry's words."""
    name = strategies.which(p, baseline)
    words = strategies.get(name).words(p, epochs)
    return {"strategy": schema.param(p, "strategy", "prefix"), "entry": name, "unfreeze": words["unfreeze"],
            "text": words["text"] + strategies.bn_words(p), "strategy_label": words["label"] + strategies.bn_words(p),
            "short": words["short"]}


def _per_strategy(done: list[dict]) -> list[dict]:
    """Mean ID and OOD accuracy per strategy and, for surgical trials, per tuned group (and with/without the head):
    Lee et al.'s question, which block to tune for which shift. Only for studies that search beyond prefix."""
    if all(r["strategy"] == "prefix" for r in done):
        return []
    groups: dict = {}
    for r in done:
        groups.setdefault(f"baseline: {r['baseline']}" if r["baseline"] else r["strategy_label"], []).append(r)
    out = []
    for key, rs in groups.items():
        ood = [r[schema.OOD_ACC_MEAN] for r in rs if r[schema.OOD_ACC_MEAN] is not None]
        out.append({"label": key, "n": len(rs), schema.ID_ACC: _mean([r[schema.ID_ACC] for r in rs]),
                    schema.OOD_ACC_MEAN: _mean(ood) if ood else None, "trials": [r["number"] for r in rs]})
    return sorted(out, key=lambda g: g["label"])


def _by_severity(curves: dict, names: list[str], what: str) -> dict:
    """{shift: {severity (as text): value}} of the shift/<name>/<what> curves a trial logged."""
    keys = {n: schema.shift_key(n, what) for n in names}
    return {n: {str(s): v for s, v in curves[k]} for n, k in keys.items() if k in curves}


def _row(t: dict, shifts: dict, epochs, objective: str) -> dict:
    """One trial as the report shows it (keys are the report's own; values are MLflow's)."""
    m, c, p = t["metrics"], t["curves"], t["params"]
    names = shifts["selection"] + shifts["test"] + shifts["sets"]
    per, ece = _by_severity(c, names, "acc"), _by_severity(c, names, "ece")
    means = {n: _mean(list(v.values())) for n, v in per.items()}
    held = {n: v for n, v in means.items() if n not in shifts["selection"]}
    worst = min(held, key=held.get) if held else None
    # the objective's value as Optuna saw it: validation accuracy, or the mean over selection shifts
    obj_key = schema.OBJECTIVE_METRICS.get(objective, schema.VAL_ACC_FINAL)
    finals = {k: _float(v) for k, v in m.items()  # per-epoch keys are curves even where one epoch ran (the probe)
              if k not in schema.EPOCH and not schema.is_severity(k)
              and len(c.get(k, ())) <= 1}  # a series (label_shift/prior_*: step = class index) is not one final value

    def final(name):
        return _float(schema.metric(m, name))

    tags = t["tags"]
    return {"number": t["number"], "run_id": t["run_id"], "run_name": t["run_name"], "state": t["state"],
            "baseline": t["baseline"], **_tuning(p, epochs, t["baseline"]),
            **{a: schema.param(p, a) for s in strategies.STRATEGIES.values() for a in s.axes},  # every axis
            "objective": final(obj_key), schema.VAL_ACC: final(schema.VAL_ACC_FINAL),
            schema.ID_ACC: final(schema.ID_ACC), schema.OOD_ACC_MEAN: final(schema.OOD_ACC_MEAN),
            schema.CLEAN_SUBSET_ACC: final(schema.CLEAN_SUBSET_ACC),
            schema.CLEAN_SUBSET_ECE: final(schema.CLEAN_SUBSET_ECE),
            schema.OOD_ACC_WORST: final(schema.OOD_ACC_WORST), "worst_shift": worst,
            schema.OOD_VAL_ACC: final(schema.OOD_VAL_ACC), schema.ID_ECE: final(schema.ID_ECE),
            schema.OOD_ECE_MEAN: final(schema.OOD_ECE_MEAN), "shift_acc": per, "shift_ece": ece, "shift_mean": means,
            "curves": {k: [[s, v] for s, v in c[k]] for k in schema.LEARNING_CURVES if k in c},
            "final": finals, "seconds": ((t["end_time"] or 0) - (t["start_time"] or 0)) / 1000 if t["end_time"] else None,
            "reason": schema.tag(tags, schema.TAG_PRUNED_REASON) or schema.tag(tags, schema.TAG_FAIL_REASON) or "",
            "stopped_epoch": schema.tag(tags, schema.TAG_PRUNED_EPOCH, schema.tag(tags, schema.TAG_FAILED_EPOCH))}


REPLICATED = (schema.ID_ACC, schema.OOD_ACC_MEAN, schema.OOD_ACC_WORST)


def _replicated(row: dict, reps: list[dict]) -> dict | None:
    """A replicated configuration over its fresh seeds (comparisons.fresh_seeds: the search-time run, which won on
    validation, is left out): mean, sd and 95% t interval of ID, mean OOD and worst OOD accuracy, as MLflow holds
    them per run."""
    runs = comparisons.fresh_seeds(reps, row["number"])
    if not runs:
        return None
    vals = {k: [_float(schema.metric(r["metrics"], k)) for r in runs] for k in REPLICATED}
    return {"n": len(runs), "seeds": [r["seed"] for r in runs], "run_ids": [r["run_id"] for r in runs],
            **{k: seed_interval(v) for k, v in vals.items()}}


def _ce_reference(trials: list[dict]) -> dict | None:
    """The trial the corruption errors are normalized by (the harness.ce_reference tag of the runs: a run id)."""
    ids = {schema.tag(t["tags"], schema.TAG_CE_REFERENCE) for t in trials} - {None, ""}
    by_id = {t["run_id"]: t for t in trials}
    ref = [by_id[i] for i in ids if i in by_id]
    if len(ref) != 1:
        return None
    r = ref[0]
    return {"number": r["number"], "run_id": r["run_id"], "baseline": r["baseline"],
            "lr": schema.param(r["params"], schema.LR)}


def _sample_sizes(tags: dict, rows: list[dict], done: list[dict], shifts: dict) -> tuple[int | None, str, int | None]:
    """(n_test, where it came from, n_shift) of the clean test split (ID accuracy) and of each shifted test set (a
    fixed subset of it, OOD accuracy): logged as tags by the study, inferred from the accuracies for studies that
    predate the tags. Each row gets the 95% Wilson intervals of its ID and mean OOD accuracy."""
    n_test, n_source = _sample_size(schema.tag(tags, schema.TAG_N_TEST), [r[schema.ID_ACC] for r in done])
    n_shift, _ = _sample_size(schema.tag(tags, schema.TAG_N_SHIFT_EVAL),
                              [v for r in done for n in shifts["test"] for v in r["shift_acc"].get(n, {}).values()])
    n_shift = n_shift or n_test
    for r in rows:
        r["id_acc_ci"] = wilson(r[schema.ID_ACC], n_test)
        r["ood_acc_ci"] = wilson(r[schema.OOD_ACC_MEAN], n_shift)
    return n_test, n_source, n_shift


def _fits(rows: list[dict], done: list[dict], with_ood: list[dict], shifts: dict, n_test) -> dict:
    """The accuracy-on-the-line fit of mean OOD accuracy and one per shift; each row gets its effective robustness."""
    line = on_the_line({r["number"]: (r[schema.ID_ACC], r[schema.OOD_ACC_MEAN]) for r in with_ood}, n_test)
    per_shift = {}
    for n in shifts["test"] + shifts["sets"] + shifts["selection"]:
        fit = on_the_line({r["number"]: (r[schema.ID_ACC], r["shift_mean"].get(n)) for r in done}, n_test)
        if fit is not None:
            per_shift[n] = fit
    for r in rows:
        r["effective_robustness"] = line["effective_robustness"].get(r["number"]) if line else None
    return {"mean": line, "per_shift": per_shift}


def _provenance(study: dict, rows: list[dict], objective: str, counts: dict, search: dict) -> dict:
    """What ran, where, with which code: the parent run's tags, config and artifacts, and Optuna's own counts."""
    p, tags, opt = study["parent"], study["parent"]["tags"], study["optuna"]
    versions = json_artifact(study, "versions.json")
    pre_path = next((path for path in p["texts"] if path.startswith("pretrain/")), None)
    pre = json_artifact(study, pre_path) if pre_path else {}

    def tag(name):
        return schema.tag(tags, name)

    return {
        "sampler": tag(schema.TAG_SAMPLER), "pruner": tag(schema.TAG_PRUNER), "objective": objective,
        "seed": tag(schema.TAG_SEED), "n_trials_target": tag(schema.TAG_N_TRIALS_TARGET),
        "git_sha": tag(schema.TAG_GIT_SHA), "device": tag(schema.TAG_DEVICE),
        "load_average": tag(schema.TAG_LOAD_AVERAGE), "cpu_count": tag(schema.TAG_CPU_COUNT),
        "optuna_storage": tag(schema.TAG_OPTUNA_STORAGE), "data_key": tag(schema.TAG_DATA),
        "shift_suite": tag(schema.TAG_SHIFT_SUITE), "status": p["status"],
        "target_domain": tag(schema.TAG_TARGET_DOMAIN),  # name:severity[,...], none, or None (not logged)
        "versions": versions or {pkg: v for k, v in tags.items() if (pkg := schema.version_package(k)) is not None},
        "pretrain": {"key": tag(schema.TAG_PRETRAIN), "source_val_acc": _float(pre.get("source_val_acc")),
                     "seconds": _float(pre.get("seconds"))} if tag(schema.TAG_PRETRAIN) else None,
        "started_ms": p["start_time"], "ended_ms": p["end_time"],
        "span_seconds": (p["end_time"] - p["start_time"]) / 1000 if p["end_time"] and p["start_time"] else None,
        "trial_seconds": sum(r["seconds"] for r in rows if r["seconds"]),
        "counts": counts,
        "optuna_counts": ({s: sum(t["state"] == s for t in opt["trials"]) for s in ("complete", "pruned", "fail", "running", "waiting")}
                          if opt.get("available") else None),
        "optuna_error": opt.get("error"), "best_trial_tag": tag(schema.TAG_BEST_TRIAL),
        "config": p["texts"].get("config/resolved.toml"), "params": dict(p["params"]), "search_space": search,
    }


def summarize(study: dict) -> dict:
    """Every number the report shows for one study, JSON-able (floats, strings, lists, dicts)."""
    tags, params = study["parent"]["tags"], study["parent"]["params"]
    objective = schema.tag(tags, schema.TAG_OBJECTIVE, schema.param(params, "study.objective", schema.VAL_ACC))
    try:
        epochs = int(schema.param(params, "train.epochs", ""))
    except ValueError:
        epochs = None
    shifts = _shifts(study)
    rows = [_row(t, shifts, epochs, objective) for t in study["trials"]]
    done = [r for r in rows if r["state"] == "complete" and r[schema.ID_ACC] is not None]
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "failed", "running")}
    n_test, n_source, n_shift = _sample_sizes(tags, rows, done, shifts)

    done.sort(key=lambda r: (-(r["objective"] if r["objective"] is not None else -1), r["number"] or 0))
    for i, r in enumerate(done, 1):
        r["rank"] = i
    reps = study.get("replicates", [])
    choice = selection.from_study(study, done, reps, objective)  # the rule of tag_best, the champion, the replicates
    best = next((r for r in done if r["number"] == choice["selected"]), None)
    with_ood = [r for r in done if r[schema.OOD_ACC_MEAN] is not None]
    # the best of each baseline family on validation (the study objective; ties: the lower trial number)
    baselines = {b: next((r for r in done if r["baseline"] == b), None) for b in strategies.BASELINES}
    replicated = {r["replicate_of"] for r in reps}  # the selected trial, each baseline family's best, sweep groups' best
    for r in done:
        if r["number"] in replicated:
            r["replicates"] = _replicated(r, reps)
    # the hindsight-best by the metric the regret compares on (mean OOD accuracy over the paired images, seeds
    # averaged); studies without per-image correctness fall back on ood_acc_mean
    oracle, _ = comparisons.hindsight_best(done, study["trials"], reps, shifts["test"])
    if oracle is None and with_ood:
        oracle = max(with_ood, key=lambda r: (r[schema.OOD_ACC_MEAN], -(r["number"] or 0)))
    paired = comparisons.paired(best, oracle, baselines, study["trials"], reps, shifts["test"])
    drops = comparisons.drops(best, study["trials"], reps, shifts["test"]) if best else {}
    fits = _fits(rows, done, with_ood, shifts, n_test)
    search = json_artifact(study, "search_space.json")
    axes = strategies.axes(r["entry"] for r in done)  # what the hyperparameter plots and importances read
    sev_max = max(shifts["severities"]) if shifts["severities"] else None
    message = None
    if not done:
        message = (f"Study \"{study['name']}\" has no completed trial yet ({counts['pruned']} pruned, "
                   f"{counts['failed']} failed, {counts['running']} running): there is nothing to rank. "
                   f"Failures and provenance are shown below.")
    return {
        "name": study["name"], "experiment_id": study["experiment_id"], "parent_run_id": study["parent"]["run_id"],
        "tracking_uri": study["tracking_uri"], "message": message, "objective": objective, "epochs": epochs,
        "provenance": _provenance(study, rows, objective, counts, search),
        "n_test": n_test, "n_test_source": n_source, "n_shift_eval": n_shift, "shifts": shifts,
        "trials": rows, "best": best["number"] if best else None, "oracle": oracle["number"] if oracle else None,
        "baselines": {b: (r["number"] if r else None) for b, r in baselines.items()},
        "conditions": conditions.evaluate(best, oracle, baselines, fits["mean"], counts["failed"], sev_max, paired,
                                          drops, n_shift),
        "budgets": comparisons.budgets(rows, baselines),
        "paired": paired, "drops": drops, "ce_reference": _ce_reference(study["trials"]),
        "on_the_line": fits,
        # real domains (shifts.domains): their own family, and how the simulated ranking predicts theirs
        "domains": domain_numbers.summarize(done, study["trials"], reps, best, baselines, shifts, n_shift),
        "pareto": pareto({r["number"]: (r[schema.ID_ACC], r[schema.OOD_ACC_MEAN]) for r in with_ood}),
        "axes": axes, "importances": importances(done, search, axes) if done else {},
        "per_strategy": _per_strategy(done), "selection": choice,
        "reproduction": reproduction.summarize(study, done) if done else None,  # issue 23: surgical vs full FT, paired
        "ensembles": ensemble_numbers.summarize(study, best, shifts["test"]),  # WiSE-FT and soups (issue 23)
        "label_budgets": budget_curves.summarize(study, shifts["test"], objective),  # learning curves (issue 25)
    }


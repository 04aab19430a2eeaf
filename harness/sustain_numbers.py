"""The sustain numbers: a study from results.load_sustain summarized for its page, JSON-able (no MLflow, no torch)."""

from __future__ import annotations

from harness import schema, sustain_verdicts
from harness.numbers import json_artifact
from harness.stats import mean_sd, pareto

# A parent run tagged harness.role=sustain and one child run per (policy, seed) with per-period curves (DESIGN §8);
# results.load_sustain reads them back, summarize_sustain makes the sustainability page's numbers.


def _settings(label: str, p: dict, thresholds: list) -> str:
    """A policy in words: when it updates and how, e.g. 'every 3 periods; lr 0.01, freeze 0, 5 epochs, replay 2'."""
    policy = schema.param(p, schema.PARAM_POLICY, label)
    if policy == "never":
        return "never updates"
    g = {k: f"{v:.3g}" if isinstance(v, float) else str(v) for k, v in p.items()}  # searched floats: 3 digits
    k, threshold, window = (schema.param(g, n) for n in (schema.PARAM_K, schema.PARAM_THRESHOLD, schema.PARAM_WINDOW))
    when = {"every": f"every {k} periods",
            "accuracy": f"labelled accuracy drops > {threshold} points (window {window})",
            "embedding": f"domain-classifier AUC > {threshold}",
            "mmd": f"MMD\u00b2 > {threshold}"}.get(policy, str(policy))
    if thresholds and policy == "embedding":
        when += f" (used: {', '.join(thresholds)}, raised to the noise floor)"
    lr, freeze, epochs, replay = (schema.param(g, n) for n in (schema.LR, schema.PARAM_FREEZE_LAYERS,
                                                               schema.PARAM_EPOCHS, schema.PARAM_REPLAY))
    return f"{when}; lr {lr}, freeze {freeze}, epochs {epochs}, replay {replay}"


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
    params = {k: v for k, v in first["params"].items() if k != schema.PARAM_SEED}
    periods = int(params[schema.PARAM_PERIODS]) if isinstance(schema.param(params, schema.PARAM_PERIODS), int) else \
        max((len(r["curves"].get(schema.STREAM_ACC, [])) for r in rows), default=0)
    thresholds = sorted({v for r in rows for v in schema.tag(r["tags"], schema.TAG_THRESHOLD_USED, "").split(",") if v})
    updated = [dict(r["curves"].get(schema.UPDATED, [])) for r in rows]
    return {"key": name, "label": first["label"], "policy": schema.param(params, schema.PARAM_POLICY),
            "trial": first["trial"],
            "settings": _settings(first["label"], params, thresholds), "params": params,
            "threshold_used": thresholds, "seeds": [r["seed"] for r in rows], "n_seeds": len(rows),
            "run_ids": [r["run_id"] for r in rows], "run_names": [r["run_name"] for r in rows],
            # forgetting is absent on runs older than it: its mean_sd is then empty
            "metrics": {k: mean_sd([schema.metric(r["metrics"], k) for r in rows]) for k in schema.STREAM_FINAL},
            "periods": periods, schema.STREAM_ACC: _per_period(rows, schema.STREAM_ACC, periods),
            schema.LABELLED_ACC: _per_period(rows, schema.LABELLED_ACC, periods),
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
        key = (r["trial"], r["label"],
               tuple(sorted((k, str(v)) for k, v in r["params"].items() if k != schema.PARAM_SEED)))
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


def _failed(runs: list[dict]) -> list[dict]:
    """Policy runs that did not finish, and whether a later run of the same policy, seed and settings did (then the
    failure is history)."""
    def ident(r):
        return r["trial"], r["label"], r["seed"], schema.tag(r["tags"], schema.TAG_SUSTAIN_KEY)

    done = {ident(r) for r in runs if r["status"] == "FINISHED"}
    return [{"run_id": r["run_id"], "run_name": r["run_name"], "label": r["label"], "seed": r["seed"],
             "trial": r["trial"], "state": r["state"], "reason": schema.tag(r["tags"], schema.TAG_FAIL_REASON, ""),
             "retried": ident(r) in done} for r in runs if r["status"] != "FINISHED"]


def summarize_sustain(study: dict) -> dict:
    """Every number the sustainability section shows for one sustain study, JSON-able. Policy metrics are means
    and sample sds over seeds of the child runs' MLflow metrics (FINISHED runs only)."""
    p, tags = study["parent"], study["parent"]["tags"]

    def tag(name):
        return schema.tag(tags, name)

    def variant(r):
        return schema.tag(r["tags"], schema.TAG_STREAM_VARIANT, schema.STREAM_DRIFT)

    drift = [r for r in study["runs"] if variant(r) != schema.STREAM_CONTROL]
    groups = [{**_policy_group(name, rows), "rows": rows} for name, rows in _group_runs(drift).items()]
    groups.sort(key=lambda g: (g["trial"] is not None, g["trial"] or 0, g["policy"] != "never"))
    controls = {name: {**_policy_group(name, rows), "rows": rows} for name, rows in
                _group_runs([r for r in study["runs"] if variant(r) == schema.STREAM_CONTROL]).items()}
    reported = [g for g in groups if g["trial"] is None]  # search trials select; the reported policies are compared
    verdicts = {"comparisons": sustain_verdicts.comparisons(reported),
                "drift_vs_control": sustain_verdicts.drift_vs_control(reported, controls),
                "frontier": sustain_verdicts.frontier(reported)}
    for g in [*groups, *controls.values()]:
        del g["rows"]
    acc_cost = {g["key"]: (g["metrics"][schema.STREAM_ACC_MEAN]["mean"], g["metrics"][schema.UPDATE_EXAMPLES]["mean"])
                for g in groups}
    front = pareto({k: (a, -c) for k, (a, c) in acc_cost.items() if a is not None and c is not None})
    counts = {s: sum(r["state"] == s for r in study["runs"]) for s in ("complete", "failed", "running", "pruned")}
    # the most accurate policy; among equally accurate ones the cheapest (no update work buys nothing)
    best = max((g for g in groups if g["metrics"][schema.STREAM_ACC_MEAN]["mean"] is not None),
               key=lambda g: (g["metrics"][schema.STREAM_ACC_MEAN]["mean"],
                              -(g["metrics"][schema.UPDATE_EXAMPLES]["mean"] or 0)),
               default=None)
    message = None
    if not groups:
        message = (f"Sustain study \"{study['name']}\" has no finished policy run yet ({counts['failed']} failed, "
                   f"{counts['running']} running): there is nothing to compare. Failures and provenance are shown "
                   f"below.")
    return {
        "kind": "sustain", "name": study["name"], "experiment_id": study["experiment_id"], "parent_run_id": p["run_id"],
        "tracking_uri": study["tracking_uri"], "message": message,
        "provenance": {
            "status": p["status"], "git_sha": tag(schema.TAG_GIT_SHA), "device": tag(schema.TAG_DEVICE),
            "stream": tag(schema.TAG_STREAM), "stream_shift": tag(schema.TAG_STREAM_SHIFT),
            "pool_fraction": tag(schema.TAG_POOL_FRACTION), "policies": tag(schema.TAG_POLICIES),
            "seeds": tag(schema.TAG_SEEDS), "search": tag(schema.TAG_SEARCH),
            "load_average": tag(schema.TAG_LOAD_AVERAGE), "cpu_count": tag(schema.TAG_CPU_COUNT),
            "versions": json_artifact(study, "versions.json"),
            "started_ms": p["start_time"], "ended_ms": p["end_time"],
            "span_seconds": (p["end_time"] - p["start_time"]) / 1000 if p["end_time"] and p["start_time"] else None,
            "counts": counts, "config": p["texts"].get("config/resolved.toml"), "params": dict(p["params"]),
            "search_space": json_artifact(study, "search_space.json"),
        },
        "stream": json_artifact(study, "stream.json"),  # seed -> period recipes (shift, severity, prior)
        "policies": groups, "controls": list(controls.values()), **verdicts,
        # per reported seed: the deployed model (epochs, val and clean test accuracy) and the reachable one's
        "deployed": json_artifact(study, "deployed.json"),
        "pareto": front, "best": best["key"] if best else None, "failed": _failed(study["runs"]),
        "metric_definitions": {
            schema.STREAM_ACC: "accuracy on period t of the model in service when t arrives (before any update on t)",
            schema.BWT: "GEM backward transfer: mean over i < T-1 of R[T-1][i] - R[i][i] (negative = forgetting)",
            schema.FORGETTING: "Chaudhry et al. 2018: mean over i < T-1 of max_{i<=l<T-1} R[l][i] - R[T-1][i] "
                          "(positive = forgetting)",
            schema.FWT: "forward transfer against the never-updated deployed model: mean over i >= 1 of R[i-1][i] - "
                   "initial[i] (initial = the deployed model before any update; GEM's FWT uses a random init instead)",
            schema.UPDATE_EXAMPLES: "images x epochs trained by the updates"},
    }

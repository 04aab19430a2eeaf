"""The report's numbers of the weight-space ensembles (issue 23): the WiSE-FT curves of the parent's
ensembles/wise_ft.json (harness.wise) with the chosen alpha against alpha = 1, and the soup runs (harness.soups)
against their best ingredient and the selected configuration, each a paired bootstrap on the held-out shifted images
(harness.comparisons.bootstrap: seeds and images where both sides have seeds, else "image noise only"). Pure Python."""

from __future__ import annotations

import json

from harness import comparisons, schema


def _wise(study: dict) -> dict:
    try:
        return json.loads(study["parent"]["texts"].get(schema.WISE_FT_ARTIFACT) or "{}")
    except json.JSONDecodeError:
        return {}


def _vs(a: list, b: list, names: list[str]) -> dict | None:
    """mean(a) - mean(b) under shift and on the clean subset: a and b are lists of correct.json dicts (one per seed)."""
    da, db = comparisons.per_seed(a, names), comparisons.per_seed(b, names)
    if da is None or db is None or da["n"] != db["n"]:
        return None
    return {"ood": comparisons.bootstrap(da["ood"], db["ood"]),
            "clean": comparisons.bootstrap(da["clean"], db["clean"]) if da["clean"] and db["clean"] else None,
            "seeds_a": da["seeds"], "seeds_b": db["seeds"]}


def wise(study: dict, names: list[str]) -> dict:
    """Per WiSE-FT configuration: its curve (alpha, validation, id_acc, ood_acc_mean), the chosen alpha and the
    paired chosen-vs-alpha-1 comparison (one seed: image noise only)."""
    w = _wise(study)
    out = []
    for c in w.get("configs", []):
        at = {p["alpha"]: p for p in c["points"]}
        chosen, one = at.get(c["chosen"]), at.get(1.0)
        keys = ("alpha", schema.VAL_ACC, schema.OOD_VAL_ACC, schema.ID_ACC, schema.OOD_ACC_MEAN)
        out.append({"number": c["number"], "baseline": c["baseline"], "role": c["role"], "run_id": c["run_id"],
                    "chosen": c["chosen"], "curve": [{k: p.get(k) for k in keys} for p in c["points"]],
                    "vs_ft": _vs([chosen["correct"]], [one["correct"]], names) if chosen and one else None})
    return {"alphas": w.get("alphas", []), "chosen_on": w.get("chosen_on"), "bn": w.get("bn"),
            "seconds": w.get("seconds"), "configs": out}


def soups(study: dict, best: dict | None, names: list[str]) -> list[dict]:
    """Per soup run: kind, start, ingredients, its numbers, and paired comparisons against its best ingredient (the
    ingredient with the highest search-time value: its search-time run, one seed) and the selected configuration
    (its fresh seeds when it has them: comparisons.seed_corrects)."""
    trials, reps = study["trials"], study.get("replicates", [])
    by_number = {t["number"]: t for t in trials}
    objective = schema.tag(study["parent"]["tags"], schema.TAG_OBJECTIVE, schema.VAL_ACC)
    key = schema.OBJECTIVE_METRICS.get(objective, schema.VAL_ACC_FINAL)
    out = []
    for s in study.get("soups", []):
        if s["status"] != "FINISHED":
            continue
        nums = [int(n) for n in schema.tag(s["tags"], schema.TAG_SOUP_INGREDIENTS, "").split(",") if n.strip()]
        ing = [by_number[n] for n in nums if n in by_number]
        top = max(ing, key=lambda t: (t["metrics"].get(key, -1), -t["number"])) if ing else None
        m = s["metrics"]
        out.append({"run_id": s["run_id"], "kind": schema.tag(s["tags"], schema.TAG_SOUP_KIND, ""),
                    "start": schema.tag(s["tags"], schema.TAG_SOUP_START, ""), "ingredients": nums,
                    "value": m.get(key), schema.ID_ACC: m.get(schema.ID_ACC),
                    schema.OOD_ACC_MEAN: m.get(schema.OOD_ACC_MEAN),
                    "best_ingredient": top["number"] if top else None,
                    "best_ingredient_value": top["metrics"].get(key) if top else None,
                    "vs_best_ingredient": _vs([s["correct"]], [top["correct"]], names) if top else None,
                    "vs_selected": (_vs([s["correct"]], comparisons.seed_corrects(trials, reps, best["number"]), names)
                                    if best else None)})
    return out


def summarize(study: dict, best: dict | None, names: list[str]) -> dict:
    """The report's "ensembles" block; {} for a study without WiSE-FT curves or soups (before issue 23)."""
    w, s = wise(study, names), soups(study, best, names)
    if not w["configs"] and not s:
        return {}
    parent = study["parent"]
    seconds = schema.metric(parent["metrics"], schema.ENSEMBLES_SECONDS)
    wall = ((parent["end_time"] - parent["start_time"]) / 1000 if parent.get("end_time") and parent.get("start_time")
            else None)
    return {"wise": w, "soups": s, "champion_run_id": schema.tag(parent["tags"], schema.TAG_CHAMPION_RUN_ID, None),
            "seconds": seconds, "study_seconds": wall,
            "share": seconds / wall if seconds is not None and wall else None}

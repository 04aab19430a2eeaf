"""The surgical fine-tuning reproduction's numbers (issue 23): each configuration's best on validation against full FT,
paired on the same target test images and over training seeds.

The configurations: full FT, the linear probe and LP-FT (each baseline family's best lr on validation) and every
surgical choice of the sweep at each BatchNorm mode (the (lr, epoch) of the highest validation accuracy: the
search-time trial's selected epoch under train.select_epoch = best_val). Each is read on its fresh seeds
(comparisons.seed_corrects: the search-time run, which won on validation, is left out) and compared with full FT's
fresh seeds by the two-level bootstrap over seeds and images (stats.two_level_bootstrap), on the target test images
(correct.json "test") and on the clean test images the target domain left ("sets" -> "clean"); Holm-adjusted over the
target comparisons of a study. The BN contrast: each choice run at two modes gets eval minus train, paired likewise.
Nothing here picks a winner on test: "best_val" marks the surgical choice with the highest mean validation accuracy.
Pure Python and numpy (stats); report.json carries the result under "reproduction"."""

from __future__ import annotations

from harness import comparisons, schema, stats, strategies

CLEAN = "clean"  # the target-domain study's clean test set (harness.suite)


def _bits(corrects: list, key: str) -> list[list[float]] | None:
    """Per seed, per image 0/1 of correct.json's test split ("test") or a one-step set (its name under "sets")."""
    got = [(c or {}).get("test") if key == "test" else ((c or {}).get("sets") or {}).get(key) for c in corrects]
    if not got or any(not g for g in got) or len({len(g) for g in got}) != 1:
        return None
    return [[float(ch == "1") for ch in g] for g in got]


def _choice(t: dict) -> tuple | None:
    """A surgical trial's (choice, bn): its tune_set (or "group j"), its BatchNorm mode; None for other trials."""
    p = t["params"]
    if p.get("strategy") != "surgical":
        return None
    c = p.get("tune_set") or (f"group {p['tune_group']}" if p.get("tune_group") is not None else None)
    return (str(c), str(p.get("bn", ""))) if c else None


def configurations(trials: list[dict], done: list[dict]) -> list[dict]:
    """The rows in order: full FT, linear probe, LP-FT, then each (choice, bn) in the order the sweep first ran it; each
    the best on validation of its trials (done: the completed rows, objective = validation; ties: the lower number)."""
    by_number = {t["number"]: t for t in trials if t.get("role", "trial") == "trial" and t["number"] is not None}
    ranked = sorted(done, key=lambda r: (-(r["objective"] if r["objective"] is not None else -1), r["number"]))
    out = []
    for fam in strategies.BASELINES:
        best = next((r for r in ranked if r["baseline"] == fam), None)
        if best is not None:
            out.append({"key": fam, "label": strategies.BASELINES[fam].label, "number": best["number"]})
    order = {}
    for r in sorted(done, key=lambda r: r["number"]):
        key = _choice(by_number.get(r["number"], {"params": {}}))
        if key is not None and not r["baseline"]:
            order.setdefault(key, None)
    for key in order:
        best = next(r for r in ranked if not r["baseline"] and _choice(by_number[r["number"]]) == key)
        label = f"surgical: {key[0]}" + (f" (BN {key[1]})" if key[1] else "")
        out.append({"key": "surgical", "choice": key[0], "bn": key[1], "label": label, "number": best["number"]})
    for c in out:
        t, row = by_number[c["number"]], next(r for r in done if r["number"] == c["number"])
        c.update(lr=t["params"].get("lr"), val=row["objective"],
                 epoch=t["metrics"].get(schema.SELECTED_EPOCH), bn=c.get("bn") or str(t["params"].get("bn", "")))
    return out


def summarize(study: dict, done: list[dict]) -> dict | None:
    """The reproduction table of one study: {"target", "rows": [...], "contrasts": [...], "n", "resamples"}; None when
    the study has no full FT with per-image test correctness on fresh seeds (not a reproduction study)."""
    trials = [t for t in study["trials"] if t.get("role", "trial") == "trial"]
    reps = study.get("replicates", [])
    rows = configurations(trials, done)
    ft = next((r for r in rows if r["key"] == "full_ft"), None)
    if ft is None or not any(r["key"] == "surgical" for r in rows):
        return None
    data = {}
    for r in rows:
        corrects = comparisons.seed_corrects(trials, reps, r["number"])
        data[r["number"]] = {"test": _bits(corrects, "test"), CLEAN: _bits(corrects, CLEAN)}
    base = data[ft["number"]]
    if base["test"] is None:
        return None
    for r in rows:
        d = data[r["number"]]
        r["seeds"] = len(d["test"]) if d["test"] else 0
        r["target"] = comparisons.mean_of(d["test"]) if d["test"] else None
        r["clean"] = comparisons.mean_of(d[CLEAN]) if d[CLEAN] else None
        same = r["number"] == ft["number"]
        r["vs_ft"] = None if same or not d["test"] else comparisons.bootstrap(d["test"], base["test"])
        r["clean_vs_ft"] = (None if same or not d[CLEAN] or not base[CLEAN]
                            else comparisons.bootstrap(d[CLEAN], base[CLEAN]))
    tested = [r["vs_ft"] for r in rows if r["vs_ft"]]
    for c, adj in zip(tested, stats.holm([c["p"] for c in tested])):
        c["p_holm"], c["m"] = adj, len(tested)
    surgical = [r for r in rows if r["key"] == "surgical" and r["val"] is not None]
    if surgical:
        max(surgical, key=lambda r: (r["val"], -r["number"]))["best_val"] = True
    contrasts = []
    for choice in dict.fromkeys(r["choice"] for r in surgical):
        modes = {r["bn"]: r for r in surgical if r["choice"] == choice}
        if {"eval", "train"} <= set(modes):
            a, b = data[modes["eval"]["number"]], data[modes["train"]["number"]]
            contrasts.append({"choice": choice, "eval": modes["eval"]["number"], "train": modes["train"]["number"],
                              "target": comparisons.bootstrap(a["test"], b["test"]) if a["test"] and b["test"] else None,
                              "clean": comparisons.bootstrap(a[CLEAN], b[CLEAN]) if a[CLEAN] and b[CLEAN] else None})
    target = schema.tag(study["parent"].get("tags", {}), schema.TAG_TARGET_DOMAIN, "") or "none"  # launch's tag
    return {"target": target, "rows": rows, "contrasts": contrasts, "n": len(base["test"][0]),
            "resamples": comparisons.BOOTSTRAP}

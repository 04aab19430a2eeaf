"""The one selection rule of a study: which trials are finalists, which is each baseline family's best, which
configuration is selected, and how often each finalist would be selected again under a bootstrap of the validation
images and seeds. Pure Python and numpy (no Optuna, MLflow or torch): the workers (tag_best, the replicates, the
champion through tag_best's parent tags) read their inputs from Optuna and MLflow, the report from MLflow alone, and
both call these functions on the same numbers, so `--workers` cannot make them disagree (issue 22).

The rule (RULE, in words on the report):
  1. The *search-time value* of a completed trial is its objective's validation metric (val_acc_final, or
     ood_val_acc; the first objective, val_acc_final, of a multi-objective study).
  2. Each baseline family's best is its trial with the highest search-time value.
  3. The finalists are the `finalists` trials with the highest search-time values, plus each family's best.
  4. The selected configuration is the finalist with the highest mean validation value over its seeds: the
     search-time run counts as one seed, each FINISHED replicate run (one per fresh seed) as another.
Ties, at every step, go to the higher mean, then to more seeds, then to the lower trial number: deterministic, and
independent of which process finished first (completion time broke ties before; two trials at 0.9665 were common).
The selected configuration's reported test numbers should come from its fresh seeds only (`fresh_runs`): its
search-time run won a maximum over every trial on validation, so its test numbers carry the winner's curse.
"""

from __future__ import annotations

import json
import math

import numpy as np

from harness import schema, stats

RULE = ("finalists: the top-k trials by validation plus each baseline family's best; selected: the highest mean "
        "validation over seeds (the search-time run is one seed); ties: higher mean, then more seeds, then the lower "
        "trial number")
RESAMPLES = 2000  # bootstrap resamples of selection_frequency: a share's standard error is <= 0.011


def _mean(vals) -> float:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else -math.inf


def rank_key(number: int, vals: list[float]) -> tuple:
    """The sort key of the tie rule: higher mean first, then more seeds, then the lower trial number. Means are
    compared at 12 decimals: the same accuracies summed in another order differ in the last bit (k/n with n <= 10^6
    images differs by far more than 1e-12 when it truly differs)."""
    return (-round(_mean(vals), 12), -len(vals), number)


def ranked(values: dict[int, list[float]]) -> list[int]:
    """Trial numbers, best first, by rank_key."""
    return sorted(values, key=lambda n: rank_key(n, values[n]))


def family_bests(search: dict[int, float], families: dict[int, str]) -> dict[str, int]:
    """{family: its best trial} by search-time value (rank_key on one seed each); families maps a trial to its
    baseline family (trials of no family are absent or "")."""
    out = {}
    for n in ranked({n: [v] for n, v in search.items()}):
        fam = families.get(n) or ""
        if fam and fam not in out:
            out[fam] = n
    return out


def finalists(search: dict[int, float], families: dict[int, str], k: int) -> list[int]:
    """The top k trials by search-time value, then each family's best not among them (in ranked order)."""
    order = ranked({n: [v] for n, v in search.items()})
    top = order[:max(0, k)]
    bests = set(family_bests(search, families).values())
    return top + [n for n in order if n in bests and n not in top]


def select(search: dict[int, float], families: dict[int, str], k: int,
           seeds: dict[int, list[float]] | None = None) -> int | None:
    """The selected trial: the finalist with the best rank_key over its seeds (search-time value + the values of its
    fresh seeds in `seeds`). None when no trial completed."""
    pool = finalists(search, families, k)
    if not pool:
        return None
    seeds = seeds or {}
    return ranked({n: [search[n]] + list(seeds.get(n, [])) for n in pool})[0]


def in_pool(value: float, number: int, family: str, done: dict[int, float], families: dict[int, str], k: int) -> bool:
    """Whether a trial finishing now with `value` is a finalist of the trials `done` so far plus itself: the test of
    whether its weights must be kept. A finalist at the end was one among fewer trials when it finished (its rank
    can only drop as trials are added), so keeping these keeps the weights of every possible selection."""
    search = {**done, number: value}
    fams = {**families, number: family}
    return number in finalists(search, fams, k)


def soup_wins(selected: list[list[float]], soup: list[float], ingredients: int) -> bool:
    """Whether a soup beats the selected configuration on validation with evidence: the paired two-level bootstrap
    (harness.stats) of the soup's per-image validation scores (image_scores; one model) against the selected
    configuration's, one list per seed (its search-time run and its fresh seeds), on the same validation images,
    has a 95% interval above 0. A higher mean alone is not enough: the soup's ingredients and, for the greedy soup,
    its membership were chosen on these same images, so its validation score is optimistic (the default study's
    greedy soup led by half an image of 179 and was 2 points worse under shift). A soup of one ingredient is that
    trial, already judged on its seeds: never."""
    if ingredients < 2 or not soup or not selected or any(len(x) != len(soup) for x in selected):
        return False
    out = stats.two_level_bootstrap([soup], selected, resamples=RESAMPLES, seed=0)
    return out is not None and out["ci"][0] > 0


def fresh_runs(reps: list[dict]) -> dict[int, list[dict]]:
    """{trial number: its fresh-seed runs} from its replicate runs [{"of", "seed", "status", "value", "start",
    "run_id", ...}]: FINISHED runs with a finite value, one per (trial, seed), the earliest started (a unit whose
    worker died after its run ended runs again: the same seed twice is one seed), in seed order."""
    first = {}
    for r in sorted(reps, key=lambda r: (r["start"] or 0, r["run_id"])):
        if r["status"] == "FINISHED" and r["value"] is not None and math.isfinite(r["value"]):
            first.setdefault((r["of"], r["seed"]), r)
    out: dict[int, list[dict]] = {}
    for (n, _), r in sorted(first.items()):
        out.setdefault(n, []).append(r)
    return out


def fresh_values(reps: list[dict]) -> dict[int, list[float]]:
    """{trial number: the validation values of its fresh seeds} (fresh_runs)."""
    return {n: [r["value"] for r in rs] for n, rs in fresh_runs(reps).items()}


# ------------------------------------------------------------------------------------------------------ evidence

def image_scores(val_correct: dict | None, objective: str) -> list[float] | None:
    """Per validation image, the objective's share of correct predictions from a run's val_correct.json: the clean
    validation bits (val_acc), or each image's mean over the selection shifts and severities, which share their
    images (ood_val_acc). None when the run lacks them."""
    if not val_correct:
        return None
    if objective == schema.OOD_VAL_ACC:
        sets = [bits for sev in (val_correct.get("selection") or {}).values() for bits in sev.values()]
        if not sets or len({len(b) for b in sets}) != 1:
            return None
        return [sum(b[i] == "1" for b in sets) / len(sets) for i in range(len(sets[0]))]
    bits = val_correct.get("val")
    return [float(c == "1") for c in bits] if bits else None


def selection_frequency(scores: dict[int, list[list[float]]], resamples: int = RESAMPLES,
                        seed: int = 0) -> dict[int, float]:
    """{trial number: share of bootstrap resamples in which it is selected}. scores[n] holds one list of per-image
    validation scores per seed run of trial n (the same images, in the same order, for every run). Each resample
    draws the images with replacement (one draw shared by every trial: the comparison is paired) and, for each
    trial, its seeds with replacement; a trial's value is its mean over the drawn seeds and images, and the winner
    follows rank_key (the seeds it counts are its own number of runs). Trials whose image counts differ from the
    first one's are left out (share absent)."""
    if not scores:
        return {}
    numbers = sorted(scores)
    n_img = len(scores[numbers[0]][0])
    numbers = [n for n in numbers if scores[n] and all(len(r) == n_img for r in scores[n])]
    rng = np.random.default_rng(seed)
    arrays = {n: np.asarray(scores[n], dtype=float) for n in numbers}  # runs x images
    wins = dict.fromkeys(numbers, 0)
    for _ in range(resamples):
        idx = rng.integers(0, n_img, n_img)
        vals = {}
        for n in numbers:
            a = arrays[n]
            runs = rng.integers(0, a.shape[0], a.shape[0])
            vals[n] = round(float(a[runs][:, idx].mean()), 12)  # as rank_key compares
        winner = min(numbers, key=lambda n: (-vals[n], -arrays[n].shape[0], n))
        wins[winner] += 1
    return {n: wins[n] / resamples for n in numbers}


def summary(search: dict[int, float], families: dict[int, str], k: int, seeds: dict[int, list[float]],
            runs: dict[int, list[dict]], objective: str, extended: dict | None = None) -> dict:
    """The report's selection block: the rule, the selected trial, and per finalist its mean validation over seeds,
    its seed count, its bootstrap share and its fresh-seed runs (the ones whose test numbers are free of the search's
    winner's curse). runs[n]: every run of trial n, search-time first, as {"run_id", "seed", "fresh",
    "val_correct"}; extended: the baselines' grid extension record (baseline_grid.json)."""
    pool = finalists(search, families, k)
    values = {n: [search[n]] + list(seeds.get(n, [])) for n in pool}
    chosen = ranked(values)[0] if values else None
    scores = {}
    for n in pool:
        per = [image_scores(r.get("val_correct"), objective) for r in runs.get(n, [])]
        if per and all(p is not None for p in per):
            scores[n] = per
    share = selection_frequency(scores) if len(scores) == len(pool) and scores else {}
    rows = [{"number": n, "mean_val": _mean(values[n]), "seeds": len(values[n]),
             "family": families.get(n) or "", "share": share.get(n),
             "fresh_runs": [r["run_id"] for r in runs.get(n, []) if r.get("fresh")]} for n in ranked(values)]
    return {"rule": RULE, "k": k, "selected": chosen, "finalists": rows, "resamples": RESAMPLES if share else 0,
            "extended": extended or {}}


def from_study(study: dict, done: list[dict], reps: list[dict], objective: str) -> dict:
    """summary() from the report's reading of MLflow alone (harness.results.load; numbers' rows `done` of the
    completed trials, with their "objective" value, and the replicate runs `reps`): the selected trial is the one
    tag_best names from Optuna and the same runs. k is the parent's harness.finalists tag (absent in older studies:
    1, the top trial and the families' bests)."""
    k = schema.tag(study["parent"]["tags"], schema.TAG_FINALISTS, "1")
    key = schema.OBJECTIVE_METRICS.get(objective, schema.VAL_ACC_FINAL)

    def value(r):
        v = schema.metric(r["metrics"], key)
        return float(v) if v is not None else None

    search = {r["number"]: r["objective"] for r in done if r["objective"] is not None and r["number"] is not None}
    families = {r["number"]: r["baseline"] for r in done}
    fresh = fresh_runs([{**r, "of": r["replicate_of"], "value": value(r), "start": r["start_time"]}
                        for r in reps if r["replicate_of"] is not None])
    by_number = {t["number"]: t for t in study["trials"]}
    runs = {n: [{"run_id": by_number[n]["run_id"], "seed": by_number[n].get("seed"), "fresh": False,
                 "val_correct": by_number[n].get("val_correct")}]
            + [{"run_id": r["run_id"], "seed": r["seed"], "fresh": True, "val_correct": r.get("val_correct")}
               for r in fresh.get(n, [])] for n in search}
    try:
        extended = json.loads(study["parent"]["texts"].get(schema.BASELINE_GRID_ARTIFACT) or "{}")
    except json.JSONDecodeError:
        extended = {}
    return summary(search, families, int(k) if str(k).isdigit() else 1,
                   {n: [r["value"] for r in rs] for n, rs in fresh.items()}, runs, objective, extended)

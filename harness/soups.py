"""Model soups from a study's own trials (Wortsman et al. 2022): the top study.keep_weights trials' weights kept while
the search runs, then the uniform soup and the greedy soup of the trials that share a start, each evaluated like a
trial on a child run (role soup) that names its ingredients; a soup that beats the selected configuration on
validation becomes the registered champion (harness.selection.soup_wins). Also the post-search step that runs
WiSE-FT (harness.wise) and the soups once per study.

Starts (what "share a start" means here, STARTS): every trial begins from the same pretrained body, and its head from
either the study seed's random init (full FT, the searched prefix, surgical and gradual trials: the same init for
every trial, trial.train_trial) or the converged linear probe (LP-FT). The two are different starts, never mixed in
one soup. The linear probe itself trains nothing and is no ingredient (it is WiSE-FT's theta_0)."""

from __future__ import annotations

import time
from pathlib import Path

from harness import ensembles, schema, selection, store, strategies, tracking, trial as trialmod, units

STARTS = {"random_head": "pretrained body, the study seed's random head (full FT and searched trials)",
          "probe_head": "pretrained body, the linear probe's head (LP-FT)"}


def start_of(p: dict, baseline: str) -> str | None:
    """The start a trial's training began from (STARTS), None when it trains nothing (the linear probe)."""
    entry = strategies.of(p, baseline)
    if not entry.trains:
        return None
    return "probe_head" if entry.probe_head else "random_head"


# ------------------------------------------------------------------------------------------------ keeping weights

def folder(ctx) -> Path:
    """Where a study's kept weights live: the cache, one folder per parent run (one per study on this host)."""
    return Path(ctx.cache) / "kept-weights" / ctx.parent_id


def kept(ctx) -> dict[int, Path]:
    """{trial number: its kept weights file}."""
    d = folder(ctx)
    return {int(p.stem): p for p in d.glob("*.safetensors") if p.stem.isdigit()} if d.is_dir() else {}


def keep(ctx, search: dict, number: int, value: float, p: dict, baseline: str, model) -> bool:
    """After a trial completes: keep its weights when it is among the top study.keep_weights trials by search-time
    value (search: the completed trials' values before it) and the kept files stay within study.keep_weights_mb,
    then drop kept files of trials no longer in the top k. Returns whether it was kept."""
    k, limit = ctx.cfg.study.keep_weights, ctx.cfg.study.keep_weights_mb * 2**20
    start = start_of(p, baseline)
    if k == 0 or start is None:
        return False
    top = set(selection.ranked({n: [v] for n, v in {**search, number: value}.items()})[:k])
    for n, path in kept(ctx).items():
        if n not in top:
            path.unlink(missing_ok=True)  # another worker may have dropped it already
    if number not in top:
        return False
    state = ensembles.cpu_state(model)
    size = sum(v.numel() * v.element_size() for v in state.values())
    if sum(p.stat().st_size for p in kept(ctx).values() if p.exists()) + size > limit:
        return False
    try:
        store.save_tensors(state, folder(ctx) / f"{number}.safetensors",
                           meta={"number": number, "value": value, "start": start, "baseline": baseline})
    except OSError:  # a full or read-only disk costs this ingredient, never the trial
        return False
    return True


# ------------------------------------------------------------------------------------------------ the soups

def ingredients(ctx, study) -> dict[str, list[tuple[int, float]]]:
    """{start: [(trial number, search-time value)]} of the kept weights whose trials completed, best first."""
    from harness import workers

    search, families, _ = workers.searched(study)
    params = {t.number: t.params for t in study.get_trials(deepcopy=False)}
    out: dict[str, list] = {}
    for n in kept(ctx):
        if n in search:
            start = start_of(trialmod.with_strategy(ctx.cfg, params[n], families[n]), families[n])
            if start is not None:
                out.setdefault(start, []).append((n, search[n]))
    return {s: sorted(v, key=lambda c: (-c[1], c[0])) for s, v in out.items()}


def value_of(ctx, f: trialmod.Fitted) -> float:
    """A fitted model's value on the study objective's validation metric (the greedy rule's score)."""
    if ctx.cfg.study.objective == schema.OOD_VAL_ACC:
        return trialmod.selection_metrics(f.model, ctx.suite, ctx.cfg.train.eval_batch_size,
                                          ctx.device)[schema.OOD_VAL_ACC]
    return f.val["acc"]


def log_soup(ctx, kind: str, start: str, numbers: list[int], state: dict, log) -> dict:
    """Evaluate a soup like a trial (trial.evaluate_trial) on its own child run: role soup, its kind, start and
    ingredients as tags, its metrics, correct.json and val_correct.json, and its weights (the champion may load
    them). Returns {"run_id", "value", ...}."""
    from safetensors.torch import save

    f = ensembles.fitted(ctx, state)
    final, series, sel = trialmod.evaluate_trial(f, ctx, None)
    final.pop(schema.TRAIN_SECONDS, None)  # nothing trained: its ingredients' runs hold their training time
    run = ctx.client.create_run(ctx.exp_id, run_name=f"soup-{kind}-{start}", tags={
        schema.TAG_PARENT_RUN: ctx.parent_id, schema.TAG_ROLE: schema.ROLE_SOUP,
        schema.TAG_OPTUNA_STUDY: ctx.cfg.study.name, schema.TAG_SOUP_KIND: kind, schema.TAG_SOUP_START: start,
        schema.TAG_SOUP_INGREDIENTS: ",".join(map(str, numbers)), schema.TAG_SEED: str(ctx.cfg.study.seed)})
    run_id = run.info.run_id
    trialmod.log_run(ctx, run_id, final, series, sel)
    tracking.log_bytes(ctx.client, run_id, save({k: v.contiguous() for k, v in state.items()}),
                       "model/weights.safetensors")
    tracking.end_run(ctx.client, run_id, "FINISHED")
    value = value_of(ctx, f)
    log(f"soup: {kind} of {start} ({len(numbers)} ingredient(s): trials {', '.join(map(str, numbers))}): validation "
        f"{value:.4f}, ood_acc_mean {final.get(schema.OOD_ACC_MEAN, float('nan')):.4f}")
    return {"run_id": run_id, "value": value, "kind": kind, "start": start, "ingredients": numbers}


def build(ctx, study, log=print) -> list[dict]:
    """The uniform and the greedy soup of each start with >= 2 kept ingredients, logged (log_soup)."""
    from safetensors.torch import load_file

    out = []
    for start, cands in ingredients(ctx, study).items():
        if len(cands) < 2:
            continue
        states = {n: load_file(str(kept(ctx)[n])) for n, _ in cands}
        scores = {}

        def score(keys):
            k = tuple(sorted(keys))
            if k not in scores:
                scores[k] = value_of(ctx, ensembles.fitted(ctx, ensembles.average([states[n] for n in keys])))
            return scores[k]

        numbers = [n for n, _ in cands]
        out.append(log_soup(ctx, "uniform", start, numbers, ensembles.average([states[n] for n in numbers]), log))
        g = ensembles.greedy(cands, score)
        out.append(log_soup(ctx, "greedy", start, g["ingredients"],
                            ensembles.average([states[n] for n in g["ingredients"]]), log))
    return out


def crown(ctx, study, soups: list[dict], log=print) -> str | None:
    """The parent's champion tag: the best soup's run when it beats the selected configuration on validation with
    evidence (harness.selection.soup_wins: paired over the selected's runs and the validation images), else cleared
    to the selected trial. Returns the soup's run id or None."""
    from harness import workers

    chosen = workers.selected(ctx, study)
    if ctx.client.get_run(ctx.parent_id).data.tags.get(schema.TAG_CHAMPION_RUN_ID):
        ctx.client.delete_tag(ctx.parent_id, schema.TAG_CHAMPION_RUN_ID)  # an earlier round's soup: judged again
    if chosen is None or not soups:
        return None
    search, _, run_ids = workers.searched(study)
    soups = [s for s in soups if len(s["ingredients"]) >= 2]  # one ingredient: a trial, not an ensemble
    if not soups:
        return None
    best = max(soups, key=lambda s: (round(s["value"], 12), s["kind"] == "greedy"))
    fresh = ctx.client.search_runs([ctx.exp_id], f"tags.`{schema.TAG_PARENT_RUN}` = '{ctx.parent_id}' and "
                                                 f"tags.`{schema.TAG_ROLE}` = '{schema.ROLE_REPLICATE}' and "
                                                 f"tags.`{schema.TAG_REPLICATE_OF}` = '{chosen}'", max_results=1000)
    runs = [run_ids[chosen]] + [r.info.run_id for r in fresh if r.info.status == "FINISHED"]
    selected = [val_scores(ctx, rid) for rid in runs]
    soup = val_scores(ctx, best["run_id"])
    if None in selected or soup is None or not selection.soup_wins(selected, soup, len(best["ingredients"])):
        log(f"soup: the {best['kind']} soup ({best['start']}, validation {best['value']:.4f}) does not beat trial "
            f"{chosen} on validation with evidence (paired interval over its {len(runs)} run(s) and the images): "
            f"the champion stays the selected trial")
        return None
    tracking.set_tags(ctx.client, ctx.parent_id, {schema.TAG_CHAMPION_RUN_ID: best["run_id"]})
    log(f"soup: the {best['kind']} soup ({best['start']}) beats trial {chosen} on validation, its paired interval "
        f"over {len(runs)} run(s) and the images above 0: it is the champion")
    return best["run_id"]


def val_scores(ctx, run_id: str) -> list[float] | None:
    """A run's per-image validation scores under the study's objective (its val_correct.json; selection.image_scores)."""
    import json

    from harness import results

    raw = results.artifact(ctx.client, run_id, schema.VAL_CORRECT_ARTIFACT)
    return selection.image_scores(json.loads(raw) if raw else None, ctx.cfg.study.objective)


def after_search(ctx, study, log=print) -> None:
    """WiSE-FT and the soups, once per set of finished trials across the study's processes (harness.units), timed on
    the parent run (ensembles_seconds). A failure is a warning: the trials and the selection stand."""
    from harness import wise

    def work():
        t0 = time.perf_counter()
        try:
            for r in ctx.client.search_runs([ctx.exp_id], f"tags.`{schema.TAG_PARENT_RUN}` = '{ctx.parent_id}' and "
                                                          f"tags.`{schema.TAG_ROLE}` = '{schema.ROLE_SOUP}'"):
                ctx.client.delete_run(r.info.run_id)  # a resumed study's earlier soups: rebuilt from every trial now
            if ctx.cfg.study.wise_ft:
                wise.run(ctx, study, log)
            crown(ctx, study, build(ctx, study, log), log)
        except Exception as e:  # noqa: BLE001 - the ensembles add to a finished study, never fail it
            log(store.redact(f"warning: weight-space ensembles not built ({type(e).__name__}: {e})"))
        tracking.log_metrics(ctx.client, ctx.parent_id, {schema.ENSEMBLES_SECONDS: time.perf_counter() - t0})

    from harness import workers

    search, _, _ = workers.searched(study)
    name = "ensembles-" + store.cache_key(sorted(search))
    while units.once(study, name, work) is None:
        time.sleep(0.5)

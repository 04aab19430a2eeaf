"""Corruption errors (Hendrycks & Dietterich 2019) against the study's fixed reference, the tuned full fine-tuning
baseline: per corruption, pooled over corruptions, over CIFAR-10-C's 15, and backfilled on trials that finished first."""

from __future__ import annotations

import optuna

from harness import schema, shifts, tracking


def corruption_errors(clean_acc: float, curves: dict, reference: dict | None, id_acc: float | None = None,
                      files=()) -> dict:
    """Corruption errors per test shift (Hendrycks & Dietterich 2019) with the study's tuned full fine-tuning baseline
    in AlexNet's place (ce_reference): CE_c = sum_s E_s,c / sum_s E_ref_s,c, and relative CE_c = sum_s (E_s,c -
    E_clean) / sum_s (E_ref_s,c - E_ref_clean), the clean error measured on the same images as the shifted sets
    (for `files`, the real CIFAR-10-C sets, whose images are the whole test split: id_acc's error, the reference's
    likewise). mce and relative_mce pool the sums over corruptions (sum_c sum_s E / sum_c sum_s E_ref) rather than
    averaging per-corruption ratios: a tuned reference can be nearly perfect on one corruption of a few hundred
    images, and a ratio over 1-2 errors (or a degradation near 0) is noise, which made relative mCE 6-10 in the
    default study before issue 11. rce is logged only where the reference degrades (sum of drops > 0). The
    *_benchmark versions pool CIFAR-10-C's 15 corruptions (shifts.BENCHMARK), only when all 15 are test shifts (and
    *_benchmark_files the same over shifts.files' c10c.<corruption> sets).
    reference = {"clean_acc", "id_acc", "shift_acc": {name: {sev: acc}}}; None until it is settled: {}."""
    if not reference:
        return {}
    out, sums = {}, {}  # name -> (errors, reference errors, drops, reference drops), each summed over severities
    for name, cv in curves.items():
        ref = reference["shift_acc"].get(name)
        if not ref or set(map(str, cv)) != set(ref):
            continue
        own_clean, ref_clean = ((id_acc, reference.get(schema.ID_ACC)) if name in files
                                else (clean_acc, reference["clean_acc"]))
        err, ref_err = sum(1 - c["acc"] for c in cv.values()), sum(1 - a for a in ref.values())
        if own_clean is None or ref_clean is None:
            rel = ref_rel = 0.0
        else:
            rel, ref_rel = sum(own_clean - c["acc"] for c in cv.values()), sum(ref_clean - a for a in ref.values())
        sums[name] = (err, ref_err, rel, ref_rel)
        if ref_err > 0:
            out[schema.shift_key(name, "ce")] = err / ref_err
        if ref_rel > 0:
            out[schema.shift_key(name, "rce")] = rel / ref_rel

    def pooled(names, pool):
        err, ref_err, rel, ref_rel = (sum(x) for x in zip(*(sums[n] for n in names)))
        mce, relative = schema.CE_POOLS[pool]
        if ref_err > 0:
            out[mce] = err / ref_err
        if ref_rel > 0:
            out[relative] = rel / ref_rel

    if sums:
        pooled(list(sums), "test")
    for prefix, pool in (("", "benchmark"), ("c10c.", "benchmark_files")):
        names = [prefix + c for c in shifts.BENCHMARK]
        if all(n in sums for n in names):
            pooled(names, pool)
    return out


def ce_reference(trials) -> dict | None:
    """The corruption-error reference: the tuned full fine-tuning baseline, i.e. of the full_ft sweep the completed
    trial with the highest val_acc_final (ties: the lower number). None while a full_ft trial is still waiting or
    running (the best is not known yet) or when none completed."""
    fam = [t for t in trials if t.user_attrs.get(schema.ATTR_BASELINE) == "full_ft"]
    live = (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)
    if not fam or any(t.state in live for t in fam):
        return None
    done = [t for t in fam if t.state == optuna.trial.TrialState.COMPLETE and schema.ATTR_SHIFT_ACC in t.user_attrs
            and schema.VAL_ACC_FINAL in t.user_attrs]
    if not done:
        return None
    best = min(done, key=lambda t: (-t.user_attrs[schema.VAL_ACC_FINAL], t.number))
    a = best.user_attrs
    return {"number": best.number, "run_id": a.get(schema.ATTR_RUN_ID), "shift_acc": a[schema.ATTR_SHIFT_ACC],
            "clean_acc": a.get(schema.CLEAN_SUBSET_ACC, a[schema.ID_ACC]), schema.ID_ACC: a[schema.ID_ACC]}


def _ce_curves(shift_acc: dict, corruptions) -> dict:
    return {name: {sev: {"acc": a} for sev, a in accs.items()} for name, accs in shift_acc.items() if name in corruptions}


def backfill_corruption_errors(study: optuna.Study, client, corruptions: list[str], files=()) -> int:
    """CE needs the settled reference (ce_reference), so trials that finished before the full_ft sweep did (full FT
    itself, and with --workers any trial) got none. Log CE/mCE on every completed trial whose run does not carry the
    reference's run id yet (tag harness.ce_reference). Returns how many runs got theirs."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ref = ce_reference(study.get_trials(deepcopy=False))
    if ref is None:
        return 0
    n = 0
    for t in done:
        run_id = t.user_attrs.get(schema.ATTR_RUN_ID)
        if (t.user_attrs.get(schema.ATTR_CE_REFERENCE) == ref["run_id"] or schema.ATTR_SHIFT_ACC not in t.user_attrs
                or not run_id):
            continue
        tags = client.get_run(run_id).data.tags
        if schema.tag(tags, schema.TAG_CE_REFERENCE) == ref["run_id"]:  # an earlier backfill did it
            continue
        clean = t.user_attrs.get(schema.CLEAN_SUBSET_ACC, t.user_attrs[schema.ID_ACC])
        ce = corruption_errors(clean, _ce_curves(t.user_attrs[schema.ATTR_SHIFT_ACC], corruptions), ref,
                               t.user_attrs[schema.ID_ACC], files)
        if ce:
            tracking.log_metrics(client, run_id, ce)
            tracking.set_tags(client, run_id, {schema.TAG_CE_REFERENCE: ref["run_id"]})
            n += 1
    return n

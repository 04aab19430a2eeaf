"""Corruption errors as Hendrycks & Dietterich 2019 publish them, against the study's fixed reference (the tuned full
fine-tuning baseline): per corruption, their mean over the CIFAR-10-C benchmark corruptions, and the backfill of
trials that finished first."""

from __future__ import annotations

import optuna

from harness import schema, shifts, tracking
from harness.suite import FILES_PREFIX


def corruption_errors(clean_acc: float | None, curves: dict, reference: dict | None,
                      files_clean_acc: float | None = None, files=()) -> dict:
    """Corruption errors of Hendrycks & Dietterich 2019 with the study's tuned full fine-tuning baseline in AlexNet's
    place (ce_reference), E the error (1 - accuracy):
    CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c} and relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^ref_{s,c} -
    E^ref_clean) for every test shift c in `curves`, the clean error on the same images as the shifted sets:
    clean_acc's (clean_subset_acc) for the simulated shifts, files_clean_acc's (clean_files_acc) for `files`, the
    shifts.files sets (c10c.<corruption>); no same-image clean error, no relative CE.
    mCE and relative mCE are the plain means of CE_c and relative CE_c over CIFAR-10-C's 15 benchmark corruptions
    (shifts.BENCHMARK) among the test shifts: geometric shifts (rotate, translate) and the 4 extra corruptions never
    enter them; logged when every such corruption has its CE_c (or relative CE_c: the reference must degrade on each,
    sum of drops > 0), and separately for the files (mce_files). mce_pooled keeps the pre-issue-22 ratio of sums
    over mce's corruptions, sum_c sum_s E / sum_c sum_s E^ref, steadier where the reference makes 1-2 errors on one
    corruption, but not the published mCE (relative_mce_pooled likewise with the drops).
    reference = {"clean_acc", "files_clean_acc", "shift_acc": {name: {sev: acc}}}; None until it is settled: {}."""
    if not reference:
        return {}
    out, sums = {}, {}  # name -> (errors, reference errors, drops, reference drops), each summed over severities
    for name, cv in curves.items():
        ref = reference["shift_acc"].get(name)
        if not ref or set(map(str, cv)) != set(ref):
            continue
        own_clean, ref_clean = ((files_clean_acc, reference.get("files_clean_acc")) if name in files
                                else (clean_acc, reference.get("clean_acc")))
        err, ref_err = sum(1 - c["acc"] for c in cv.values()), sum(1 - a for a in ref.values())
        rel = ref_rel = None
        if ref_err > 0:
            out[schema.shift_key(name, "ce")] = err / ref_err
        if own_clean is not None and ref_clean is not None:
            rel, ref_rel = sum(own_clean - c["acc"] for c in cv.values()), sum(ref_clean - a for a in ref.values())
            if ref_rel > 0:
                out[schema.shift_key(name, "rce")] = rel / ref_rel
        sums[name] = (err, ref_err, rel, ref_rel)
    for prefix, (mce, relative) in (("", schema.CE_MEANS["test"]), (FILES_PREFIX, schema.CE_MEANS["files"])):
        names = [prefix + c for c in shifts.BENCHMARK if prefix + c in sums]
        for key, what in ((mce, "ce"), (relative, "rce")):
            values = [out.get(schema.shift_key(n, what)) for n in names]
            if names and None not in values:
                out[key] = sum(values) / len(values)
        if prefix == "" and names:
            for key, (i, j) in zip(schema.CE_POOLED, ((0, 1), (2, 3))):
                own, ref = [sums[n][i] for n in names], [sums[n][j] for n in names]
                if None not in own and None not in ref and sum(ref) > 0:
                    out[key] = sum(own) / sum(ref)
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
            "clean_acc": a.get(schema.CLEAN_SUBSET_ACC), "files_clean_acc": a.get(schema.CLEAN_FILES_ACC)}


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
        ce = corruption_errors(t.user_attrs.get(schema.CLEAN_SUBSET_ACC),
                               _ce_curves(t.user_attrs[schema.ATTR_SHIFT_ACC], corruptions), ref,
                               t.user_attrs.get(schema.CLEAN_FILES_ACC), files)
        if ce:
            tracking.log_metrics(client, run_id, ce)
            tracking.set_tags(client, run_id, {schema.TAG_CE_REFERENCE: ref["run_id"]})
            n += 1
    return n

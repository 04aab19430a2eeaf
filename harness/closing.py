"""The end of a study on record: the selected model registered, the parent run's description, the UI's links to the
study, and the report."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from harness import champion, config, context, links, records, schema, store, tracking, units


def publish_model(ctx: context.Context, log=print, study: optuna.Study | None = None) -> dict | None:
    """The selected trial's model, logged and registered (champion.publish), once across the study's processes: under
    the claim champion-<run id> (harness.units), so launchers ending together register one version, not one each
    (three launchers of one study made versions 1, 2 and 3 of the same run). A failure costs a warning: the trials
    and the weights artifact are safe."""
    got = []

    def publish():
        try:
            got.append(champion.publish(ctx, log))
        except Exception as e:  # noqa: BLE001
            log(f"warning: the selected model was not registered ({type(e).__name__}: {e})")
            got.append(None)

    tags = ctx.client.get_run(ctx.parent_id).data.tags
    best = tags.get(schema.TAG_CHAMPION_RUN_ID) or tags.get(schema.TAG_BEST_RUN_ID)  # a winning soup, else the selected
    if study is not None and best:
        while units.once(study, f"champion-{best}", publish) is None:  # another launcher registers it now
            time.sleep(0.5)
    if not got:  # registered by another process (champion then points at it: nothing new), or no claim to take
        publish()
    out = got[0]
    if out and out["new"]:
        log(f"model: {out['name']} version {out['version']} (alias champion) from run {out['run_id']} "
            f"in {out['seconds']:.1f} s")
    return out


def selected_trial(ctx: context.Context, study: optuna.Study) -> dict | None:
    """The selected trial (the parent's harness.best_run_id) as the parent's description needs it."""
    run_id = ctx.client.get_run(ctx.parent_id).data.tags.get(schema.TAG_BEST_RUN_ID)
    if not run_id:
        return None
    run = ctx.client.get_run(run_id)
    params = {k: v for k, v in run.data.params.items() if k in schema.TRIAL_PARAMS}  # strings; strategy() casts
    return {"run_id": run_id, "run_name": run.info.run_name,
            "strategy": records.strategy(params, ctx.cfg.train.epochs, ctx.n_groups,
                                         run.data.tags.get(schema.TAG_BASELINE, "")),
            **{k: run.data.metrics.get(k) for k in (schema.ID_ACC, schema.OOD_ACC_MEAN, schema.OOD_ACC_WORST)}}


def describe_parent(ctx: context.Context, study: optuna.Study, model: dict | None) -> None:
    """The parent run's description (mlflow.note.content): counts, selection, model, report."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    base = links.ui_base(ctx.uri)
    report = (links.artifact_url(base, ctx.exp_id, ctx.parent_id, "report/index.html") if base
              else "report/index.html") if ctx.cfg.study.report else None
    obj = "val_acc + ood_val_acc" if ctx.cfg.study.objective == "multi" else ctx.cfg.study.objective
    tracking.set_description(ctx.client, ctx.parent_id, records.study_description(
        ctx.cfg.study.name, counts, obj, selected_trial(ctx, study), model, report))


def ui_urls(ctx: context.Context, study: optuna.Study, base: str) -> dict:
    """The study's runs view and a comparison of the selected trial with the baselines, in the UI at `base`."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = ctx.client.get_run(ctx.parent_id).data.tags.get(schema.TAG_BEST_RUN_ID)
    ids = ([best] if best else []) + [t.user_attrs[schema.ATTR_RUN_ID] for t in done
                                      if t.user_attrs.get(schema.ATTR_BASELINE) and schema.ATTR_RUN_ID in t.user_attrs]
    order = schema.OOD_VAL_ACC if ctx.cfg.study.objective == schema.OOD_VAL_ACC else schema.VAL_ACC_FINAL  # the objective
    out = {"runs": links.runs_url(base, ctx.exp_id, ctx.cfg.study.name, order)}
    if len(set(ids)) > 1:
        out["compare"] = links.compare_url(base, ctx.exp_id, ids)
    return out


def write_report(cfg: config.Config, uri: str, log) -> None:
    """The report at the end of a study (harness.study's or harness.sustain's). Its failure must not turn a finished
    study into an error: the runs are safe in MLflow and `python -m harness.report` rebuilds it."""
    from harness import report  # matplotlib and friends: only when a report is written

    try:
        log(f"report: {report.build([cfg.study.name], tracking_uri=uri, storage=cfg.study.storage or None)}")
    except Exception as e:  # noqa: BLE001
        log(store.redact(f"warning: the report could not be written ({type(e).__name__}: {e}); rebuild it with ")
            + store.command_line("python", "-m", "harness.report", "--study-name", cfg.study.name, "--tracking-uri", uri))

"""`python -m harness.study`: run (or resume) an Optuna study whose trials fine-tune for real, tracked in MLflow."""

from __future__ import annotations

import argparse
import sys
import time

import optuna
from mlflow.exceptions import MlflowException
from optuna.trial import TrialState

from harness import closing, config, context, fingerprint, flags, launch, links, schema, stopping, store, strategies
from harness import tracking
from harness import trial as trialmod
from harness.config import ConfigError


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m harness.study", description=__doc__.split(": ", 1)[1],
                                 epilog="Exit codes: 0 success; 1 runtime failure (including a study that stopped "
                                 "short of its target); 2 bad input (nothing created); 3 the target was reached but a "
                                 "--workers process crashed (its trial was failed and retried; the summary line "
                                 "'crashed workers: N' says which). Printed commands are shell-quoted, passwords "
                                 "shown as ***.")
    flags.add_common_args(ap)
    ap.add_argument("--allow-changes", metavar="KEY[,KEY]", default="",
                    help="resume the study although these config keys changed, where that is safe: widening a search "
                    f"range or adding choices ({', '.join(fingerprint.EXTENDABLE)}); recorded on the parent run. Any "
                    "other change of what makes trials comparable exits 2: choose a new --study-name")
    return ap.parse_args(argv)


# -------------------------------------------------------------------------------------------- summary

def summary(ctx: context.Context, study: optuna.Study, wall: float, log=print) -> None:
    """Counts, the top trials, and the commands that open the UI and rebuild the report."""
    cfg = ctx.cfg
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    log(f"\nstudy {cfg.study.name!r}: {counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed, {counts['running']} running; this run took {wall:.0f} s")
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    done.sort(key=lambda t: -t.values[0])
    obj = "val_acc,ood_val_acc" if cfg.study.objective == "multi" else cfg.study.objective
    log(f"\n{'trial':>5} {'baseline':<13} {'lr':>9} {'freeze':>6} {'unfreeze':>8} {obj:>12} {schema.ID_ACC:>7} {'ood_acc':>7}")
    for t in done[:8]:
        baseline = t.user_attrs.get(schema.ATTR_BASELINE, "")
        p = trialmod.with_strategy(cfg, t.params, baseline)
        k, when = strategies.of(p, baseline).words(p, cfg.train.epochs)["cells"]  # its strategy in the two columns
        log(f"{t.number:>5} {t.user_attrs.get(schema.ATTR_BASELINE, ''):<13} {t.params.get('lr', float('nan')):>9.2e} {k:>6} {when:>8} "
            f"{', '.join(f'{v:.4f}' for v in t.values):>12} {t.user_attrs.get(schema.ID_ACC, float('nan')):>7.4f} "
            f"{t.user_attrs.get(schema.OOD_ACC_MEAN, float('nan')):>7.4f}")
    base = links.ui_base(ctx.uri)
    urls = closing.ui_urls(ctx, study, base or links.local_base())
    where = "in the MLflow UI" if base else "in the MLflow UI once python -m harness.ui serves it"
    log(f"\nthe study's runs {where}:\n  {urls['runs']}"
        + (f"\nthe selected trial against the baselines:\n  {urls['compare']}" if "compare" in urls else ""))
    log(hints(cfg, ctx.uri))


def hints(cfg: config.Config, uri: str) -> str:
    """The commands that open the UI and rebuild the report, shell-quoted and redacted (a password shows as ***:
    put it back, or use a ~/.pgpass file / MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)."""
    report = ["python", "-m", "harness.report", "--study-name", cfg.study.name, "--tracking-uri", uri]
    report += ["--storage", cfg.study.storage] if cfg.study.storage else []
    note = ("\n(passwords are shown as ***)" if store.redact(uri + " " + cfg.study.storage) != uri + " " + cfg.study.storage
            else "")
    return ("\nopen the MLflow UI on this store:\n"
            f"  {store.command_line('python', '-m', 'harness.ui', '--tracking-uri', uri)}\n"
            f"  (or: {store.command_line('mlflow', 'ui', '--backend-store-uri', uri)})\n"
            f"rebuild the report:\n  {store.command_line(*report)}{note}")


def finish(cfg: config.Config, done: launch.Outcome, log=print) -> int:
    """The end of the command: the summary, the crashed workers, the report, and the exit code with its reason."""
    summary(done.ctx, done.study, time.perf_counter() - done.started, log)
    if cfg.study.workers > 1:
        log(f"crashed workers: {len(done.crashed)}" + (f" ({'; '.join(done.crashed)})" if done.crashed else ""))
    if cfg.study.report:
        closing.write_report(cfg, done.ctx.uri, log)
    if done.code == 1:
        print(f"error: the study stopped at {done.finished} of {cfg.study.n_trials} finished trials (see the failures "
              f"above); re-run the same command to continue it", file=sys.stderr)
    elif done.code == launch.EXIT_WORKER_CRASHED:
        print(f"error: the study reached its {cfg.study.n_trials} finished trials, but {len(done.crashed)} worker "
              f"process(es) crashed ({'; '.join(done.crashed)}); their trials were failed and retried (exit code "
              f"{launch.EXIT_WORKER_CRASHED})", file=sys.stderr)
    return done.code


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = flags.load_config(args)
        n_groups = launch.preflight(cfg)
    except ConfigError as e:
        print(store.redact(f"error: {e}"), file=sys.stderr)
        return 2
    stopping.install()  # SIGTERM and SIGINT: Interrupted, wound down below
    try:
        if tracking.existing_role(cfg.study.tracking_uri or store.default_tracking_uri(), cfg.study.name) == "sustain":
            print(f"error: study.name: {cfg.study.name!r} is the MLflow experiment of a sustain study (python -m "
                  f"harness.sustain); choose another --study-name", file=sys.stderr)
            return 2
        try:  # the stores agree about the study and a resume keeps its identity, before anything is created
            resume = fingerprint.check(cfg, args.allow_changes.split(","))
        except ConfigError as e:
            print(store.redact(f"error: {e}"), file=sys.stderr)
            return 2
        return finish(cfg, launch.run(cfg, n_groups, resume=resume))
    except stopping.Interrupted as e:
        try:
            n = stopping.wind_down(e)
        except Exception as err:  # noqa: BLE001 - a store gone with the signal: the next run recovers the trials
            n = f"? ({type(err).__name__}; the next run recovers them)"
        print(store.redact(f"\n{e.reason}: {n} running trial(s) failed and re-queued, the study's run ended KILLED; "
                           f"re-run the same command to resume the study"), file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("\ninterrupted: re-run the same command to resume the study", file=sys.stderr)
        return 130
    except (ConnectionError, OSError, RuntimeError, ValueError, optuna.exceptions.OptunaError, MlflowException) as e:
        print(store.redact(f"error: {type(e).__name__}: {e}"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

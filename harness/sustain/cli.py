"""`python -m harness.sustain`: replay a drifting data stream under re-fine-tuning policies (never, every k periods,
monitor-triggered) and measure accuracy kept against update cost, tracked in MLflow; Optuna can search the policy.

Protocol (Wild-Time Eval-Stream, CLEAR "test on the near future"; notes/science.md section 5). A stream is T periods
(0-based t = 0..T-1) drawn from the target split of the data. The train split is cut per replicate seed, stratified
by class, into two disjoint parts (stream.pool_fraction): the deployed model's training images and the stream pool. Period
t brings a labelled batch (`stream.labelled` images of the stream pool, never seen by the deployed model) and an
evaluation set (`stream.eval_size` images of the reported half of the test split; the default's 90 are all of it, in
order, so every period and seed evaluates the same images), both put through the period's shift (a severity ramp
of a corruption, a rotation ramp, a drifting class prior, or a recurring A/B shift). So the accuracy monitor's
reference is held-out accuracy, not training accuracy, and an update learns from images the model has not seen.
The test split is halved once per study (stratified, seeded by study.seed, artifact eval_halves.json): a policy
search's streams evaluate on the search half only, reported streams on the other, so no image a search selected on
is reported. The deployed model at t = 0 is the pretrained model fully fine-tuned on its clean half, early-stopped on
clean validation accuracy (at most stream.init_epochs, patience stream.init_patience, best epoch kept); the same
recipe on the whole train split is the best reachable model, and deployed.json holds both (epochs, best epoch,
validation and clean test accuracy) and their gap per seed. With stream.control (default true) every reported policy
is also replayed on the stream's no-drift control: the same periods, labelled batches and evaluation images with no
shift (severity 0, no prior drift), so the report separates the gain from adapting to drift (drift gain over never
minus control gain over never) from the gain of more training. At each period the
deployed model is first evaluated on the period (its near-future accuracy), then the policy decides whether to update
it; an update fine-tunes on the period's labelled batch plus the `replay` previous ones (lr, freeze_layers, epochs
of its own). After every period the model is evaluated on every period's evaluation set: R[i][j] is the accuracy on
period j of the model after period i (after its update, if any), and `initial`[j] that of the deployed model.

Metrics (0-based, T periods):
  stream_acc[t]   = R[t-1][t] (initial[0] at t = 0): the model in service when period t arrives, before any update
                    on t. stream_acc_mean and stream_acc_worst are its mean and minimum over t.
  bwt             = GEM backward transfer (Lopez-Paz & Ranzato 2017), 1/(T-1) sum_{i<T-1} (R[T-1][i] - R[i][i]),
                    against the accuracy right after period i; negative = forgetting.
  forgetting      = Chaudhry et al. 2018 (RWalk) forgetting, 1/(T-1) sum_{i<T-1} (max_{i<=l<T-1} R[l][i] - R[T-1][i]),
                    against the best accuracy on period i at any point after it arrived; positive = forgetting, and
                    >= -bwt (equal when the accuracy on every period peaked right after it).
  fwt             = forward transfer against the never-updated deployed model (not GEM's random-init baseline),
                    1/(T-1) sum_{i>=1} (R[i-1][i] - initial[i]), relative to the deployed
                    (pretrained and fine-tuned, never updated) model instead of a random init. never: bwt = fwt = 0.
  n_updates, update_seconds (wall clock of the update fine-tunes), update_examples (images x epochs trained).
A policy run that raises (a diverging update: non-finite loss, FloatingPointError; or any other error) ends its child
run FAILED with tag harness.fail_reason; the other policies and seeds go on, and the command exits 1 naming the
failures (search mode: the Optuna trial fails, the search goes on).

Policies: never; every (updates at periods k-1, 2k-1, ..., i.e. (t + 1) % k == 0: floor(T / k) updates); accuracy
(labelled-window monitor: fires when the mean labelled accuracy of the last `window` periods is more than `drop`
points below the reference, the labelled accuracy on the first period after the last update or deployment);
embedding (unlabelled monitor, Evidently's domain classifier: logistic regression on penultimate-layer features of
the period's evaluation inputs vs the reference inputs, 2-fold cross-fitted 50/50 split, fires when ROC AUC > `auc`
and above the no-drift noise floor of the sample sizes, ~0.61 at 150 inputs a side: see policies.auc_noise_floor; the
threshold used is logged per period as monitor_threshold);
mmd (unbiased MMD^2 with an RBF kernel, median-heuristic bandwidth, on the same features; fires above `mmd`). The
reference inputs are the clean validation inputs for the deployed model, then the evaluation inputs of the period
of the last update. Every policy lives in one registry, harness.sustain.policies.POLICIES.

MLflow layout (written only through harness.tracking):
  experiment      study.name (e.g. "sustain-default"), tag harness.study_name
  parent run      run name = study.name; tags harness.role=sustain, optuna.study_name, harness.git_sha,
                  harness.stream (kind), harness.policies, harness.seeds; params = the resolved config (flat, on
                  creation); artifacts config/resolved.toml, versions.json, stream.json (period recipes per seed),
                  summary.json (per policy: mean and std over seeds of the final metrics, and the child run ids),
                  deployed.json (per reported seed: the deployed and the reachable model), eval_halves.json (the
                  test-split indices of the search and the reported half); tags harness.load_average, harness.cpu_count.
                  Reused when the same study name runs again; an experiment that holds a regular study
                  (harness.study) is refused (exit 2). At the end the report is written and logged as
                  report/index.html and report/report.json (`python -m harness.report --study-name NAME` rebuilds it).
  child run       one per (policy, seed, stream variant), run name policy-<label>-seed<s>, with suffix -control on
                  the control stream (tag harness.stream_variant drift | control) (label: never, every<k>, accuracy,
                  embedding, mmd); in search mode trial-<NNNN>-<label>-seed<s> on the search seeds (each reported
                  seed + 10000: selection never sees the reported streams), then the best trial(s) replayed on the
                  reported seeds as policy-<label>-seed<s> with tag harness.search_trial. Tags mlflow.parentRunId,
                  harness.role=sustain_policy, harness.policy=<label>, harness.seed, harness.sustain_key (hash of
                  everything that determines the result), harness.update_periods ("2,5,8"), optuna.study_name,
                  optuna.trial_number (-1 outside search mode).
                  Params: policy, k, threshold, window, lr, freeze_layers, epochs, replay, stream, shift, periods, seed
                  ("none" where a policy has no such setting: k outside every, threshold for never/every).
                  Metrics with step = period: stream_acc, labelled_acc, updated (0/1), monitor (drop in points, AUC
                  or MMD^2; triggered policies only), monitor_threshold (what monitor was compared with; triggered
                  policies only; tag harness.threshold_used lists its distinct values). Final metrics:
                  stream_acc_mean, stream_acc_worst, bwt, forgetting, fwt, n_updates, update_seconds,
                  update_examples. Artifact accuracy_matrix.json: R, initial, stream_correct (per period, 0/1 per
                  evaluation image: the paired comparisons' cells), eval_idx (their test-split indices), variant,
                  stream_acc, updated, monitor, periods (recipes) and the definitions above (in harness.schema's
                  words).
A non-search run that finds a FINISHED child with the same harness.sustain_key reuses it instead of replaying it
again, so a killed run is finished by running it again and `--seeds 0,1,2` after `--seed 0` adds seeds 1 and 2.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import optuna

from harness import bookkeeping, closing, config, context, flags, launch, schema, shifts, store, tracking
from harness.config import ConfigError
from harness.sustain import policies, replay, search, streams

DEFAULT_CONFIG = config.ROOT / "studies" / "sustain.toml"


# ---------------------------------------------------------------------------------------------------- arguments

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m harness.sustain",
                                 description=" ".join(__doc__.split("\n\n")[0].split()).split(": ", 1)[1],
                                 epilog="Config section [stream]; default config studies/sustain.toml. Exit codes: 0 "
                                        "success, 1 runtime failure or a failed policy run (the others finish, the "
                                        "report is written), 2 bad input (nothing created).")
    flags.add_common_args(ap, help={  # the shared flags, in this command's terms
        "--config": "study TOML file with a [stream] section (default: studies/sustain.toml)",
        "--n-trials": "stream.search = true: the number of completed Optuna trials to reach (failed ones do not "
                      "count; at most that many attempts per run); re-running resumes the search",
        "--study-name": "study name (MLflow experiment); re-running with the same name reuses its finished policy "
                        "runs. Not the name of a regular study"})
    ap.add_argument("--seeds", help="comma-separated replicate seeds, e.g. 0,1,2 (sets stream.seeds)")
    ap.add_argument("--markdown", metavar="REPORT_JSON", help="write the README's sustainability tables from a sustain "
                    "report's JSON (e.g. reports/sustain-default/report.json) instead of running: to standard output, "
                    "or into --out's generated block")
    ap.add_argument("--out", help="with --markdown: the .md file whose sustain block is replaced (e.g. README.md)")
    return ap.parse_args(argv)


def load_config(args) -> config.Config:
    args = copy.copy(args)
    args.config = args.config or str(DEFAULT_CONFIG)
    if args.seeds is not None:
        try:
            seeds = [int(v) for v in args.seeds.split(",")]
        except ValueError:
            raise ConfigError("--seeds", f"expected comma-separated integers such as 0,1,2, got {args.seeds!r}") from None
        args.set = list(args.set) + [f"stream.seeds={seeds}"]
    return flags.load_config(args)


def preflight(cfg: config.Config) -> int:
    """The study's checks plus the stream's; returns the number of freezable layer groups. Policy names are checked
    against the registry (harness.sustain.policies.POLICIES), the one list of them."""
    st = cfg.stream
    for key in ("policies", "search_policies"):
        for name in getattr(st, key):
            if name not in policies.POLICIES:
                raise ConfigError(f"stream.{key}", f"{name!r} is not allowed; choose one of: "
                                  f"{', '.join(policies.POLICIES)}")
    n_groups = launch.preflight(cfg)
    for key in ("shift", "shift_b"):
        name = getattr(st, key)
        if name != "none" and name not in shifts.SHIFTS:
            raise ConfigError(f"stream.{key}", f"unknown shift {name!r}; allowed: none, {', '.join(shifts.SHIFTS)}")
    for key, value in (("freeze_layers", st.freeze_layers), ("search_freeze_layers", st.search_freeze_layers[1])):
        if value > n_groups:
            raise ConfigError(f"stream.{key}", f"{value} exceeds the {n_groups} layer groups of {cfg.model.name}")
    if cfg.study.workers > 1:
        raise ConfigError("study.workers", "harness.sustain runs in one process; use --workers 1")
    return n_groups


def check_store(cfg: config.Config) -> None:
    """Bad input found in the tracking store, before anything is created (exit 2): an MLflow experiment of this name
    that holds a regular study (python -m harness.study). A sustain parent there would be mixed with its trials."""
    uri = cfg.study.tracking_uri or store.default_tracking_uri()
    if tracking.existing_role(uri, cfg.study.name) == "study":
        raise ConfigError("study.name", f"{cfg.study.name!r} is the MLflow experiment of a regular study "
                          f"(python -m harness.study); a sustain study needs a name of its own, e.g. "
                          f"{store.command_line('--study-name', 'sustain-' + cfg.study.name)}")


# ---------------------------------------------------------------------------------------------------- run

def run(cfg: config.Config, n_groups: int, log=print) -> int:
    t_start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = context.open_context(cfg, n_groups, role="sustain", with_suite=False, with_storage=cfg.stream.search,
                               log=log)
    _log_parent(ctx)
    # one process per sustain study: a RUNNING child now is one whose process died
    bookkeeping.sweep_orphans(ctx.client, ctx.exp_id, ctx.parent_id, None)
    sr = replay.SustainRun(ctx, log, finished=replay.finished_children(ctx))
    data, st = ctx.data_cpu, cfg.stream
    log(f"data: {len(data['train'][0])} train / {len(data['test'][0])} test images, {len(data['classes'])} classes; "
        f"stream {st.kind} ({streams.stream_shift(st)}), T = {st.periods}, "
        f"{st.labelled} labelled + {st.eval_size} eval images per period; device {ctx.device}")

    found = search.run_search(sr) if st.search else None
    results, failed = (found["results"], []) if found else _replay_policies(sr)
    summary = summarize(results)
    tracking.log_json(ctx.client, ctx.parent_id, summary, "summary.json")
    built = {s: c for (s, half), c in sr.seeds.items() if isinstance(c, replay.SeedContext) and half == "reported"}
    tracking.log_json(ctx.client, ctx.parent_id, {str(s): c.recipes for s, c in built.items()}, "stream.json")
    # the deployed model per reported seed: epochs, validation and clean test accuracy, and the reachable one's
    tracking.log_json(ctx.client, ctx.parent_id, {str(s): c.deployed for s, c in built.items()}, "deployed.json")
    tracking.log_json(ctx.client, ctx.parent_id, {h: [int(i) for i in ix] for h, ix in streams.eval_halves(
        *ctx.data_cpu["test"], cfg_seed(ctx)).items()}, "eval_halves.json")
    tracking.end_run(ctx.client, ctx.parent_id, "FINISHED",
                     {schema.TAG_FAILED_RUNS: len(found["failed"]) if found else len(failed)})
    if not st.search and summary:
        _table(summary, log)
    log(f"\nsustain study {cfg.study.name!r} took {time.perf_counter() - t_start:.0f} s. Open the MLflow UI on this "
        f"store:\n  {store.command_line('python', '-m', 'harness.ui', '--tracking-uri', ctx.uri)}")
    if cfg.study.report:
        closing.write_report(cfg, ctx.uri, log)
    if found and not found["complete"]:  # failed trials alone are part of a search; none completing is not
        print(f"error: no search trial completed ({len(found['failed'])} failed this run; reasons above, in the "
              f"Optuna trials' fail_reason and on their MLflow runs)", file=sys.stderr)
        return 1
    if failed:
        what = "; ".join(f"{lab} seed {seed}: {reason}" for lab, seed, reason in failed)
        ok = sum(len(rows) for rows in results.values())
        print(f"error: {len(failed)} policy run(s) failed ({what}); {ok} finished. Every run is in MLflow (failed "
              f"ones with tag harness.fail_reason); re-running the same command replays only what did not finish.",
              file=sys.stderr)
        return 1
    return 0


def cfg_seed(ctx: context.Context) -> int:
    """The seed of the test split's halving into search and reported evaluation images (streams.eval_halves)."""
    return ctx.cfg.study.seed


def variants(cfg: config.Config) -> list[str]:
    """The streams each reported policy is replayed on: the drifting one, and its no-drift control (stream.control)."""
    return [schema.STREAM_DRIFT] + ([schema.STREAM_CONTROL] if cfg.stream.control else [])


def result_key(label: str, variant: str) -> str:
    return label if variant == schema.STREAM_DRIFT else f"{label}/{variant}"


def _replay_policies(sr: replay.SustainRun) -> tuple[dict, list]:
    """stream.policies on every seed, on the drifting stream and its control: (label or label/control -> rows of
    final metrics, [(label, seed, reason)] of failed runs)."""
    results, failed = {}, []
    for seed in streams.seeds_of(sr.ctx.cfg):
        for policy in sr.ctx.cfg.stream.policies:
            spec = policies.policy_spec(sr.ctx.cfg.stream, policy)
            for variant in variants(sr.ctx.cfg):
                lab = result_key(policies.label(spec), variant)
                try:
                    results.setdefault(lab, []).append(replay.run_policy(sr, spec, seed, variant=variant))
                except Exception as err:  # recorded on its child run by run_policy; the other policies go on
                    failed.append((lab, seed, f"{type(err).__name__}: {err}"))
    return results, failed


def summarize(results: dict[str, list[dict]]) -> dict:
    """label -> {metric: {mean, std, values}} over seeds, plus run_ids."""
    out = {}
    for lab, rows in results.items():
        entry = {"run_ids": [r["run_id"] for r in rows], "n_seeds": len(rows)}
        for k in schema.STREAM_FINAL:
            vals = [r[k] for r in rows if r.get(k) is not None]
            mean = sum(vals) / len(vals) if vals else float("nan")
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            entry[k] = {"mean": mean, "std": std, "values": vals}
        out[lab] = entry
    return out


def _table(summary: dict, log) -> None:
    """Mean ± std over seeds; update cost as wall seconds and as images x epochs trained (device independent)."""
    log(f"\n{'policy':<17} {'seeds':>5} {schema.STREAM_ACC_MEAN:>15} {'worst':>13} {schema.BWT:>14} {schema.FORGETTING:>14} "
        f"{schema.FWT:>14} {'updates':>9} {'update_s':>11} {schema.UPDATE_EXAMPLES:>15}")
    for lab, e in summary.items():
        f = lambda k, w=".3f": f"{e[k]['mean']:{w}} ± {e[k]['std']:.3f}"
        g = lambda k, w: f"{e[k]['mean']:{w}} ± {e[k]['std']:{w}}"
        log(f"{lab:<17} {e['n_seeds']:>5} {f(schema.STREAM_ACC_MEAN):>15} {f(schema.STREAM_ACC_WORST):>13} {f(schema.BWT, '+.3f'):>14} "
            f"{f(schema.FORGETTING, '+.3f'):>14} {f(schema.FWT, '+.3f'):>14} {g(schema.N_UPDATES, '.1f'):>9} "
            f"{g(schema.UPDATE_SECONDS, '.1f'):>11} {g(schema.UPDATE_EXAMPLES, '.0f'):>15}")


def _log_parent(ctx: context.Context) -> None:
    cfg, client, run_id = ctx.cfg, ctx.client, ctx.parent_id
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tracking.log_text(client, run_id, config.to_toml(cfg), "config/resolved.toml")
    tracking.log_text(client, run_id, config.to_toml(cfg), f"config/invocations/{stamp}.toml")
    tracking.log_json(client, run_id, tracking.versions(), "versions.json")
    if cfg.stream.search:
        tracking.log_json(client, run_id, search.space(cfg.stream), "search_space.json")
    tracking.set_tags(client, run_id, {schema.TAG_GIT_SHA: tracking.git_sha(), schema.TAG_DEVICE: str(ctx.device),
                                       schema.TAG_LOAD_AVERAGE: ",".join(f"{v:.2f}" for v in os.getloadavg()),
                                       schema.TAG_CPU_COUNT: os.cpu_count(),
                                       schema.TAG_STREAM: cfg.stream.kind,
                                       schema.TAG_STREAM_SHIFT: streams.stream_shift(cfg.stream),
                                       schema.TAG_POOL_FRACTION: cfg.stream.pool_fraction,
                                       schema.TAG_POLICIES: ",".join(cfg.stream.policies),
                                       schema.TAG_SEEDS: ",".join(map(str, streams.seeds_of(cfg))),
                                       schema.TAG_SEARCH: str(cfg.stream.search).lower()})
    if ctx.created:  # params are immutable in MLflow: the config of the first invocation; later ones under config/
        tracking.log_params(client, run_id, {f"{s}.{k}": v for s, vals in config.to_dict(cfg).items()
                                             for k, v in vals.items() if s != "study" or k in ("seed", "sampler")})


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.markdown or args.out:
        if not args.markdown:
            print("error: --out: only with --markdown REPORT_JSON", file=sys.stderr)
            return 2
        from harness.sustain import markdown

        return markdown.main(args.markdown, args.out)
    try:
        cfg = load_config(args)
        n_groups = preflight(cfg)
        check_store(cfg)
    except ConfigError as e:
        print(store.redact(f"error: {e}"), file=sys.stderr)
        return 2
    except (ConnectionError, OSError) as e:  # check_store: a dead tracking server
        print(store.redact(f"error: {type(e).__name__}: {e}"), file=sys.stderr)
        return 1
    try:
        return run(cfg, n_groups)
    except KeyboardInterrupt:
        print("\ninterrupted: re-run the same command to finish (finished policy runs are reused)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - policy runs fail one by one inside run(); this is setup or the store
        print(store.redact(f"error: {type(e).__name__}: {e}"), file=sys.stderr)
        return 1

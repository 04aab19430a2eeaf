"""The benchmark's report (reports/bench.md, and the README's table from reports/bench.json): every figure of
harness.bench against its target, every sample listed."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

import torch

from harness import schema


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    # OMP_WAIT_POLICY matters on a shared machine: with the default (spinning) policy, 2 OpenMP threads on 2 busy
    # cores ran resnet8 steps 10x slower than 1 thread here; PASSIVE (threads sleep at barriers) did not
    return (f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
            f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
            f"load average at the end {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


def _ok(good: bool) -> str:
    return "ok" if good else "MISSED"


def _eval_shares(r: dict) -> tuple[float, float]:
    """Shift evaluation's share of a trial's time, eval_seconds / (train_seconds + eval_seconds) (issue 11's budget:
    at most a quarter): median over the (a) trials, and of the bench-none study's medians."""
    tt = r["trial_times"]
    return statistics.median(t[schema.EVAL_SECONDS] / (t[schema.TRAIN_SECONDS] + t[schema.EVAL_SECONDS])
                             for t in r["throughput"]["trials"]), tt["eval"] / (tt["train"] + tt["eval"])


def _header(r: dict) -> list[str]:
    a, params = r["throughput"], r["params"]
    return [
        "# harness benchmark", "",
        f"- command: `{r['command']}`",
        f"- date: {r['date']}; wall time of the benchmark: {r['wall']:.0f} s",
        f"- device: {r['device']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items() if k != "platform"),
        f"- platform: {r['versions'].get('platform', '')}",
        f"- workload: the default study (`studies/default.toml`, model `{r['model']}`, "
        f"{r['n_train']} training images of {r['image_size']} px, batch {r['batch_size']}, {a['epochs']} epochs)"
        + (" with the --quick overrides " + " ".join(f"`{o}`" for o in r["overrides"]) if r["quick"] else ""),
        f"- measured trial: {params} (its first epoch with {params['freeze_layers']} groups frozen, then all train)",
        *(["- --quick shrinks a trial to a fraction of a second of compute, so fixed costs (per-epoch logging and "
            "pruning checks, run creation, the evaluation of every shifted set) weigh far more than in a real study: "
            "its ok / MISSED verdicts show that the benchmark runs, not where the harness stands."] if r["quick"] else []),
        "",
    ]


def _table(r: dict) -> list[str]:
    """Every figure against its target (ok / MISSED)."""
    a, b, s, st, tt, targets = r["throughput"], r["mlflow"], r["suite"], r["study"], r["trial_times"], r["targets"]
    ok, (ev, ev_study), tr = _ok, _eval_shares(r), r["throughput"]["trials"]
    return [
        "| measure | value | target | |",
        "|---|---|---|---|",
        _row_a(a, targets),
        f"| (b) MLflow logging the trial waits for / trial wall time | {100 * b['share']:.2f}% | "
        f"< {100 * targets['mlflow_share']:.0f}% | {ok(b['share'] < targets['mlflow_share'])} |",
        f"| (b) same, on the logging thread (overlaps training; its CPU share is inside (a)) | "
        f"{100 * b['background_share']:.2f}% | | |",
        f"| (c) trials per minute, no pruning | {st['none']['per_minute']:.2f} | | |",
        f"| (c) trials per minute, median pruning | {st['median']['per_minute']:.2f} | | |",
        f"| (d) shift-suite build, the config's {s['config']['n_shifts']} shifts ({s['config']['n_sets']} sets) | "
        f"{s['config']['seconds']:.1f} s | < {targets['suite_seconds']:.0f} s | "
        f"{ok(s['config']['seconds'] < targets['suite_seconds'])} |",
        f"| (d) shift-suite build, all {s['all']['n_shifts']} registered shifts ({s['all']['n_sets']} sets) | "
        f"{s['all']['seconds']:.1f} s | < {targets['suite_seconds']:.0f} s | "
        f"{ok(s['all']['seconds'] < targets['suite_seconds'])} |",
        f"| (d) shift evaluation's share of a trial: eval_seconds / (train_seconds + eval_seconds), median of "
        f"{len(tr)} | {100 * ev:.0f}% | "
        f"<= {100 * targets['eval_share']:.0f}% | {ok(ev <= targets['eval_share'])} |",
        f"| (d) same, completed trials of study bench-none (median of {tt['n']}) | {100 * ev_study:.0f}% | "
        f"<= {100 * targets['eval_share']:.0f}% | {ok(ev_study <= targets['eval_share'])} |",
        f"| (e) peak RSS | {r[schema.PEAK_RSS_MB]:.0f} MB | no growth across trials | |",
        *_table_f(r),
        *_table_g(r),
        *_table_h(r),
        "",
    ]


def _table_g(r: dict) -> list[str]:
    """The prefix cache: the default study's trials per minute and single trials' speed-ups (section (g))."""
    st, g, targets = r["study"], r["cache"], r["targets"]
    with_, without = st["median"]["per_minute"], st["median-nocache"]["per_minute"]
    lp, body, k2, cb = g["linear_probe"], g["frozen_body"], g["freeze_2"], r["cache_bound"]
    return [
        f"| (g) prefix cache: trials per minute of the default study (median pruning), with / without the cache | "
        f"{with_:.2f} / {without:.2f} = {with_ / without:.2f}x | >= {targets['cache_study']}x | "
        f"{_ok(with_ / without >= targets['cache_study'])} |",
        f"| (g) bound on that (Amdahl): no-cache study's trial seconds / those no frozen epoch holds | "
        f"{cb['bound']:.2f}x | | |",
        f"| (g) linear-probe trial: wall time without caches / with warm ones (an earlier probe's prefix outputs, "
        f"features and fit; median of {lp['repeats']} pairs) | {lp['warm']:.2f}x | >= {targets['cache_probe']}x | "
        f"{_ok(lp['warm'] >= targets['cache_probe'])} |",
        f"| (g) same, with fresh caches (the study's first probe) | {lp['cold']:.2f}x | | |",
        f"| (g) frozen body, head trained by SGD: without / with a fresh cache, with a filled one | "
        f"{body['cold']:.2f}x, {body['warm']:.2f}x | | |",
        f"| (g) freeze_layers = 2 trial, never unfrozen: without / with a fresh cache, with a filled one | "
        f"{k2['cold']:.2f}x, {k2['warm']:.2f}x | | |",
    ]


def _row_a(a: dict, targets: dict) -> str:
    """(a)'s ratio with its range, or why it is not printed (bench_trials.ratio_trust): then it is not judged."""
    head = f"| (a) trial training / bare loop, throughput: median of {a['repeats']} interleaved pairs (range) | "
    if a["untrusted"]:
        return head + f"not printed: {a['untrusted']} | >= {targets['ratio']} | not judged |"
    good = a["ratio_paired"] >= targets["ratio"]
    return head + (f"{a['ratio_paired']:.3f} ({min(a['ratios']):.3f}-{max(a['ratios']):.3f}) | >= {targets['ratio']} | "
                   f"{_ok(good)} |")


def _table_h(r: dict) -> list[str]:
    w, targets = r["workers"], r["targets"]
    if w["untrusted"]:
        return [f"| (h) packed trials on 2 CPU cores: --workers 2 / --workers 1, and a study next to one CPU-bound "
                f"process | not printed: {w['untrusted']} | >= {targets['workers_gain']:.1f}x, <= "
                f"{targets['rival_slowdown']:.0f}x | not judged |"]
    one, two, rival = w["workers1"], w["workers2"], w["rival"]
    return [
        f"| (h) packed trials: trials per minute on 2 CPU cores, --workers 1 / --workers 2 "
        f"({two['budget'].split(' (')[0]}) | "
        f"{one['per_minute']:.2f} / {two['per_minute']:.2f} = {w['gain']:.2f}x | >= {targets['workers_gain']:.1f}x "
        f"(goal 1.3x) | {_ok(w['gain'] >= targets['workers_gain'])} |",
        f"| (h) slow-down of a --workers 1 study next to one CPU-bound process | {one['per_minute']:.2f} -> "
        f"{rival['per_minute']:.2f} trials/min = {w['slowdown']:.2f}x | <= {targets['rival_slowdown']:.0f}x | "
        f"{_ok(w['slowdown'] <= targets['rival_slowdown'])} |",
    ]


def _section_h(r: dict) -> list[str]:
    w = r["workers"]
    lines = ["## (h) cores: workers and a competing process",
             f"`python -m harness.study` processes pinned to cores {w['cores']} (the first two the benchmark may use), "
             "each a fresh study of the default config without pruning on the caches (c) built; trials per minute over "
             "the span from the first trial's start to the last one's end. The competing process is a Python busy loop "
             "on the same 2 cores, started before the study and stopped after it.", ""]
    for key, what in (("workers1", "--workers 1"), ("workers2", "--workers 2"),
                      ("rival", "--workers 1 next to a CPU-bound process")):
        if key not in w:  # --quick runs no plain --workers 1 study
            continue
        v = w[key]
        lines.append(f"- {what}: {v['finished']} finished in {60 * v['finished'] / v['per_minute']:.1f} s of trials -> "
                     f"{v['per_minute']:.2f} trials/min; whole command {v['wall']:.1f} s; budget: {v['budget']}; load "
                     f"average {v['load'][0]:.1f} before, {v['load'][1]:.1f} after; "
                     f"`{shlex.join(['python', '-m', 'harness.study', *v['argv']])}`")
    if w["untrusted"]:
        lines.append(f"- ratios not printed: {w['untrusted']}")
    return lines + [""]


def _table_f(r: dict) -> list[str]:
    f, targets = r["native"], r["targets"]
    return [
        f"| (f) dataset inputs ({f['n_inputs']} a run): digests once a process + log_inputs a trial / trial wall time | "
        f"{100 * f['inputs_share']:.2f}% ({1000 * f['digest_seconds']:.0f} ms + {1000 * f['log_inputs_seconds']:.0f} ms) | | |",
        f"| (f) system metrics (every {f['system_interval']:.0f} s + one at the end) / trial wall time | "
        f"{100 * f['system_share']:.2f}% | < {100 * targets['system_share']:.0f}% | "
        f"{_ok(f['system_share'] < targets['system_share'])} |",
        f"| (f) selected model: pytorch-flavour logging + registration, once a study / study bench-none wall time | "
        f"{f['publish_seconds']:.1f} s = {100 * f['publish_share']:.1f}% | | |",
    ]


def _section_a(r: dict) -> list[str]:
    a = r["throughput"]
    return [
        "## (a) training throughput: a real trial against a bare PyTorch loop",
        "Harness: `harness.trial.objective` on an Optuna trial of a study in sqlite storage "
        "(`harness.sampling.open_study`, the config's sampler and pruner), in the context `harness.context.open_context` opens "
        "(device-resident data, pretrained weights, shift suite, an MLflow sqlite store in a temp dir), with the "
        "study's progress line and best-weights upload hooked in as `harness.workers.work` does. Timed by the "
        "trial's own `train_seconds`: from building the model to the end of the last epoch, i.e. model build and "
        "pretrained weights, per-epoch training and validation, per-epoch MLflow logging, "
        "`trial.report`/`should_prune`.",
        "Bare: the same span of identical work as a plain PyTorch loop: same model build and weights, data tensors, "
        "batch order, freezing, SGD with a per-step cosine lr, and the same validation pass after every epoch; no "
        "MLflow, Optuna or harness code in the loop (tests/test_bench.py checks that on CPU both end with "
        "bit-identical weights and the same val_acc every epoch).",
        "Not compared: the trial's final held-out evaluation (the clean test set and every shifted set), which the "
        "bare loop does not do; it is `eval_seconds`, in (d). Its MLflow writes are in (b). Both sides run in this "
        f"process ({a['threads']} torch threads, OMP_WAIT_POLICY={a['omp_wait_policy']}, the same allocator and "
        f"channels_last), in {a['repeats']} interleaved pairs (the side that goes first alternates) after one warm-up "
        "each, each side after a garbage collection and on an idle device. The ratio is the median of the pairs "
        "(the bare loop's seconds over the trial's); it is not printed when a side lasts under 1 s (fixed costs and "
        "the scheduler decide it there: --quick) or when the middle five pairs spread more than 15% around their "
        f"median (a busy machine). Load average {a['load'][0]:.1f} before, {a['load'][1]:.1f} after.",
        "",
        f"- harness trial: {a['harness_median']:.0f} img/s median; train_seconds "
        f"{', '.join(f'{v:.3f}' for v in a['times']['harness'])}",
        f"- bare PyTorch loop: {a['bare_median']:.0f} img/s median; seconds "
        f"{', '.join(f'{v:.3f}' for v in a['times']['bare'])}",
        (f"- ratio trial / bare: not printed: {a['untrusted']}" if a["untrusted"] else
         f"- ratio trial / bare: {a['ratio_paired']:.3f}, median of the pairs "
         f"{', '.join(f'{v:.3f}' for v in a['ratios'])} (range {min(a['ratios']):.3f}-{max(a['ratios']):.3f})"),
        "",
    ]


def _section_b(r: dict) -> list[str]:
    b, tr = r["mlflow"], r["throughput"]["trials"]
    return [
        "## (b) MLflow logging",
        "Every MlflowClient call a trial makes (an instrumented client: each call still goes to the sqlite store): "
        "child run creation and its params, per-epoch metrics, the end-of-trial metrics and per-severity steps, the "
        "best-weights upload (each measured trial is the best of its own study, so it uploads every time: the worst "
        "case), end_run. Per-epoch metrics are handed to one logging thread (tracking.log_metrics(wait=False)): the "
        "trial waits only for the hand-off and, before its final metrics, in the client's flush (counted); the thread's "
        "writes share the 2 cores with training, so their cost shows in (a), and their time is listed apart. "
        f"Median over {len(tr)} trials: {1000 * b['seconds']:.0f} ms the trial waited on MLflow in a trial of "
        f"{b['wall']:.2f} s = {100 * b['share']:.2f}% (per trial: {', '.join(f'{100 * v:.2f}%' for v in b['shares'])}).",
        "",
        "| MlflowClient method | calls a trial | ms a trial (median) |",
        "|---|---|---|",
        *[f"| {m} | {c:.0f} | {1000 * sec:.1f} |" for m, (c, sec) in b["per_method"].items()],
        "",
    ]


def _sections_cde(r: dict) -> list[str]:
    s, st, tt, tr = r["suite"], r["study"], r["trial_times"], r["throughput"]["trials"]
    ev, ev_study = _eval_shares(r)
    ev_s, tr_s = [t[schema.EVAL_SECONDS] for t in tr], [t[schema.TRAIN_SECONDS] for t in tr]
    lines = ["## (c) trials per minute (harness.launch.run in a temp working dir, as `python -m harness.study` runs it)"]
    for key, v in st.items():
        lines.append(f"- study bench-{key}: {v['finished']} finished ({v['pruned']} pruned) in {v['span']:.1f} s "
                     f"of trials -> {v['per_minute']:.2f} trials/min; whole command {v['wall']:.1f} s "
                     f"(setup included); load average {v['load'][0]:.1f} before, {v['load'][1]:.1f} after; "
                     f"`{shlex.join(['python', '-m', 'harness.study', *v['argv']])}`")
    lines += [
        "",
        "## (d) shift evaluation",
        f"- harness.suite.build with no cache, the config's lists ({', '.join(r['shift_lists']['config'])}): "
        f"{s['config']['seconds']:.2f} s for {s['config']['n_sets']} sets; every registered shift (the config's "
        f"selection shifts on val, the other {s['all']['n_shifts'] - len(r['shift_lists']['selection'])} on test): "
        f"{s['all']['seconds']:.2f} s for {s['all']['n_sets']} sets; severities {r['shift_lists']['severities']}, "
        f"eval_images {r['shift_lists']['eval_images']}. Built once per study, read from the cache afterwards.",
        f"- per trial, the final held-out evaluation (clean test set, selection and test shifts, label shift) as a share of "
        f"the trial's time: eval_seconds / (train_seconds + eval_seconds), median {100 * ev:.0f}% over the (a) trials (eval_seconds "
        f"{', '.join(f'{v:.2f}' for v in ev_s)}; train_seconds "
        f"{', '.join(f'{v:.2f}' for v in tr_s)}); completed trials of study bench-none: median "
        f"train_seconds {tt['train']:.2f}, eval_seconds {tt['eval']:.2f} ({100 * ev_study:.0f}%).",
        "",
        "## (e) memory",
        f"- peak RSS of the benchmark process (all of the above in-process): {r[schema.PEAK_RSS_MB]:.0f} MB; "
        f"RSS at the end {r[schema.RSS_MB]:.0f} MB" + (f"; GPU peak {r[schema.GPU_PEAK_MB]:.0f} MB" if r.get(schema.GPU_PEAK_MB) else ""),
        f"- RSS after each trial of study bench-none (MB, trial order, the last epoch's rss_mb; the process also "
        f"holds everything above): {', '.join(f'{v:.0f}' for v in tt['rss'])}",
        "",
    ]
    return lines


def _section_f(r: dict) -> list[str]:
    f = r["native"]
    return [
        "## (f) MLflow-native records",
        f"- dataset inputs: {f['n_inputs']} a run (train, validation, test, every shifted set); their sha256 digests "
        f"take {1000 * f['digest_seconds']:.0f} ms once a process (records.context_inputs), the log_inputs request "
        f"{1000 * f['log_inputs_seconds']:.1f} ms a trial (median), in a trial of {f['trial_wall']:.2f} s.",
        f"- system metrics: one sample (psutil CPU and memory, NVML/torch on CUDA, one log_batch) costs "
        f"{1000 * f['sample_seconds']:.1f} ms; sampled every {f['system_interval']:.0f} s plus once at the end, the "
        f"sampler took {', '.join(f'{100 * v:.2f}%' for v in f['system_shares'])} of the (a) trials' wall time "
        f"({', '.join(str(n) for n in f['system_samples'])} samples); a trial of T s pays about "
        f"{1000 * f['sample_seconds']:.0f} ms x (T / {f['system_interval']:.0f} + 1), i.e. "
        f"{100 * f['sample_seconds'] / f['system_interval']:.2f}% for long trials.",
        f"- the selected model (champion.publish: weights read back, pt2 export with signature and input example, "
        f"upload, model version, alias champion): {f['publish_seconds']:.1f} s once a study, "
        f"{100 * f['publish_share']:.1f}% of study bench-none's {f['study_wall']:.0f} s wall time "
        f"(version {(f['model'] or {}).get('version', '-')} of {(f['model'] or {}).get('name', '-')}).",
        "",
    ]


def _section_g(r: dict) -> list[str]:
    st, g, cb = r["study"], r["cache"], r["cache_bound"]
    fmt = lambda vs: ", ".join(f"{v:.2f}" for v in vs)  # noqa: E731
    lines = [
        "## (g) the frozen-prefix cache (harness.prefix, train.cache_mb)",
        "(a) runs without it, since its bare loop recomputes the frozen groups; (c)'s other studies run with it.",
        f"- the default study with median pruning, back to back: with the cache {st['median']['per_minute']:.2f} "
        f"trials/min ({st['median']['finished']} finished, {st['median']['pruned']} pruned, "
        f"{st['median']['span']:.1f} s), without (train.cache_mb = 0) {st['median-nocache']['per_minute']:.2f} "
        f"({st['median-nocache']['finished']} finished, {st['median-nocache']['pruned']} pruned, "
        f"{st['median-nocache']['span']:.1f} s); commands in (c).",
        f"- the bound: the cache removes work only while groups are frozen. {cb['unfrozen_trials']} of the no-cache "
        f"study's {cb['trials']} trials freeze nothing (full FT and LP-FT at every sweep lr, TPE's freeze_layers = "
        f"0); the others unfreeze after e of their n epochs, and those frozen epochs (e / n of a trial's seconds, "
        f"all of them for a trial frozen to its end) hold at most {100 * cb['frozen_share']:.0f}% of the study's "
        f"trial seconds, so no prefix cache can make that study more than {cb['bound']:.2f}x faster.",
        "- single trials through harness.trial.objective, never unfrozen: no cache (for the linear probe an empty "
        "cache folder too: features and fit recomputed), fresh caches (cold: the trial computes the prefix outputs "
        "of the training, validation, test and shifted sets itself, as the first trial of its k in a study does) and "
        "caches an earlier trial filled (warm: later trials of that k), in rotating order; wall seconds per trial "
        "(train_seconds / eval_seconds in brackets):",
    ]
    for name, v in g.items():
        lines.append(f"  - {name} {v['params']}: " + "; ".join(
            f"{side} {fmt(v['wall'][side])} ({fmt(v['train'][side])} / {fmt(v['eval'][side])})"
            for side in ("off", "cold", "warm"))
            + f"; speed-up cold {v['cold']:.2f}x, warm {v['warm']:.2f}x; the filled cache held {v['held_mb']:.1f} MiB")
    return lines + [""]


def render(r: dict) -> str:
    """reports/bench.md from bench.run's result: header, the table of targets, then each measure's details."""
    return "\n".join(_header(r) + _table(r) + _section_a(r) + _section_b(r) + _sections_cde(r) + _section_f(r)
                     + _section_g(r) + _section_h(r))


README_BEGIN = "<!-- generated by python -m harness.bench --readme: do not edit -->"


def readme_block(r: dict) -> str:
    """The README's benchmark block: who measured, where and under what load, then the table of targets. The date
    is the run's; the load averages (1, 5, 15 min) are the machine's at the start and the end of the run."""
    p = r.get("provenance") or {}
    load = lambda k: ", ".join(f"{v:.2f}" for v in p[k]) if p.get(k) else "not recorded"  # noqa: E731
    head = (f"_`{r['command']}`: commit {(p.get('git_sha') or 'unknown')[:12]}, {r['date']}, machine "
            f"{p.get('cpu_count') or '?'} CPUs, {r['versions'].get('platform', 'unknown platform')}, device "
            f"{r['device'].split(',')[0]}, load average {load('load_start')} at the start and {load('load_end')} at "
            f"the end, {r['wall']:.0f} s._")
    from harness.report.markdown import END

    return "\n".join([README_BEGIN, "", head, "", *_table(r), END]) + "\n"


def write_readme(source: Path, readme: Path) -> int:
    """`python -m harness.bench --readme FILE_MD`: the block from the figures in source (bench.json) written into
    readme in place of its benchmark block; exit 2 naming the file when either is missing or has no block."""
    from harness.report.markdown import replace_block

    if not source.is_file():
        print(f"error: --json: {source} does not exist (run python -m harness.bench first)", file=sys.stderr)
        return 2
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if README_BEGIN not in text:
        print(f"error: --readme: {readme} has no benchmark block ({README_BEGIN})", file=sys.stderr)
        return 2
    readme.write_text(replace_block(text, readme_block(json.loads(source.read_text())), README_BEGIN),
                      encoding="utf-8")
    print(f"markdown: {readme.resolve()}")
    return 0

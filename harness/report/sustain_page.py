"""The page of one or more harness.sustain studies (sustain_numbers.summarize_sustain): accuracy over time per policy
with update markers, the accuracy matrix R[i][j] per policy, accuracy against update cost with the Pareto front, and a
table of per-policy metrics (mean ± sd over seeds; every cell carries data-key, data-mean and data-sd)."""

from __future__ import annotations

from harness import schema
from harness.report import sustain_tables as tables
from harness.report.kit import Raw, drawn, esc, figure, heading, num, page, png, pts, rc, table, td
from harness.results import StudyNotFound

MAX_POLICIES = 8  # policies drawn in the time and matrix figures (the table and the cost scatter show every one)
POLICY_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
NEVER_COLOR = "#7f7f7f"
# table columns: (metric key, header, how a value is shown); accuracies in %, transfer in points, costs as counts
SUSTAIN_COLUMNS = [(schema.STREAM_ACC_MEAN, "mean stream acc (%)", "pct"),
                   (schema.STREAM_ACC_WORST, "worst period (%)", "pct"), (schema.BWT, "BWT (pts)", "pts"),
                   (schema.FORGETTING, "forgetting (pts)", "pts"), (schema.FWT, "FWT (pts)", "pts"),
                   (schema.N_UPDATES, "updates", ".1f"), (schema.UPDATE_SECONDS, "update time (s)", ".2f"),
                   (schema.UPDATE_EXAMPLES, "update examples (images \u00d7 epochs)", ".0f")]


def stat_text(stat: dict, how: str) -> str:
    """'84.3 ± 1.2' (mean ± sample sd over seeds), or the mean alone for one seed; '–' when missing."""
    m, sd = stat.get("mean"), stat.get("sd")
    if m is None:
        return "\u2013"
    if how == "pct":
        return f"{100 * m:.1f}" + ("" if sd is None else f" \u00b1 {100 * sd:.1f}")
    if how == "pts":
        return f"{100 * m:+.1f}" + ("" if sd is None else f" \u00b1 {100 * sd:.1f}")
    return format(m, how) + ("" if sd is None else f" \u00b1 {format(sd, how)}")


def _stat_td(stat: dict, key: str, how: str) -> Raw:
    attrs = "".join(f' data-{name}="{esc(repr(stat[name]))}"' for name in ("mean", "sd") if stat.get(name) is not None)
    return Raw(f'<td data-key="{esc(key)}"{attrs}>{esc(stat_text(stat, how))}</td>')


def _policy_colors(s: dict) -> dict:
    out, i = {}, 0
    for g in s["policies"]:
        if g["policy"] == "never":
            out[g["key"]] = NEVER_COLOR
        else:
            out[g["key"]] = POLICY_COLORS[i % len(POLICY_COLORS)]
            i += 1
    return out


def _shown(s: dict) -> list[dict]:
    """Policies drawn in the per-policy figures: all when few; else never, the Pareto front, then the most accurate."""
    groups = s["policies"]
    if len(groups) <= MAX_POLICIES:
        return groups
    acc = lambda g: g["metrics"][schema.STREAM_ACC_MEAN]["mean"] or 0  # noqa: E731
    keep = [g for g in groups if g["policy"] == "never"][:1] + [g for g in groups if g["key"] in s["pareto"]]
    keep += sorted((g for g in groups if g not in keep), key=acc, reverse=True)
    keep = keep[:MAX_POLICIES]
    return [g for g in groups if g in keep]


def _period_labels(s: dict, periods: int) -> list[str]:
    """'3\\ncontrast 2': the period and its shift (from stream.json, the first seed; priors differ per seed)."""
    recipes = next(iter(s["stream"].values()), []) if isinstance(s["stream"], dict) else []
    out = []
    for t in range(periods):
        r = recipes[t] if t < len(recipes) and isinstance(recipes[t], dict) else {}
        if r.get("prior") is not None:
            what = "prior"
        elif r.get("shift") in (None, "none") or not r.get("severity"):
            what = "clean" if r else ""
        else:
            what = f"{str(r['shift'])[:10]} {r['severity']}"
        out.append(f"{t}\n{drawn(what)}" if what else str(t))
    return out


def fig_time(s: dict) -> Raw | None:
    shown = [g for g in _shown(s) if g["periods"] and any(p["mean"] is not None for p in g[schema.STREAM_ACC])]
    if not shown:
        return None
    colors = _policy_colors(s)
    periods = max(g["periods"] for g in shown)
    with rc():
        fig = figure(max(7.5, 0.62 * periods + 4.5), 3.8)  # the legend takes ~3.5 in on the right
        ax = fig.subplots()
        for g in shown:
            ts = [t for t, p in enumerate(g[schema.STREAM_ACC]) if p["mean"] is not None]
            ys = [100 * g[schema.STREAM_ACC][t]["mean"] for t in ts]
            sds = [100 * (g[schema.STREAM_ACC][t]["sd"] or 0) for t in ts]
            c = colors[g["key"]]
            n_up = g["metrics"][schema.N_UPDATES]["mean"]
            ax.plot(ts, ys, "--" if g["policy"] == "never" else "-", color=c, lw=1.6, marker="o", ms=3,
                    label=f"{drawn(g['key'])} ({num(n_up, '.1f')} updates)")
            if g["n_seeds"] > 1:
                ax.fill_between(ts, [y - d for y, d in zip(ys, sds)], [y + d for y, d in zip(ys, sds)], color=c,
                                alpha=0.12, lw=0)
            up = [(t, y, g["update_share"][t]) for t, y in zip(ts, ys) if t < len(g["update_share"]) and g["update_share"][t] > 0]
            if up:
                ax.scatter([t for t, _, _ in up], [y for _, y, _ in up], marker="^", s=[25 + 55 * w for _, _, w in up],
                           color=c, edgecolor="black", lw=0.6, zorder=4)
        ax.scatter([], [], marker="^", s=50, color="white", edgecolor="black", lw=0.6,
                   label="update after this period (size: share of seeds)")
        ax.set_xticks(range(periods))
        ax.set_xticklabels(_period_labels(s, periods), fontsize=7)
        ax.set_xlabel("period (shift and severity)")
        ax.set_ylabel("stream accuracy (%)")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        return png(fig, "stream accuracy per period for each update policy, with update markers")


def fig_matrix(s: dict) -> Raw | None:
    shown = [g for g in _shown(s) if g["matrix"]["R"]]
    if not shown:
        return None
    import numpy as np

    mats = [np.array(g["matrix"]["R"]) * 100 for g in shown]
    lo, hi = min(m.min() for m in mats), max(m.max() for m in mats)
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    with rc():
        fig = figure(3.1 * cols + 0.6, 2.9 * rows + 0.3)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, g, m in zip(axes.flat, shown, mats):
            im = ax.imshow(m, cmap="RdYlGn", vmin=lo, vmax=hi)
            ax.grid(False)
            T = len(m)
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            ax.set_yticklabels([f"{i}*" if i < len(g["update_share"]) and g["update_share"][i] > 0 else str(i)
                                for i in range(T)], fontsize=7)
            ax.tick_params(axis="x", labelsize=7)
            ax.set_xlabel("evaluated on period j")
            ax.set_ylabel("model after period i (* updated)")
            ax.set_title(drawn(g["key"]), fontsize=9)
            if T <= 10:
                for (i, j), v in np.ndenumerate(m):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=5.5)
        for ax in list(axes.flat)[len(shown):]:
            ax.set_visible(False)
        fig.colorbar(im, ax=list(axes.flat), fraction=0.02, pad=0.02, label="accuracy (%)")
        return png(fig, "accuracy matrix R[i][j] per update policy")


def fig_cost(s: dict) -> Raw | None:
    pts_ = [(g, g["metrics"][schema.UPDATE_EXAMPLES], g["metrics"][schema.STREAM_ACC_MEAN]) for g in s["policies"]]
    pts_ = [(g, x, y) for g, x, y in pts_ if x["mean"] is not None and y["mean"] is not None]
    if not pts_:
        return None
    colors = _policy_colors(s)
    with rc():
        fig = figure(6.4, 4.0)
        ax = fig.subplots()
        for g, x, y in pts_:
            on = g["key"] in s["pareto"]
            ax.errorbar([x["mean"]], [100 * y["mean"]], xerr=[x["sd"] or 0], yerr=[100 * (y["sd"] or 0)],
                        fmt="*" if g["key"] == s["best"] else "o", ms=9 if g["key"] == s["best"] else 6,
                        color=colors[g["key"]], ecolor=colors[g["key"]], elinewidth=0.8, capsize=2,
                        markeredgecolor="black" if on else "white", zorder=3)
        at = {}  # policies with equal cost and accuracy (common on short streams) share one label
        for g, x, y in pts_:
            at.setdefault((x["mean"], y["mean"]), []).append(drawn(g["key"]))
        for (x, y), names in at.items():
            ax.annotate(", ".join(names), (x, 100 * y), xytext=(4, 4), textcoords="offset points", fontsize=7)
        front = sorted(((x["mean"], 100 * y["mean"]) for g, x, y in pts_ if g["key"] in s["pareto"]))
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#d62728", lw=1, alpha=0.7,
                    label="Pareto front (more accuracy for less update work)")
            ax.legend(loc="lower right")
        ax.set_xlabel("update cost: images \u00d7 epochs trained per stream (mean over seeds)")
        ax.set_ylabel("mean stream accuracy (%)")
        ax.margins(0.12)
        fig.tight_layout()
        return png(fig, "mean stream accuracy against update cost per policy, with the Pareto front")


def _policy_table(s: dict) -> Raw:
    head = ["policy", "when and how it updates", "seeds"] + [h for _, h, _ in SUSTAIN_COLUMNS]
    rows, attrs = [], []
    for g in s["policies"]:
        chip = ""
        if g["key"] == s["best"]:
            chip += '<span class="chip best">most accurate</span>'
        if g["key"] in s["pareto"]:
            chip += '<span class="chip pareto" title="on the accuracy / update-cost Pareto front">Pareto</span>'
        rows.append([Raw(f'<td><span data-key="policy">{esc(g["key"])}</span> {chip}</td>'), td(g["settings"], "settings", "wrap"),
                     td(g["n_seeds"], "n_seeds")] + [_stat_td(g["metrics"][k], k, how) for k, _, how in SUSTAIN_COLUMNS])
        attrs.append({"data-policy": g["key"], "data-run-ids": ",".join(g["run_ids"]),
                      "class": "selected" if g["key"] == s["best"] else ""})
    return Raw(f'<div class="scroll">{table(head, rows, "leaderboard sustain", attrs)}</div>')


def _headline(s: dict) -> Raw:
    by = {g["key"]: g for g in s["policies"]}
    best = by.get(s["best"])
    if best is None:
        return Raw(f'<div class="banner warn" id="no-completed">{esc(s["message"] or "No finished policy run.")}</div>')
    m = best["metrics"]
    text = (f"Highest mean stream accuracy: {best['key']} ({stat_text(m[schema.STREAM_ACC_MEAN], 'pct')}%, "
            f"{num(m[schema.N_UPDATES]['mean'], '.1f')} updates and "
            f"{num(m[schema.UPDATE_EXAMPLES]['mean'], '.0f')} update "
            f"examples per stream, {best['n_seeds']} seed{'s' if best['n_seeds'] != 1 else ''}).")
    never = next((g for g in s["policies"] if g["policy"] == "never"), None)
    if never is not None and never is not best and never["metrics"][schema.STREAM_ACC_MEAN]["mean"] is not None:
        gain = m[schema.STREAM_ACC_MEAN]["mean"] - never["metrics"][schema.STREAM_ACC_MEAN]["mean"]
        text += (f" Never updating: {stat_text(never['metrics'][schema.STREAM_ACC_MEAN], 'pct')}% "
                 f"({pts(gain)} points for the best policy).")
    text += f" Pareto front (accuracy against update cost): {', '.join(s['pareto']) or '-'}."
    return Raw(f'<p class="note" data-key="sustain-headline">{esc(text)}</p>')


def _outcome_td(outcome: str) -> Raw:
    return Raw(f'<td data-key="outcome"><span class="badge {esc(outcome)}">{esc(outcome)}</span></td>')


def _verdicts(s: dict) -> Raw:
    """Issue 24's tables: the deployed model against the reachable one, drift gain against the no-drift control's,
    the paired comparisons with their three-way verdicts, and the cost-accuracy frontier."""
    out = []
    if s.get("deployed"):
        out += [Raw("<h3>Deployed model against the best reachable on the same data</h3>"),
                Raw(f'<p class="note" data-key="deployed-note">{esc(tables.deployed_note(s))}</p>'),
                table(tables.DEPLOYED, tables.deployed_rows(s), "kv deployed")]
    if s.get("drift_vs_control"):
        out += [Raw("<h3>Gain from adapting to drift: drift gain minus no-drift control gain</h3>"),
                Raw('<p class="note">Gain = a policy\'s mean stream accuracy minus never\'s, on the drifting stream '
                    'and on its control (the same periods, labelled batches and evaluation images, no shift). The '
                    'control gain is what more training alone buys; the difference is the gain from adapting to '
                    'drift. Paired per seed and image; 95% two-level bootstrap (seeds and images).</p>'),
                table(tables.CONTROL, tables.control_rows(s), "control")]
    if s.get("comparisons"):
        rows = [r[:-2] + [_outcome_td(r[-2]), r[-1]] for r in tables.paired_rows(s)]
        out += [Raw("<h3>Paired policy comparisons</h3>"),
                Raw('<p class="note">Per seed on the same stream and evaluation images: A - B of mean stream accuracy, '
                    '95% two-level bootstrap over seeds and images, Holm-adjusted over the pairs. "A beats B" passes '
                    'only where the interval excludes 0 (Holm p &lt; 0.05) and A\'s updates cost no more images x '
                    'epochs than B\'s; it fails where B is significantly more accurate; inconclusive otherwise.</p>'),
                table(tables.PAIRED, rows, "paired", [{"data-a": c["a"], "data-b": c["b"]} for c in s["comparisons"]])]
    if s.get("frontier"):
        out.append(Raw("<h3>Cost-accuracy frontier: the best policy at each budget</h3>"))
        for measure in tables.FRONTIER_MEASURES:
            out.append(table(tables.FRONTIER, tables.frontier_rows(s, measure), f"frontier {measure}"))
    return Raw("".join(out))


def sustainability(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    for s in summaries:
        body.append(heading(summaries, s))
        body.append(_headline(s))
        if not s["policies"]:
            continue
        body.append(_verdicts(s))  # the verdicts first (issue 24): what a reader may claim, then the curves
        for title, fig in (("Stream accuracy over time", fig_time(s)),
                           ("Accuracy matrix R[i][j] per policy (mean over seeds)", fig_matrix(s)),
                           ("Accuracy against update cost", fig_cost(s))):
            if fig:
                body.append(Raw(f"<h3>{esc(title)}</h3>"))
                body.append(fig)
        body.append(Raw("<h3>Policies</h3>"))
        body.append(_policy_table(s))
        defs = s["metric_definitions"]
        body.append(Raw(f'<p class="note">{esc("; ".join(f"{k}: {v}" for k, v in defs.items()))}.</p>'))
    return ("a drifting stream of periods is replayed once per update policy and seed. Top: the accuracy of the model "
            "in service on each period before it may update on it (test on the near future), mean over seeds with a "
            "\u00b1 sd band; triangles mark updates. Middle: R[i][j], the accuracy on period j of the model after "
            "period i; the diagonal is accuracy right after a period, the lower triangle what was kept (backward "
            "transfer), the upper triangle what carried forward. Bottom: mean stream accuracy against update work; the "
            "Pareto front holds the policies no other beats on both. The table gives mean \u00b1 sample sd over seeds "
            "of each child run's MLflow metrics.", Raw("".join(body)))


def failures(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    for s in summaries:
        body.append(heading(summaries, s))
        if not s["failed"]:
            body.append(Raw('<p class="empty">None: every policy run finished.</p>'))
            continue
        rows = [[td(f["run_name"], "run_name"), td(f["label"], "policy"), td("-" if f["seed"] is None else f["seed"], "seed"),
                 Raw(f'<td><span class="badge {esc(f["state"])}">{esc(f["state"])}</span></td>'),
                 td(f["reason"] or "-", "reason"), td("yes" if f["retried"] else "no", "retried")] for f in s["failed"]]
        body.append(table(["run", "policy", "seed", "state", "reason", "finished on a later run"], rows, "failures",
                          [{"data-run-id": f["run_id"]} for f in s["failed"]]))
    return ("policy runs that raised (e.g. a diverging update: non-finite loss) or whose process died. They are not in "
            "the figures or the table; re-running the same command replays them.", Raw("".join(body)))


def provenance(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    for s in summaries:
        p, params = s["provenance"], s["provenance"]["params"]
        v, c = p["versions"] or {}, p["counts"]
        rows = [("study", s["name"]), ("MLflow experiment / parent run", f"{s['experiment_id']} / {s['parent_run_id']}"),
                ("tracking URI", s["tracking_uri"]), ("status", p["status"]),
                ("stream", f"{p['stream'] or '-'} ({p['stream_shift'] or '-'}), {params.get('stream.periods', '?')} "
                           f"periods, {params.get('stream.labelled', '?')} labelled + {params.get('stream.eval_size', '?')}"
                           f" evaluation images each"),
                ("stream pool", f"{p['pool_fraction'] or '?'} of the target train split, disjoint from the deployed "
                                f"model's training images"),
                ("policies / seeds / search", f"{p['policies'] or '-'} / {p['seeds'] or '-'} / {p['search'] or '-'}"),
                ("policy runs: finished / failed / running", f"{c['complete']} / {c['failed']} / {c['running']}"),
                ("wall time", f"{num(p['span_seconds'], '.0f')} s from first start to last end of the parent run"),
                ("device", p["device"] or "-"), ("git SHA", p["git_sha"] or "-"),
                ("versions", ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "torchvision", "optuna", "mlflow") if k in v) or "-")]
        body.append(heading(summaries, s))
        body.append(table(["", "value"], [list(r) for r in rows], "kv"))
        if p["config"]:
            body.append(Raw(f"<details><summary>resolved config of {esc(s['name'])} (config/resolved.toml)</summary>"
                            f"<pre>{esc(p['config'])}</pre></details>"))
    return "what ran, where, with which code and packages.", Raw("".join(body))


# id -> (title, function(studies, summaries) -> (how to read it, body)): the page's sections and contents, in order
SECTIONS = {"sustainability": ("Sustainability", sustainability), "sustain-failures": ("Failed policy runs", failures),
            "provenance": ("Provenance", provenance)}


def render(studies: list[dict], summaries: list[dict], generated: str) -> str:
    """The page of one or more sustain studies. A fine-tuning study and a sustain study answer different questions
    and share no section: asking for both on one page is bad input (exit 2), raised before anything is written."""
    other = [s["name"] for s in summaries if s.get("kind") != "sustain"]
    if other:
        sus = [s["name"] for s in summaries if s.get("kind") == "sustain"]
        raise StudyNotFound(f"{', '.join(map(repr, sus))}: sustain stud{'ies' if len(sus) > 1 else 'y'} "
                            f"(harness.sustain) cannot share a page with fine-tuning stud"
                            f"{'ies' if len(other) > 1 else 'y'} {', '.join(map(repr, other))}; report them "
                            f"separately")
    names = " + ".join(s["name"] for s in summaries)
    sub = (f"{'Sustain studies' if len(summaries) > 1 else 'Sustain study'} {names} \u00b7 generated {generated} "
           f"\u00b7 MLflow {summaries[0]['tracking_uri']} \u00b7 numbers also in report.json next to this file")
    how = Raw("each update policy (never, every k periods, or triggered by a drift monitor) was replayed on the same "
              "drifting stream, for each seed. The question is how much accuracy each keeps and what its updates "
              "cost. Accuracies are percentages; transfer and forgetting are points of accuracy.")
    return page(SECTIONS, studies, summaries, "Model sustainability under drift", sub, how)

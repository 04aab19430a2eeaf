"""The report's section on real domains (shifts.domains): does the ranking under the simulated shifts predict the
ranking on each real domain (Spearman, bootstrap interval), each domain's accuracy-on-the-line fit, and the selected
configuration against the baselines on each domain's images."""

from __future__ import annotations

from harness import schema
from harness.report.figures import trial_label
from harness.report.kit import Raw, drawn, esc, figure, heading, num, pct, png, pts, rc, table

TITLE = "Simulated vs real shift"


def rho_text(r: dict | None) -> str:
    """rho [lo, hi] (the bootstrap interval), or why there is none."""
    if not r or r["rho"] is None:
        return "undefined (fewer than 3 trials, or no spread)"
    return f"{r['rho']:+.2f}" + (f" [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]" if r.get("ci") else " (no interval)")


def words(d: dict) -> str:
    """One sentence on what the ranking figure says, from its interval (no claim beyond it)."""
    r = d["ranking"]
    if not r or r["rho"] is None or not r.get("ci"):
        return "too few trials to say whether the simulated ranking predicts this domain's."
    lo, hi = r["ci"]
    verdict = ("predicts it (the interval is above 0)" if lo > 0 else
               "runs against it (the interval is below 0)" if hi < 0 else
               "is not shown to predict it (the interval spans 0)")
    same = ("the same trial is best by both" if r["best_simulated"] == r["best_domain"] else
            f"the best under simulated shift is #{r['best_simulated']}, on this domain #{r['best_domain']}")
    return f"over {r['trials']} trials the simulated ranking {verdict}; {same}."


def fig_rankings(s: dict) -> Raw | None:
    """One panel per domain: each trial at (mean accuracy under the simulated held-out shifts, accuracy on the
    domain), the selected trial starred, baselines coloured, Spearman's rho in the title; labelled: the selected
    trial and the best by each axis (labelling every baseline piles the labels up where trials cluster)."""
    doms = [(n, d) for n, d in s["domains"].items() if d["ranking"]]
    if not doms:
        return None
    by_number = {r["number"]: r for r in s["trials"]}
    colors = {"full_ft": "#d62728", "linear_probe": "#2ca02c", "lp_ft": "#1f77b4"}
    with rc():
        fig = figure(3.4 * len(doms), 3.2)
        axes = fig.subplots(1, len(doms), squeeze=False)[0]
        for ax, (name, d) in zip(axes, doms):
            named = {s["best"], d["ranking"]["best_simulated"], d["ranking"]["best_domain"]}
            for fam, c in colors.items():  # the legend: one entry per family
                ax.scatter([], [], s=24, color=c, label=schema.BASELINES.get(fam, fam))
            ax.scatter([], [], s=24, color="#555", label="searched")
            for p in d["ranking"]["points"]:
                r = by_number.get(p["number"], {})
                best = p["number"] == s["best"]
                ax.scatter([100 * p["simulated"]], [100 * p["domain"]], s=70 if best else 24, zorder=4 if best else 3,
                           marker="*" if best else "o", color=colors.get(r.get("baseline"), "#555"),
                           edgecolor="white", lw=0.5)
                if p["number"] in named:
                    ax.annotate(trial_label(r, s["best"]) if r else f"#{p['number']}",
                                (100 * p["simulated"], 100 * p["domain"]), xytext=(3, 3), textcoords="offset points",
                                fontsize=6)
            rho = d["ranking"]["rho"]
            ax.set_title(f"{drawn(d['name'])}: Spearman {num(rho, '+.2f')}")
            ax.set_xlabel("mean accuracy, simulated held-out shifts (%)")
            ax.set_ylabel(f"accuracy on {drawn(d['name'])} (%)")
            ax.legend(loc="best", fontsize=6)  # lower right hid a trial on the typed panel of the example
        fig.tight_layout()
        return png(fig, "each trial's accuracy on each real domain against its mean accuracy under simulated shifts")


def _table(s: dict) -> Raw:
    rows = []
    for d in s["domains"].values():
        r, line = d["ranking"], d["on_the_line"]
        rows.append([d["name"], d["n"], pct(d["selected_acc"]), pct(d["mean_acc"]), rho_text(r),
                     r["trials"] if r else "\u2013", (r or {}).get("resampled", "\u2013"),
                     f"#{r['best_simulated']} / #{r['best_domain']}" if r else "\u2013",
                     f"{num(line['slope'], '.2f')}, {num(line['r2'], '.2f')}" if line else "\u2013"])
    return table(["domain", "images n", "selected acc (%)", "mean over trials (%)", "Spearman \u03c1 [95% CI]",
                  "trials", "resampled", "best: simulated / domain", "on the line: slope, R\u00b2"], rows, "domains")


def _paired(s: dict) -> Raw:
    rows = []
    for d in s["domains"].values():
        p = d["paired"] or {}
        for fam, c in p.get("baselines", {}).items():
            o = c["ood"]
            rows.append([d["name"], f"selected #{p['selected']} vs {schema.BASELINES.get(fam, fam)} #{c['number']}",
                         f"{p['selected_seeds']} / {c['seeds']}", pts(o["diff"]) if o else "\u2013",
                         f"{pts(o['ci'][0])} to {pts(o['ci'][1])}" if o else "\u2013",
                         num(o.get("p_holm"), ".3f") if o else "\u2013", (o or {}).get("level", "\u2013")])
    if not rows:
        return Raw('<p class="empty">No paired comparison (no selected trial, or no per-image correctness).</p>')
    return table(["domain", "comparison", "seeds", "diff (pts)", "95% CI", "Holm p", "interval covers"], rows, "dpaired")


def domains_section(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    for s in summaries:
        if not s.get("domains"):
            continue
        body.append(heading(summaries, s))
        if not s["shifts"]["test"]:
            body.append(Raw('<p class="empty">No simulated held-out shift (shifts.test): no ranking to compare.</p>'))
        fig = fig_rankings(s)
        if fig:
            body.append(fig)
        body.append(_table(s))
        body.append(Raw("<ul>" + "".join(f"<li><b>{esc(d['name'])}</b>: {esc(words(d))}</li>"
                                         for d in s["domains"].values()) + "</ul>"))
        body.append(Raw("<h3>Selected against the baselines, on each domain's images</h3>"))
        body.append(_paired(s))
    if not body:
        body.append(Raw('<p class="empty">No real domain in this study (shifts.domains = a folder of '
                        '&lt;domain&gt;/&lt;class&gt;/&lt;image&gt;).</p>'))
    return ("each real domain of shifts.domains is a held-out test set of its own images, never averaged into the "
            "simulated OOD mean. Per domain: Spearman's \u03c1 between the completed trials' mean accuracy under the "
            "simulated held-out shifts and their accuracy on the domain (1: the simulated ranking is the real one), "
            "with a 95% bootstrap interval that resamples the trials and the images of both sides; the "
            "accuracy-on-the-line fit of domain against ID accuracy (probit); and the selected configuration against "
            "each baseline family's best on the domain's images (paired, fresh seeds, Holm over the baselines).",
            Raw("".join(body)))

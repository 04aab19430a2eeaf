"""The report's Learning curves section (issue 25): ID and mean OOD accuracy against labels per class (log axis) per
strategy with seed intervals, and each crossover in words with its interval (harness.budget_curves's numbers)."""

from __future__ import annotations

from harness import schema
from harness.budget_curves import NONE, SELECTED
from harness.report.figures import COLORS
from harness.report.kit import Raw, ci, drawn, esc, figure, heading, pct, png, pts, rc, table

METRICS = {"id": "ID accuracy", "ood": "mean OOD accuracy"}


def arm_name(arm: str) -> str:
    return "selected" if arm == SELECTED else schema.BASELINES.get(arm, arm)


def budget_name(b) -> str:
    return "all labels" if b == 0 else f"{b} labels per class" if b != NONE else "beyond the largest budget"


def crossover_words(c: dict) -> str:
    """A crossover in words: who leads at the smallest budget, where that stops, and the interval of that budget."""
    lead, other = (c["a"], c["b"]) if c["leader"] == "a" else (c["b"], c["a"])
    first = c["budgets"][0]
    sign = 1 if c["leader"] == "a" else -1
    d0 = sign * c["diffs"][0]
    what = METRICS[c["metric"]]
    if c["at"] == NONE:
        return (f"{arm_name(lead)} beats {arm_name(other)} on {what} at every budget, {pts(d0)} points at "
                f"{budget_name(first)}: no crossover within the budgets studied (95% interval of the crossover: "
                f"{budget_name(c['ci'][0])} to {budget_name(c['ci'][1])}; {pct(c['share_none'], 0)}% of resamples "
                f"never cross)")
    i = c["budgets"].index(c["at"])
    return (f"{arm_name(lead)} beats {arm_name(other)} on {what} up to {budget_name(c['budgets'][i - 1])} "
            f"({pts(d0)} points at {budget_name(first)}); from {budget_name(c['at'])} on, {arm_name(other)} leads "
            f"({pts(-sign * c['diffs'][i])} points there). 95% interval of the crossover budget: "
            f"{budget_name(c['ci'][0])} to {budget_name(c['ci'][1])} ({pct(c['share_none'], 0)}% of resamples never "
            f"cross)")


def _x(block: dict, b: int):
    return block["labels"].get(str(b), block["labels"].get(b))


def _figure(block: dict, name: str) -> Raw:
    with rc():
        fig = figure(9.5, 3.6)
        for j, metric in enumerate(("id", "ood")):
            ax = fig.add_subplot(1, 2, j + 1)
            for k, (arm, per) in enumerate(block["curves"].items()):
                pts_ = [(_x(block, int(b)), p[metric]) for b, p in per.items()
                        if _x(block, int(b)) and p[metric].get("mean") is not None]
                pts_.sort(key=lambda t: t[0])
                if not pts_:
                    continue
                xs, ys = [t[0] for t in pts_], [t[1]["mean"] for t in pts_]
                lo = [t[1]["ci"][0] if t[1].get("ci") else t[1]["mean"] for t in pts_]
                hi = [t[1]["ci"][1] if t[1].get("ci") else t[1]["mean"] for t in pts_]
                color = COLORS["best"] if arm == SELECTED else COLORS.get(arm, "#7f7f7f")
                twins = next(iter(per.values())).get("same_as") or []
                label = arm_name(arm) + (f" (= {', '.join(arm_name(t) for t in twins)})" if twins else "")
                # a twin (the selected trial is that family's best) is drawn dashed over it, so both stay visible
                ax.plot(xs, [100 * y for y in ys], "o--" if twins and arm == SELECTED else "o-", color=color,
                        label=drawn(label), ms=4)
                # accuracy lies in [0, 100]: a 2-seed t interval can leave it; the table keeps the interval itself
                ax.fill_between(xs, [max(0.0, 100 * v) for v in lo], [min(100.0, 100 * v) for v in hi], color=color,
                                alpha=0.15, lw=0)
            ax.set_xscale("log")
            ax.set_xlabel("labels per class (log; the last point: all labels)")
            ax.set_ylabel(f"{METRICS[metric]} (%)")
            ax.set_title(drawn(f"{METRICS[metric]}: {name}"))
            if j == 0:
                ax.legend()
        return png(fig, f"learning curves of {name}")


def rows(block: dict) -> list[list]:
    """[strategy, budget (labels per class, 0 = all), trial, seeds, ID, OOD] per arm and budget: the page's table and
    the Markdown one."""
    out = []
    for arm, per in block["curves"].items():
        for b, p in per.items():
            twins = ", ".join(arm_name(t) for t in p.get("same_as") or [])
            out.append([arm_name(arm), int(b), f"#{p['number']}" + (f" (= {twins})" if twins else ""), p["seeds"],
                        f"{pct(p['id'].get('mean'))} [{ci(p['id'].get('ci'))}]",
                        f"{pct(p['ood'].get('mean'))} [{ci(p['ood'].get('ci'))}]"])
    return out


def _table(block: dict) -> Raw:
    return table(["strategy", "budget", "trial", "seeds", "ID acc (%) [95% CI]", "OOD mean (%) [95% CI]"],
                 [r[:1] + [budget_name(r[1])] + r[2:] for r in rows(block)], "budgets")


def learning_curves_section(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    for s in summaries:
        block = s.get("label_budgets")
        if not block:
            continue
        body.append(heading(summaries, s))
        body.append(_figure(block, s["name"]))
        words = [c for c in block["crossovers"] if c["at"] != NONE]
        steady = [c for c in block["crossovers"] if c["at"] == NONE]
        items = "".join(f"<li>{esc(crossover_words(c))}</li>" for c in words + steady)
        body.append(Raw(f"<ul>{items}</ul>" if items else '<p class="empty">No two strategies share two budgets.</p>'))
        body.append(_table(block))
    if not body:
        body.append(Raw('<p class="empty">No label budget runs (study.label_budgets is empty).</p>'))
    return ("per strategy, ID and mean OOD accuracy (ood_acc_mean: the held-out severity shifts) against labels per "
            "class on a log axis, after the search, with the baselines' lr sweeps rerun at each budget (each family's "
            "best lr chosen on validation there) and the selected configuration as searched with all labels. Points "
            "are means over seeds, bands 95% t intervals; each seed also redraws which images are labelled (nested, "
            "the same count of every class). A crossover is the smallest budget at which the strategy that leads with "
            "the fewest labels stops leading, on paired test images; its interval comes from a two-level bootstrap "
            "of the images and seeds, drawn alike at every budget.", Raw("".join(body)))

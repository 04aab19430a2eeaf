"""The sustain verdict tables as rows of text, one wording for the HTML page (sustain_page) and the README's generated
block (harness.sustain.markdown): the deployed model against the reachable one, drift gain against control gain, the
paired policy comparisons and the cost-accuracy frontier (sustain_verdicts)."""

from __future__ import annotations

from harness import schema
from harness.report.kit import pct, pts

DEPLOYED = ["seed", "deployed: epochs (best)", "deployed: val acc (%)", "deployed: clean test acc (%)",
            "reachable: epochs (best)", "reachable: clean test acc (%)", "gap (pts)"]
CONTROL = ["policy", "drift gain (pts) [95% CI]", "control gain (pts) [95% CI]",
           "drift minus control (pts) [95% CI]", "n (seeds x images)", "interval over"]
PAIRED = ["A beats B?", "A - B (pts)", "95% CI", "n (seeds x images)", "Holm p", "images x epochs A / B",
          "update s A / B", "outcome", "why"]
FRONTIER = ["budget", "policy at this cost", "its mean stream acc (%)", "best within budget", "best's acc (%)"]


def interval(d: dict | None) -> str:
    """'+12.3 [+9.8, +14.9]' in points; '–' without a value."""
    if not d or d.get("diff") is None:
        return "\u2013"
    return f"{pts(d['diff'])} [{pts(d['ci'][0])}, {pts(d['ci'][1])}]" if d.get("ci") else pts(d["diff"])


def n_text(d: dict | None) -> str:
    return "\u2013" if not d else f"{d['n_seeds']} x {d['n_images']}"


def deployed_rows(s: dict) -> list[list]:
    rows = []
    for seed, rec in sorted((s.get("deployed") or {}).items(), key=lambda kv: int(kv[0])):
        d, r = rec.get("deployed") or {}, rec.get("reachable") or {}
        rows.append([seed, f"{d.get('epochs', '?')} ({d.get('best_epoch', '?')})", pct(d.get(schema.VAL_ACC)),
                     pct(d.get("test_acc")), f"{r.get('epochs', '?')} ({r.get('best_epoch', '?')})" if r else "\u2013",
                     pct(r.get("test_acc")), pts(rec.get("gap"))])
    return rows


def deployed_note(s: dict) -> str:
    """The mean gap in words: the deployed model against the best reachable on the same data."""
    recs = [r for r in (s.get("deployed") or {}).values() if r.get("gap") is not None]
    if not recs:
        return ""
    mean = lambda k: sum(r[k]["test_acc"] for r in recs) / len(recs)  # noqa: E731
    gap = sum(r["gap"] for r in recs) / len(recs)
    return (f"The deployed model reaches {pct(mean('deployed'))}% clean test accuracy (mean over {len(recs)} seeds), "
            f"the same recipe on the whole train split {pct(mean('reachable'))}%: a gap of {pts(gap)} points.")


def control_rows(s: dict) -> list[list]:
    return [[r["policy"], interval(r["drift"]), interval(r["control"]), interval(r["difference"]),
             n_text(r["difference"]), (r["difference"] or {}).get("level", "\u2013")] for r in s.get("drift_vs_control") or []]


def paired_rows(s: dict) -> list[list]:
    def cost(a, b, fmt):
        return " / ".join("\u2013" if v is None else format(v, fmt) for v in (a, b))

    return [[f"{c['a']} vs {c['b']}", pts(c["diff"]), interval(c).split(" ", 1)[1] if c.get("ci") else "\u2013",
             n_text(c), f"{c['p_holm']:.3g}", cost(c["cost_a"], c["cost_b"], ".0f"),
             cost(c["seconds_a"], c["seconds_b"], ".1f"), c["outcome"], c["detail"]] for c in s.get("comparisons") or []]


FRONTIER_MEASURES = {schema.UPDATE_EXAMPLES: ("images x epochs", ".0f"), schema.UPDATE_SECONDS: ("update s", ".1f")}


def frontier_rows(s: dict, measure: str) -> list[list]:
    what, fmt = FRONTIER_MEASURES[measure]
    return [[f"{format(r['budget'], fmt)} {what}", r["policy"], pct(r["acc"]), r["best"], pct(r["best_acc"])]
            for r in (s.get("frontier") or {}).get(measure, [])]

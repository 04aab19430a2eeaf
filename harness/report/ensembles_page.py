"""The study page's section "Weight-space ensembles" (issue 23): the WiSE-FT curves (ID against OOD accuracy along
alpha), the chosen alpha against alpha = 1, the soups against their best ingredient and the selected configuration,
each with its paired interval (harness.ensemble_numbers)."""

from __future__ import annotations

from harness import schema
from harness.report.figures import COLORS, OTHERS
from harness.report.kit import Raw, drawn, esc, figure, heading, num, pct, png, pts, rc, table

HOW = ("WiSE-FT (Wortsman et al. 2022): the weights theta(alpha) = (1 - alpha) theta_0 + alpha theta_ft, theta_0 the "
       "linear probe (alpha 0) and theta_ft the fine-tuned trial (alpha 1), BatchNorm statistics interpolated alike; "
       "the figure draws ID against mean OOD test accuracy along alpha, the ring marks the alpha chosen on "
       "validation. A trial whose head did not start from the probe's (full FT: a random head) has no linear path "
       "to theta_0, and its curve dips in the middle (default study: validation 31% at alpha 0.4); LP-FT's starts "
       "at theta_0. Soups average the weights of the study's kept trials that share a start: uniform (all of them) "
       "and greedy (added best first while validation does not drop). Differences are paired on the held-out shifted "
       "images (95% bootstrap interval); one seed a side is image noise only.")


def fig_wise(s: dict) -> Raw | None:
    configs = (s.get("ensembles") or {}).get("wise", {}).get("configs", [])
    if not configs:
        return None
    with rc():
        fig = figure(5.6, 4.2)
        ax = fig.subplots()
        for i, c in enumerate(configs):
            pts_ = [p for p in c["curve"] if p[schema.ID_ACC] is not None and p[schema.OOD_ACC_MEAN] is not None]
            color = COLORS["best"] if c["role"] == "selected" else COLORS.get(c["baseline"], OTHERS[i % len(OTHERS)])
            xs, ys = [100 * p[schema.ID_ACC] for p in pts_], [100 * p[schema.OOD_ACC_MEAN] for p in pts_]
            ax.plot(xs, ys, "-o", color=color, ms=3, lw=1.2,
                    label=drawn(f"#{c['number']} " + ", ".join(x for x in (c["role"] if c["role"] == "selected" else "",
                                                                            c["baseline"]) if x)
                                + f" (alpha* {c['chosen']:.1f})"))
            for p, x, y in zip(pts_, xs, ys):
                if p["alpha"] in (0.0, 1.0):
                    ax.annotate(f"{p['alpha']:.0f}", (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
                if p["alpha"] == c["chosen"]:
                    ax.scatter([x], [y], s=90, facecolors="none", edgecolors=color, zorder=4)
        ax.set_xlabel("ID test accuracy (%)")
        ax.set_ylabel("mean OOD accuracy (%)")
        ax.set_title("WiSE-FT: alpha from 0 (linear probe) to 1 (fine-tuned)")
        ax.legend(loc="best")
        fig.tight_layout()
        return png(fig, "WiSE-FT curves: ID against OOD accuracy along alpha")


def _diff(c: dict | None, part: str = "ood") -> str:
    d = (c or {}).get(part)
    return f"{pts(d['diff'])} [{pts(d['ci'][0])}, {pts(d['ci'][1])}] ({d['level']})" if d else "-"


def wise_rows(s: dict) -> list[list]:
    out = []
    for c in (s.get("ensembles") or {}).get("wise", {}).get("configs", []):
        at = {p["alpha"]: p for p in c["curve"]}
        ch, one = at.get(c["chosen"], {}), at.get(1.0, {})
        out.append([f"#{c['number']}", c["baseline"] or c["role"], f"{c['chosen']:.1f}",
                    pct(ch.get(schema.ID_ACC)), pct(ch.get(schema.OOD_ACC_MEAN)), pct(one.get(schema.OOD_ACC_MEAN)),
                    _diff(c["vs_ft"]), _diff(c["vs_ft"], "clean")])
    return out


WISE_HEAD = ["trial", "family", "alpha (val)", "ID", "OOD", "OOD at alpha 1", "OOD: chosen - alpha 1",
             "clean: chosen - alpha 1"]


def soup_rows(s: dict) -> list[list]:
    return [[x["kind"], x["start"], ", ".join(f"#{n}" for n in x["ingredients"]), num(x["value"], ".4f"),
             pct(x.get(schema.ID_ACC)), pct(x.get(schema.OOD_ACC_MEAN)),
             f"#{x['best_ingredient']}" if x["best_ingredient"] is not None else "-",
             _diff(x["vs_best_ingredient"]), _diff(x["vs_selected"])]
            for x in (s.get("ensembles") or {}).get("soups", [])]


SOUP_HEAD = ["soup", "start", "ingredients", "validation", "ID", "OOD", "best ingredient",
             "OOD: soup - best ingredient", "OOD: soup - selected"]


def verdict(s: dict) -> str:
    """One sentence: the selected trial's WiSE-FT gain and the best soup's gain over the selected, with intervals."""
    e = s.get("ensembles") or {}
    parts = []
    sel = next((c for c in e.get("wise", {}).get("configs", []) if c["role"] == "selected"), None)
    if sel and sel["vs_ft"]:
        parts.append(f"WiSE-FT at alpha {sel['chosen']:.1f} (chosen on validation) vs the selected trial #{sel['number']} "
                     f"fine-tuned (alpha 1): OOD {_diff(sel['vs_ft'])}")
    soups = [x for x in e.get("soups", []) if x["vs_selected"]]
    if soups:
        best = max(soups, key=lambda x: (x["value"] or 0, x["kind"] == "greedy"))
        parts.append(f"the best soup on validation ({best['kind']}, {best['start']}) vs the selected configuration: "
                     f"OOD {_diff(best['vs_selected'])}")
    if e.get("champion_run_id"):
        parts.append("a soup beat the selected configuration on validation and is the registered champion")
    if e.get("share") is not None:
        parts.append(f"they cost {e['seconds']:.0f} s, {100 * e['share']:.0f}% of the study's wall time")
    return "; ".join(parts) + "." if parts else ""


def ensembles_section(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    for s in summaries:
        e = s.get("ensembles") or {}
        body.append(heading(summaries, s))
        if not e:
            body.append(Raw('<p class="empty">No WiSE-FT curve or soup was recorded (a study before issue 23, or one '
                            'stopped short of its target).</p>'))
            continue
        text = verdict(s)
        if text:
            body.append(Raw(f'<p class="verdict"><b>Verdict:</b> {esc(text)}</p>'))
        fig = fig_wise(s)
        if fig:
            body.append(fig)
        if wise_rows(s):
            body.append(table(WISE_HEAD, wise_rows(s), "wise"))
            body.append(Raw(f"<p><small>{esc(e['wise'].get('bn') or '')}; alpha chosen on "
                            f"{esc(e['wise'].get('chosen_on') or '')}.</small></p>"))
        body.append(table(SOUP_HEAD, soup_rows(s), "soups") if soup_rows(s) else
                    Raw('<p class="empty">No soup: fewer than 2 kept trials share a start (study.keep_weights).</p>'))
    return HOW, Raw("".join(body))

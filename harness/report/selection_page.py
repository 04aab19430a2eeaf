"""The report's Selection section: the finalists, their mean validation over seeds and how often a bootstrap of the
validation images and seeds selects each (harness.selection), and the baselines' lr grids with their extension at an
edge (harness.baseline_grid)."""

from __future__ import annotations

from harness import schema
from harness.baseline_grid import STOPPED
from harness.report.kit import Raw, esc, heading, lr_text, pct, table


def _grids(block: dict) -> str:
    fams = (block.get("extended") or {}).get("families") or {}
    items = []
    for fam, g in fams.items():
        added = ", ".join(lr_text(v) for v in g.get("added") or []) or "none"
        items.append(f"<li>{esc(schema.BASELINES.get(fam, fam))}: grid {esc(', '.join(lr_text(v) for v in g['grid']))}"
                     f"; best lr {esc(lr_text(g.get('best_lr')))}{' (on its ' + esc(g['edge']) + ' edge)' if g.get('edge') else ''}"
                     f"; added {esc(added)}; stopped: {esc(STOPPED.get(g.get('stopped'), g.get('stopped') or '-'))}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else '<p class="empty">No baseline grid record (baseline_grid.json).</p>'


def selection_section(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    body = []
    for s in summaries:
        block = s.get("selection") or {}
        body.append(heading(summaries, s))
        rows = [[f"#{r['number']}" + (" (selected)" if r["number"] == block.get("selected") else ""),
                 schema.BASELINES.get(r["family"], r["family"]) or "searched", r["seeds"], pct(r["mean_val"], 2),
                 pct(r["share"], 1) if r["share"] is not None else "\u2013", len(r["fresh_runs"])]
                for r in block.get("finalists", [])]
        body.append(table(["finalist", "family", "seeds", "mean validation", "selected in % of resamples",
                           "fresh seeds"], rows, "selection") if rows else Raw('<p class="empty">No finalist.</p>'))
        body.append(Raw(_grids(block)))
    rule = (summaries[0].get("selection") or {}).get("rule", "")  # section() escapes the text
    return (f"rule: {rule}. The share is how often the same rule selects each finalist when the validation images "
            f"(paired across finalists) and each finalist's seeds are resampled with replacement; a selection that "
            f"one image can flip has a share well under 100%. Fresh seeds are the runs whose test numbers are free of "
            f"the search's winner's curse.", Raw("".join(body)))

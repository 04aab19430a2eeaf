"""The study page's headline: the selected configuration's cards, its paired comparisons with each baseline family's
best and the OOD-best trial, and the pass/warn/fail checks on it."""

from __future__ import annotations

from harness import schema
from harness.report.kit import Raw, ci, esc, heading, lr_text, pct, pts, table


def _vs(s: dict, rows: dict, b: dict) -> Raw:
    """The headline's comparison with each baseline family's best: the paired difference of mean OOD accuracy (held-out
    severity shifts, the same images, averaged over seeds) with its 95% bootstrap interval, or, for studies without
    per-image correctness, the plain difference."""
    fams = (s.get("paired") or {}).get("baselines", {})
    lines = []
    for fam, n in s["baselines"].items():
        r = rows.get(n)
        if r is None or n == b["number"]:
            continue
        c = fams.get(fam)
        name = esc(f"{schema.BASELINES[fam]} #{n}")
        if c and c["ood"]:
            o = c["ood"]
            verdict = "significant" if o["significant"] else "not significant"
            lines.append(f'{esc(pts(o["diff"]))} <small>[{esc(pts(o["ci"][0]))}, {esc(pts(o["ci"][1]))}] vs {name} '
                         f'({verdict})</small>')
        elif r[schema.OOD_ACC_MEAN] is not None and b[schema.OOD_ACC_MEAN] is not None:
            lines.append(f"{esc(pts(b[schema.OOD_ACC_MEAN] - r[schema.OOD_ACC_MEAN]))} <small>vs {esc(schema.BASELINES[fam])}</small>")
    return Raw("<br>".join(lines))


def _acc_card(s: dict, b: dict, key: str, n, ci_key: str) -> tuple[str, str]:
    """(value, description) of an accuracy card: the mean over seeds with its 95% t interval when the configuration is
    replicated, else the trial's value with its Wilson interval over n images."""
    rep = (b.get("replicates") or {}).get(key)
    if rep and rep.get("ci"):
        return (f"{pct(rep['mean'])}%", f"mean of {rep['n']} seeds, 95% CI {ci(rep['ci'])} over seeds (sd "
                                          f"{100 * rep['sd']:.1f} points); one seed: 95% CI {ci(b[ci_key])} over n = {n or '?'} images")
    return f"{pct(b[key])}%", f"95% CI {ci(b[ci_key])} (n = {n or '?'})"


def _cards(s: dict) -> Raw:
    rows = {r["number"]: r for r in s["trials"]}
    b = rows.get(s["best"])
    if b is None:
        return Raw(f'<div class="banner warn" id="no-completed">{esc(s["message"])}</div>')
    worst = b["worst_shift"]
    vs = _vs(s, rows, b)
    o = rows.get(s["oracle"])
    hindsight = ("the same trial is also the best under shift" if o is None or o["number"] == b["number"] else
                 f"in hindsight trial #{o['number']} is best under shift ({pct(o[schema.OOD_ACC_MEAN])}%, "
                 f"{pts(o[schema.OOD_ACC_MEAN] - b[schema.OOD_ACC_MEAN])} points)")
    id_v, id_d = _acc_card(s, b, schema.ID_ACC, s["n_test"], "id_acc_ci")
    ood_v, ood_d = _acc_card(s, b, schema.OOD_ACC_MEAN, s["n_shift_eval"], "ood_acc_ci")
    clean = b[schema.CLEAN_SUBSET_ACC] if b[schema.CLEAN_SUBSET_ACC] is not None else b[schema.ID_ACC]
    cards = [
        ("Selected configuration", f"trial #{b['number']}",
         f"{b['text'] or '-'}, lr {lr_text(b['lr'])}" + (f" ({schema.BASELINES[b['baseline']]} baseline)" if b['baseline'] else "")),
        ("ID test accuracy", id_v, id_d),
        ("Mean OOD accuracy", ood_v,
         f"{ood_d}; OOD \u2212 clean (same images) {pts((b[schema.OOD_ACC_MEAN] or 0) - (clean or 0))} points"),
        ("Worst shift", f"{worst or '-'}", f"{pct(b[schema.OOD_ACC_WORST])}% accuracy"),
        ("Against the baselines", vs or "-",
         "points of mean OOD accuracy, paired on the same images, 95% bootstrap interval; each family's best on validation"),
    ]
    html_ = "".join(f'<div class="card"><div class="k">{esc(k)}</div>'
                    f'<div class="v{" list" if isinstance(v, Raw) else ""}" data-key="{esc(k)}">{esc(v)}</div>'
                    f'<div class="d">{esc(d)}</div></div>' for k, v, d in cards)
    sel = f"Selected by {s['objective']} on validation data (held-out test shifts never steer selection); {hindsight}."
    return Raw(f'<div class="cards">{html_}</div><p class="note">{esc(sel)}</p>')


def _conditions(s: dict) -> Raw:
    if not s["conditions"]:
        return Raw("")
    rows = []
    for c in s["conditions"]:
        v = c["value"]
        shown = ("\u2013" if v is None else str(v) if isinstance(v, int) else
                 f"{v:.3f}" if "ECE" in c["name"] or "R\u00b2" in c["name"] or "error" in c["name"] else f"{100 * v:.1f} points")
        rows.append([Raw(f'<td><span class="badge {esc(c["status"])}">{esc(c["status"])}</span></td>'), c["name"], shown, c["detail"]])
    return table(["status", "condition", "value", "why"], rows, "conditions")


def _comparisons(s: dict) -> Raw:
    """The selected configuration against each baseline family's best and the OOD-best trial: paired differences on
    the same images with their 95% bootstrap intervals and n."""
    p = s.get("paired") or {}
    rows, attrs = [], []
    trials = {r["number"]: r for r in s["trials"]}

    def diff(c):
        return ("\u2013", "\u2013") if not c else (pts(c["diff"]), f"{pts(c['ci'][0])} to {pts(c['ci'][1])}")

    for fam, c in p.get("baselines", {}).items():
        r = trials[c["number"]]
        o, cl = diff(c["ood"]), diff(c["clean"])
        rows.append([f"selected #{p['selected']} vs {schema.BASELINES[fam]} #{c['number']} (lr {lr_text(r['lr'])})",
                     f"{p['selected_seeds']} / {c['seeds']}", o[0], o[1], cl[0], cl[1], c["ood"]["n"],
                     "yes" if c["ood"]["significant"] else "no"])
        attrs.append({"data-compare": fam})
    o = p.get("oracle")
    if o:
        d = diff(o["ood"])
        rows.append([f"OOD-best #{o['number']} vs selected #{p['selected']}", f"{o['seeds']} / {p['selected_seeds']}",
                     d[0], d[1], "\u2013", "\u2013", o["ood"]["n"], "yes" if o["ood"]["significant"] else "no"])
        attrs.append({"data-compare": "oracle"})
    if not rows:
        return Raw("")
    return Raw("<h3>Paired comparisons (same images)</h3>" + table(
        ["comparison", "seeds", "OOD diff (pts)", "OOD 95% CI", "clean diff (pts)", "clean 95% CI", "images n",
         "significant"], rows, "compare", attrs) + f'<p class="note">{esc(COMPARE_RULE)}</p>')


COMPARE_RULE = ("Rule: one configuration beats another only when the 95% interval of the paired difference excludes 0. "
                "Each difference is the mean over the n images of the shifted test sets of the per-image accuracy "
                "(averaged over every held-out severity shift and severity, and over each side's seeds) of one side "
                "minus the other; the interval is a paired bootstrap over those images (2000 resamples). It covers "
                "image sampling; training randomness shows in the seed intervals of the leaderboard.")


def headline(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    blocks = []
    for s in summaries:
        banner = f'<div class="banner warn" id="no-completed">{esc(s["message"])}</div>' if s["message"] and s["best"] is not None else ""
        blocks.append(f'<div class="study">{heading(summaries, s)}{banner}{_cards(s)}{_comparisons(s)}'
                      f'{_conditions(s)}</div>')
    grid = "grid2" if len(summaries) > 1 else ""
    return ("the configuration the study selected, its accuracy on the clean test set (ID) and under the held-out "
            "shifts (OOD) with 95% intervals (over seeds when replicated, else Wilson over n images), how it compares "
            "with the best of each baseline family on the same images, and pass/warn/fail checks on it.",
            Raw(f'<div class="{grid}">{"".join(blocks)}</div>'))

"""The study page's headline: the selected configuration's cards, its paired comparisons and budgets, its conditions."""

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
        return (f"{pct(rep['mean'])}%", f"mean of {rep['n']} fresh seeds (the search-time run, which won on "
                                          f"validation, left out), 95% CI {ci(rep['ci'])} over seeds (sd "
                                          f"{100 * rep['sd']:.1f} points; n = {n or '?'} images a seed)")
    return f"{pct(b[key])}%", f"95% CI {ci(b[ci_key])} (n = {n or '?'})"


def _cards(s: dict) -> Raw:
    rows = {r["number"]: r for r in s["trials"]}
    b = rows.get(s["best"])
    if b is None:
        return Raw(f'<div class="banner warn" id="no-completed">{esc(s["message"])}</div>')
    worst = b["worst_shift"]
    vs = _vs(s, rows, b)
    o = rows.get(s["oracle"])
    po = ((s.get("paired") or {}).get("oracle") or {}).get("ood")
    hindsight = ("the same trial is also the best under shift" if o is None or o["number"] == b["number"] else
                 f"in hindsight trial #{o['number']} has the highest mean OOD accuracy over the paired images, "
                 f"{pts(po['diff'])} points over the selected one (the selection regret)" if po else
                 f"in hindsight trial #{o['number']} is best under shift ({pct(o[schema.OOD_ACC_MEAN])}%, "
                 f"{pts(o[schema.OOD_ACC_MEAN] - b[schema.OOD_ACC_MEAN])} points)")
    id_v, id_d = _acc_card(s, b, schema.ID_ACC, s["n_test"], "id_acc_ci")
    ood_v, ood_d = _acc_card(s, b, schema.OOD_ACC_MEAN, s["n_shift_eval"], "ood_acc_ci")
    # OOD - clean on the same images, over the seeds the cards use (comparisons.drops); the trial's own run otherwise
    drop = (s.get("drops") or {}).get("mean")
    clean = b[schema.CLEAN_SUBSET_ACC] if b[schema.CLEAN_SUBSET_ACC] is not None else b[schema.ID_ACC]
    gap = (f"{pts(-drop['diff'])} points [{pts(-drop['ci'][1])}, {pts(-drop['ci'][0])}]" if drop else
           f"{pts((b[schema.OOD_ACC_MEAN] or 0) - (clean or 0))} points")
    cards = [
        ("Selected configuration", f"trial #{b['number']}",
         f"{b['text'] or '-'}, lr {lr_text(b['lr'])}" + (f" ({schema.BASELINES[b['baseline']]} baseline)" if b['baseline'] else "")),
        ("ID test accuracy", id_v, id_d),
        ("Mean OOD accuracy", ood_v,
         f"{ood_d}; OOD \u2212 clean (same images) {gap}"),
        ("Worst shift", f"{worst or '-'}", f"{pct(b[schema.OOD_ACC_WORST])}% accuracy"),
        ("Against the baselines", vs or "-",
         "points of mean OOD accuracy, paired on the same images, 95% bootstrap interval over seeds and images; each family's best on validation"),
    ]
    html_ = "".join(f'<div class="card"><div class="k">{esc(k)}</div>'
                    f'<div class="v{" list" if isinstance(v, Raw) else ""}" data-key="{esc(k)}">{esc(v)}</div>'
                    f'<div class="d">{esc(d)}</div></div>' for k, v, d in cards)
    sel = f"Selected by {s['objective']} on validation data (held-out test shifts never steer selection); {hindsight}."
    return Raw(f'<div class="cards">{html_}</div><p class="note">{esc(sel)}</p>')


def value_text(c: dict, v) -> str:
    """A condition's value (or a bound) in its unit: signed points of accuracy, 3 decimals, or a count."""
    if v is None:
        return "\u2013"
    return (f"{100 * v:+.1f} points" if c["unit"] == "points" else str(v) if c["unit"] == "count" else f"{v:.3f}")


def interval_text(c: dict) -> str:
    iv = c.get("interval")
    if not iv:
        return "\u2013"
    return (f"{100 * iv[0]:+.1f} to {100 * iv[1]:+.1f}" if c["unit"] == "points" else f"{iv[0]:.3f} to {iv[1]:.3f}")


def n_text(c: dict) -> str:
    """A condition's sample size: images and seeds (selected / other side for a comparison), or trials."""
    n = c.get("n") or {}
    parts = [f"{n['images']} images"] if n.get("images") else []
    if n.get("seeds") is not None:
        parts.append(f"seeds {n['seeds']}" if isinstance(n["seeds"], str) else f"{n['seeds']} seed{'s' * (n['seeds'] != 1)}")
    if n.get("trials"):
        parts.append(f"{n['trials']} trials")
    text = ", ".join(parts) or "\u2013"
    return f"{text} ({c['level']})" if c.get("level") else text


def _conditions(s: dict) -> Raw:
    if not s["conditions"]:
        return Raw("")
    rows = []
    for c in s["conditions"]:
        detail = c.get("detail") or ""
        detail = f'<br><small class="evidence">{esc(detail[:1].upper() + detail[1:])}.</small>' if detail else ""
        rows.append([Raw(f'<td><span class="badge {esc(c["outcome"])}">{esc(c["outcome"])}</span></td>'),
                     Raw(f"<td><b>{esc(c['name'])}</b>{detail}</td>"), value_text(c, c["value"]), interval_text(c),
                     n_text(c), Raw(f"<td><small>{esc(c['statistic'][:1].upper() + c['statistic'][1:])}. "
                                    f"<b>Rule:</b> {esc(c['rule'])}.</small></td>")])
    return Raw("<h3>Conditions</h3>" + table(["outcome", "condition and evidence", "value", "95% interval", "n",
                                              "statistic and rule"], rows, "conditions"))


def budget_text(b: dict | None) -> str:
    """A family's budget in words: trials (finished, pruned), epochs, lr grid points and whether it was extended."""
    if not b:
        return "\u2013"
    grid = b["lr_grid"]
    lrs = (f"{len(grid)} lr point{'s' * (len(grid) != 1)} ({lr_text(grid[0])} to {lr_text(grid[-1])})" if len(grid) > 1
           else f"1 lr ({lr_text(grid[0])})" if grid else "no lr")
    edge = {"low": ", best at the low edge", "high": ", best at the high edge"}.get(b.get("best_lr_edge"), "")
    ext = {True: ", grid extended", False: ", grid not extended"}.get(b.get("extended"), "")
    return (f"{b['trials']} trial{'s' * (b['trials'] != 1)} ({b['complete']} finished, {b['pruned']} pruned), "
            f"{b['epochs']} epoch{'s' * (b['epochs'] != 1)}, "
            f"{lrs}{edge}{ext}")


def _comparisons(s: dict) -> Raw:
    """The selected configuration against each baseline family's best and the hindsight-best trial: paired
    differences on the same images with their 95% two-level bootstrap intervals, Holm p, n and the family's budget."""
    p = s.get("paired") or {}
    rows, attrs = [], []
    trials = {r["number"]: r for r in s["trials"]}
    budgets = s.get("budgets") or {}

    def diff(c):
        return ("\u2013", "\u2013") if not c else (pts(c["diff"]), f"{pts(c['ci'][0])} to {pts(c['ci'][1])}")

    def tail(c):
        return [c["n"], c.get("level") or "\u2013", f"{c['p_holm']:.3g}" if c.get("p_holm") is not None else "\u2013",
                "yes" if c["significant"] else "no"]

    for fam, c in p.get("baselines", {}).items():
        r = trials[c["number"]]
        o, cl = diff(c["ood"]), diff(c["clean"])
        rows.append([f"selected #{p['selected']} vs {schema.BASELINES[fam]} #{c['number']} (lr {lr_text(r['lr'])})",
                     f"{p['selected_seeds']} / {c['seeds']}", o[0], o[1], cl[0], cl[1], *tail(c["ood"]),
                     budget_text(budgets.get(fam))])
        attrs.append({"data-compare": fam})
    o = p.get("oracle")
    if o:
        d = diff(o["ood"])
        rows.append([f"hindsight-best #{o['number']} vs selected #{p['selected']}", f"{o['seeds']} / {p['selected_seeds']}",
                     d[0], d[1], "\u2013", "\u2013", *tail(o["ood"]), "\u2013"])
        attrs.append({"data-compare": "oracle"})
    if not rows:
        return Raw("")
    return Raw("<h3>Paired comparisons (same images)</h3>" + table(
        ["comparison", "seeds", "OOD diff (pts)", "OOD 95% CI", "clean diff (pts)", "clean 95% CI", "images n",
         "interval covers", "Holm p", "significant", "family budget"], rows, "compare", attrs)
        + f'<p class="note">{esc(COMPARE_RULE)}</p>' + _budgets(s))


def _budgets(s: dict) -> Raw:
    """Every family's budget, the search's included."""
    b = s.get("budgets") or {}
    if not b:
        return Raw("")
    rows = [[schema.BASELINES.get(f, "search (sampled trials)"), budget_text(v)] for f, v in b.items()]
    return Raw("<h3>Budgets</h3>" + table(["family", "trials, epochs, lr grid"], rows, "budgets"))


COMPARE_RULE = ("Each difference is the mean over the n images of the shifted test sets of the per-image accuracy "
                "(averaged over every held-out severity shift and severity) of one side minus the other; its 95% "
                "interval is a two-level bootstrap over seeds and images (2000 resamples) when both sides have seeds, "
                "else over images alone ('image noise only': training randomness is not covered). Holm p adjusts for "
                "every OOD comparison in this table. A 'beats' claim needs Holm p < 0.05 and >= 3 seeds on each side. "
                "The family budget is what the compared family was given.")


def headline(studies: list[dict], summaries: list[dict]) -> tuple[str, Raw]:
    blocks = []
    for s in summaries:
        banner = f'<div class="banner warn" id="no-completed">{esc(s["message"])}</div>' if s["message"] and s["best"] is not None else ""
        blocks.append(f'<div class="study">{heading(summaries, s)}{banner}{_cards(s)}{_comparisons(s)}'
                      f'{_conditions(s)}</div>')
    grid = "grid2" if len(summaries) > 1 else ""
    return ("the configuration the study selected, its accuracy on the clean test set (ID) and under the held-out "
            "shifts (OOD) with 95% intervals (over seeds when replicated, else Wilson over n images), how it compares "
            "with the best of each baseline family on the same images (with each family's budget), and the conditions on "
            "it: pass when the evidence supports the rule, fail when it contradicts it, inconclusive otherwise.",
            Raw(f'<div class="{grid}">{"".join(blocks)}</div>'))

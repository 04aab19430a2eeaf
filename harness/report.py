"""`python -m harness.report`: one self-contained HTML page (inline CSS and figures, no JS) and a JSON file per study."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import html
import io
import json
import math
import re
import struct
import sys
from pathlib import Path

from harness import results

VERSION = 1
DPI = 144  # figures are drawn at 1.5x and shown at 96 px per inch: sharp on high-density screens, ~60 kB each
COLORS = {"full_ft": "#1f77b4", "linear_probe": "#ff7f0e", "lp_ft": "#2ca02c", "best": "#d62728"}
OTHERS = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
STUDY_STYLES = ["-", "--", ":", "-."]  # line style per study when several share a figure
STUDY_MARKERS = ["o", "s", "^", "D"]
MAX_HEATMAP_ROWS = 40  # beyond that the cells are unreadable; the leaderboard lists everyone
MAX_CURVES = 3  # non-baseline configurations drawn in the severity and calibration curves
OBJECTIVE_LABEL = {"multi": "val_acc (1st objective)"}  # multi-objective studies rank by their first value


# ------------------------------------------------------------------------------------------- escaping

class Raw(str):
    """Markup this module built from escaped parts. Every other string is escaped when it reaches the page."""


def esc(value) -> Raw:
    return value if isinstance(value, Raw) else Raw(html.escape(str(value), quote=True))


def td(value, key: str | None = None, cls: str = "") -> Raw:
    attrs = (f' data-key="{esc(key)}"' if key else "") + (f' class="{esc(cls)}"' if cls else "")
    return Raw(f"<td{attrs}>{esc(value)}</td>")


def table(head: list, rows: list, cls: str = "", attrs: list | None = None) -> Raw:
    """rows: lists of td() cells or plain values; attrs: a dict of row attributes per row."""
    out = [f'<table class="{esc(cls)}"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        a = "".join(f' {esc(k)}="{esc(v)}"' for k, v in ((attrs or [{}] * len(rows))[i] or {}).items())
        out.append(f"<tr{a}>" + "".join(c if isinstance(c, Raw) and c.startswith("<td") else td(c) for c in row) + "</tr>")
    return Raw("".join(out) + "</tbody></table>")


def section(sid: str, title: str, how: str, body) -> Raw:
    return Raw(f'<section id="{esc(sid)}"><h2><a href="#{esc(sid)}">{esc(title)}</a></h2>'
               f'<p class="how"><b>How to read this:</b> {esc(how)}</p>{esc(body)}</section>')


# ----------------------------------------------------------------------------------------- formatting

def pct(v, digits: int = 1) -> str:
    return "\u2013" if v is None else f"{100 * v:.{digits}f}"


def pts(v) -> str:
    return "\u2013" if v is None else f"{100 * v:+.1f}"


def ci(pair) -> str:
    return "\u2013" if not pair else f"{100 * pair[0]:.1f}\u2013{100 * pair[1]:.1f}"


def num(v, fmt: str = ".3f") -> str:
    return "\u2013" if v is None else format(v, fmt)


def lr_text(v) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) else str(v)


def trial_label(r: dict, best: int | None = None, long: bool = False) -> str:
    """'#5 best', '#0 full FT', '#4'; long adds how it fine-tunes ('#4 freeze 2, unfreeze@1')."""
    role = results.BASELINES.get(r["baseline"], "")
    tag = (f"best ({role})" if role else "best") if r["number"] == best else role
    out = f"#{r['number']}" + (f" {tag}" if tag else "")
    if long and not r["baseline"] and r["freeze_layers"] is not None:
        k, u = r["freeze_layers"], r["unfreeze"]
        out += " (full)" if not k else f" (freeze {k}" + (", never)" if u == "never" else f", unfreeze@{u.split()[-1]})")
    return out


def chips(r: dict, s: dict) -> Raw:
    out = []
    if r["number"] == s["best"]:
        out.append('<span class="chip best">selected</span>')
    if r["baseline"]:
        out.append(f'<span class="chip {esc(r["baseline"])}">{esc(results.BASELINES.get(r["baseline"], r["baseline"]))}</span>')
    if r["number"] in s["pareto"]:
        out.append('<span class="chip pareto" title="on the ID/OOD Pareto front">Pareto</span>')
    return Raw("".join(out))


def slug(name: str) -> str:
    """A folder name for a study: its own name when that is filesystem- and URL-safe, else a cleaned name plus a
    short hash (two odd names never share a folder)."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:60] or "study"
    return clean if clean == name else f"{clean}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


# -------------------------------------------------------------------------------------------- figures

def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def _png(fig, alt: str) -> Raw:
    """Figure -> inline <img> (base64 PNG). Raster keeps every label inert: nothing from the study becomes markup."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return _img(buf.getvalue(), alt, 96 / DPI)


def _img(data: bytes, alt: str, scale: float = 1.0) -> Raw:
    width = ""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        w = struct.unpack(">I", data[16:20])[0]
        width = f' width="{int(w * scale)}"'
    return Raw(f'<img{width} alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">')


def _t(text) -> str:
    """A name drawn by matplotlib: a '$' must print as a dollar, not start mathtext (two of them would parse a
    study called 'a$b$c' as math, and a lone one can raise)."""
    return str(text).replace("$", r"\$")


def _rc():
    import matplotlib

    return matplotlib.rc_context({"font.size": 9, "axes.titlesize": 10,
                                  "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
                                  "grid.alpha": 0.3, "legend.fontsize": 8, "legend.frameon": False})


def _shown(s: dict) -> list[dict]:
    """Trials drawn in curve figures: the baselines, the selected one and the next best configurations."""
    done = sorted((r for r in s["trials"] if r.get("rank")), key=lambda r: r["rank"])
    keep = [r for r in done if r["baseline"] or r["number"] == s["best"]]
    keep += [r for r in done if r not in keep][:MAX_CURVES - 1]
    return sorted(keep, key=lambda r: r["rank"])


def _color(r: dict, s: dict, i: int) -> str:
    if r["number"] == s["best"]:
        return COLORS["best"]
    return COLORS.get(r["baseline"], OTHERS[i % len(OTHERS)])


def severity_curves(summaries: list[dict], key: str = "acc") -> dict:
    """{study index: {trial number: {family: [[severity, mean over the family's shifts]]}}}; severity 0 is the clean
    test set (id_acc or id_ece). Held-out shifts with severities only (label shift has none)."""
    out = {}
    for si, s in enumerate(summaries):
        fams = {}
        for n in s["shifts"]["test"]:
            fams.setdefault(s["shifts"]["families"].get(n, n), []).append(n)
        per = {}
        for r in _shown(s):
            src = r["shift_acc"] if key == "acc" else r["shift_ece"]
            clean = r["id_acc"] if key == "acc" else r["id_ece"]
            curves = {}
            for fam, names in fams.items():
                pts_ = [[0, clean]] if clean is not None else []
                for sev in s["shifts"]["severities"]:
                    vals = [src[n][str(sev)] for n in names if str(sev) in src.get(n, {})]
                    if vals:
                        pts_.append([sev, sum(vals) / len(vals)])
                curves[fam] = pts_
            per[r["number"]] = curves
        out[si] = per
    return out


def fig_severity(summaries: list[dict], curves: dict, key: str) -> Raw | None:
    fams = sorted({f for per in curves.values() for c in per.values() for f in c})
    if not fams:
        return None
    cols = min(len(fams), 4)
    rows = -(-len(fams) // cols)
    with _rc():
        fig = _figure(2.9 * cols + 0.4, 2.5 * rows + 0.5)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, fam in zip(axes.flat, fams):
            for si, s in enumerate(summaries):
                for i, r in enumerate(_shown(s)):
                    pts_ = curves[si].get(r["number"], {}).get(fam)
                    if not pts_:
                        continue
                    xs, ys = zip(*pts_)
                    ys = [100 * y for y in ys] if key == "acc" else ys
                    label = trial_label(r, s["best"], True) + (f" [{_t(s['name'])}]" if len(summaries) > 1 else "")
                    ax.plot(xs, ys, STUDY_STYLES[si % 4], marker=STUDY_MARKERS[si % 4], ms=3.5, lw=1.6,
                            color=_color(r, s, i), label=label)
            ax.set_title(_t(fam))
            sevs = sorted({0, *(v for s in summaries for v in s["shifts"]["severities"])})
            ax.set_xticks(sevs)
            ax.set_xlabel("severity (0 = clean)")
            ax.set_ylabel("accuracy (%)" if key == "acc" else "ECE")
        for ax in list(axes.flat)[len(fams):]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout()
        return _png(fig, f"{'accuracy' if key == 'acc' else 'ECE'} versus severity per shift family")


def fig_heatmap(s: dict) -> Raw | None:
    """Trials (rows, best first) x shifts (columns: ID, held-out shifts, then selection shifts), each cell the
    shift's accuracy averaged over its severities: one readable column per shift (11 shifts x 5 severities would be
    56 columns too narrow for their numbers); per severity, see the curves and the JSON."""
    done = sorted((r for r in s["trials"] if r.get("rank")), key=lambda r: r["rank"])[:MAX_HEATMAP_ROWS]
    sh = s["shifts"]
    cols = ["ID"] + [n for n in sh["test"] + sh["sets"] + sh["selection"] if any(n in r["shift_mean"] for r in done)]
    if not done or len(cols) == 1:
        return None
    grid = [[(r["id_acc"] if n == "ID" else r["shift_mean"].get(n)) for n in cols] for r in done]
    with _rc():
        import numpy as np

        data = np.array([[np.nan if v is None else 100 * v for v in row] for row in grid])
        fig = _figure(max(5.0, 0.55 * len(cols) + 3.0), max(1.8, 0.3 * len(done) + 1.6))
        ax = fig.subplots()
        im = ax.imshow(data, aspect="auto", cmap="RdYlGn", vmin=np.nanmin(data), vmax=np.nanmax(data))
        ax.grid(False)
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([_t(n) + (" (sel)" if n in sh["selection"] else "") for n in cols], rotation=40,
                           ha="right", fontsize=7.5)
        ax.set_yticks(range(len(done)))
        ax.set_yticklabels([trial_label(r, s["best"], True) for r in done], fontsize=7.5)
        if data.size <= 600:
            for (i, j), v in np.ndenumerate(data):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="black")
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="accuracy (%), mean over severities")
        fig.tight_layout()
        return _png(fig, "heatmap of accuracy per trial and shift")


PROBIT_TICKS = (0.5, 0.9, 0.1, 0.99, 0.01, 0.8, 0.2, 0.95, 0.05, 0.98, 0.02, 0.7, 0.3, 0.6, 0.4)  # by preference


def _probit_axis(ax, lo: float, hi: float, n, axis: str, max_ticks: int = 10) -> None:
    """Percent ticks on a probit axis, at most max_ticks of them, the round ones first: probit crowds 20-80% into a
    third of the axis, so every candidate tick would overprint in a small panel."""
    gap = (hi - lo + 0.5) / max_ticks
    ticks = []
    for t in PROBIT_TICKS:
        z = results.probit(t, n)
        if lo - 0.25 <= z <= hi + 0.25 and all(abs(z - results.probit(k, n)) >= gap for k in ticks):
            ticks.append(t)
    ticks.sort()
    setter = ax.set_xticks if axis == "x" else ax.set_yticks
    labeler = ax.set_xticklabels if axis == "x" else ax.set_yticklabels
    setter([results.probit(t, n) for t in ticks])
    labeler([f"{100 * t:g}" for t in ticks])


def fig_line(summaries: list[dict], shift: str | None = None, size=(5.6, 4.2), ax=None, fig=None) -> Raw | None:
    """Probit(OOD) against probit(ID) per trial, with each study's fitted line and y = x."""
    own = ax is None
    with _rc():
        if own:
            fig = _figure(*size)
            ax = fig.subplots()
        xs_all, ys_all, drawn = [], [], False
        for si, s in enumerate(summaries):
            n = s["n_test"]
            pts_ = [(r, r["id_acc"], r["ood_acc_mean"] if shift is None else r["shift_mean"].get(shift))
                    for r in s["trials"] if r.get("rank")]
            pts_ = [(r, x, y) for r, x, y in pts_ if x is not None and y is not None]
            if not pts_:
                continue
            drawn = True
            px = [results.probit(x, n) for _, x, _ in pts_]
            py = [results.probit(y, n) for _, _, y in pts_]
            xs_all += px
            ys_all += py
            for (r, _, _), x, y in zip(pts_, px, py):
                c = _color(r, s, 5) if (r["baseline"] or r["number"] == s["best"]) else ("#555" if len(summaries) == 1 else OTHERS[si])
                ax.scatter([x], [y], s=46 if r["number"] == s["best"] else 26, color=c, zorder=3,
                           marker="*" if r["number"] == s["best"] else STUDY_MARKERS[si % 4], edgecolor="white", lw=0.5)
                if own and (len(summaries) == 1 or r["number"] == s["best"]):  # several studies: label the selected only
                    label = trial_label(r, s["best"]) + (f" [{_t(s['name'])}]" if len(summaries) > 1 else "")
                    ax.annotate(label, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
            fit = s["on_the_line"]["mean"] if shift is None else s["on_the_line"]["per_shift"].get(shift)
            if fit:
                lo, hi = min(px), max(px)
                ax.plot([lo, hi], [fit["slope"] * lo + fit["intercept"], fit["slope"] * hi + fit["intercept"]],
                        STUDY_STYLES[si % 4], color="#333" if len(summaries) == 1 else OTHERS[si], lw=1.2,
                        label=(f"{_t(s['name'])}: " if len(summaries) > 1 else "") +
                        f"fit slope {fit['slope']:.2f}, R\u00b2 {num(fit['r2'], '.2f')}")
        if not drawn:
            return None
        lo, hi = min(xs_all + ys_all), max(xs_all + ys_all)
        pad = 0.1 * (hi - lo or 1)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ":", color="#999", lw=1, label="y = x (no drop)")
        n = summaries[0]["n_test"]
        most = 10 if own else 6  # a panel of the per-shift grid is ~3 inches wide
        _probit_axis(ax, lo - pad, hi + pad, n, "x", most)
        _probit_axis(ax, lo - pad, hi + pad, n, "y", most)
        ax.set_xlabel("ID test accuracy (%, probit scale)")
        ax.set_ylabel(("mean OOD accuracy" if shift is None else f"{_t(shift)} accuracy") + " (%, probit scale)")
        ax.margins(0.08)
        if shift is not None:
            ax.set_title(_t(shift))
        ax.legend(loc="upper left")
        if own:
            fig.tight_layout()
            return _png(fig, "OOD versus ID accuracy on probit axes")
        return Raw("")


def fig_line_grid(summaries: list[dict]) -> Raw | None:
    names = []
    for s in summaries:
        names += [n for n in s["shifts"]["test"] + s["shifts"]["sets"] if n not in names and n in s["on_the_line"]["per_shift"]]
    if not names:
        return None
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    with _rc():
        fig = _figure(3.0 * cols, 2.8 * rows)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, n in zip(axes.flat, names):
            fig_line(summaries, n, ax=ax, fig=fig)
            ax.set_xlabel("ID (%)")
            ax.set_ylabel("OOD (%)")
            if ax.get_legend():
                ax.get_legend().remove()
            fit = summaries[0]["on_the_line"]["per_shift"].get(n)
            if fit and len(summaries) == 1:
                ax.set_title(f"{_t(n)}  R\u00b2 {num(fit['r2'], '.2f')}")
        for ax in list(axes.flat)[len(names):]:
            ax.set_visible(False)
        fig.tight_layout()
        return _png(fig, "accuracy on the line per held-out shift")


def fig_hparams(s: dict) -> Raw | None:
    done = [r for r in s["trials"] if r.get("rank")]
    if not done:
        return None
    epochs = s["epochs"]
    with _rc():
        fig = _figure(10.5, 5.0)
        axes = fig.subplots(2, 3, squeeze=False)
        for row, (key, name) in enumerate((("id_acc", "ID accuracy (%)"), ("ood_acc_mean", "OOD accuracy (%)"))):
            for col, param in enumerate(("lr", "freeze_layers", "unfreeze_epoch")):
                ax = axes[row][col]
                for i, r in enumerate(done):
                    x = r[param]
                    if r[key] is None or not isinstance(x, (int, float)):
                        continue
                    if param == "unfreeze_epoch":
                        if not r["freeze_layers"]:
                            continue  # conditional: no frozen groups, nothing to unfreeze
                        x = min(x, epochs) if epochs else x
                    special = r["baseline"] or r["number"] == s["best"]
                    ax.scatter([x], [100 * r[key]], s=40 if special else 22, zorder=3,
                               color=_color(r, s, i) if special else "#555",
                               marker="*" if r["number"] == s["best"] else "o")
                if param == "lr":
                    ax.set_xscale("log")
                    # an lr range inside one decade gets only minor ticks, whose labels overprint: label a few
                    from matplotlib.ticker import LogLocator, NullFormatter

                    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0)))
                    ax.xaxis.set_minor_formatter(NullFormatter())
                if param == "unfreeze_epoch" and epochs:
                    ticks = list(range(0, epochs + 1))
                    ax.set_xticks(ticks)
                    ax.set_xticklabels([str(t) if t < epochs else "never" for t in ticks])
                ax.set_xlabel(param + (" (trials with frozen groups)" if param == "unfreeze_epoch" else ""))
                if col == 0:
                    ax.set_ylabel(name)
        fig.tight_layout()
        return _png(fig, "ID and OOD accuracy against each hyperparameter")


def fig_pareto_history(s: dict) -> Raw | None:
    done = [r for r in s["trials"] if r.get("rank") and r["ood_acc_mean"] is not None]
    if not done:
        return None
    with _rc():
        fig = _figure(10.5, 3.4)
        a, b = fig.subplots(1, 2)
        front = sorted((r for r in done if r["number"] in s["pareto"]), key=lambda r: r["id_acc"])
        for i, r in enumerate(done):
            special = r["baseline"] or r["number"] == s["best"]
            a.scatter([100 * r["id_acc"]], [100 * r["ood_acc_mean"]], color=_color(r, s, i) if special else "#555",
                      s=40 if special else 22, zorder=3, marker="*" if r["number"] == s["best"] else "o")
            a.annotate(trial_label(r, s["best"]), (100 * r["id_acc"], 100 * r["ood_acc_mean"]), xytext=(3, 3),
                       textcoords="offset points", fontsize=7)
        a.plot([100 * r["id_acc"] for r in front], [100 * r["ood_acc_mean"] for r in front], "-", color="#d62728",
               lw=1, alpha=0.6, label="Pareto front")
        a.set_xlabel("ID test accuracy (%)")
        a.set_ylabel("mean OOD accuracy (%)")
        a.legend(loc="lower right")
        hist = sorted((r for r in s["trials"] if r["objective"] is not None), key=lambda r: r["number"])
        best, run = [], -1.0
        for r in hist:
            run = max(run, r["objective"])
            best.append(100 * run)
        b.scatter([r["number"] for r in hist], [100 * r["objective"] for r in hist], color="#555", s=18, zorder=3,
                  label="trial")
        b.step([r["number"] for r in hist], best, where="post", color="#d62728", lw=1.2, label="best so far")
        b.set_xlabel("trial number")
        b.xaxis.get_major_locator().set_params(integer=True)
        b.set_ylabel(f"objective: {s['objective']} (%)")
        b.legend(loc="lower right")
        fig.tight_layout()
        return _png(fig, "Pareto front and optimization history")


def fig_training(s: dict) -> Raw | None:
    trials = [r for r in s["trials"] if r["curves"].get("val_acc")]
    if not trials:
        return None
    with _rc():
        fig = _figure(10.5, 3.4)
        axes = fig.subplots(1, 3)
        for i, r in enumerate(trials):
            style = {"complete": "-", "pruned": "--", "failed": ":", "running": "-."}.get(r["state"], "-")
            special = r["baseline"] or r["number"] == s["best"]
            color = "#b00" if r["state"] == "failed" else _color(r, s, i) if special else "#888"
            for ax, key in zip(axes, ("val_acc", "val_loss", "train_loss")):
                c = r["curves"].get(key)
                if not c:
                    continue
                xs, ys = zip(*c)
                ys = [100 * y for y in ys] if key == "val_acc" else ys
                ax.plot(xs, ys, style, color=color, lw=1.8 if special else 1, alpha=1 if special else 0.7,
                        marker="x" if r["state"] != "complete" else None,
                        label=trial_label(r, s["best"]) + ("" if r["state"] == "complete" else f" ({r['state']})")
                        if (special or r["state"] != "complete") else None)
        for ax, name in zip(axes, ("validation accuracy (%)", "validation loss", "training loss")):
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.xaxis.get_major_locator().set_params(integer=True)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6) or 1, bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout()
        return _png(fig, "per-epoch training curves")


# ------------------------------------------------------------------------------------------- sections

def _cards(s: dict) -> Raw:
    rows = {r["number"]: r for r in s["trials"]}
    b = rows.get(s["best"])
    if b is None:
        return Raw(f'<div class="banner warn" id="no-completed">{esc(s["message"])}</div>')
    worst = b["worst_shift"]
    base = [rows[n] for n in s["baselines"].values() if n is not None and n != b["number"]]
    vs = Raw("<br>".join(f"{esc(pts(b['ood_acc_mean'] - r['ood_acc_mean']))} <small>vs {esc(results.BASELINES[r['baseline']])}</small>"
                         for r in base if r["ood_acc_mean"] is not None and b["ood_acc_mean"] is not None))
    o = rows.get(s["oracle"])
    hindsight = ("the same trial is also the best under shift" if o is None or o["number"] == b["number"] else
                 f"in hindsight trial #{o['number']} is best under shift ({pct(o['ood_acc_mean'])}%, "
                 f"{pts(o['ood_acc_mean'] - b['ood_acc_mean'])} points)")
    cards = [
        ("Selected configuration", f"trial #{b['number']}",
         f"{b['text'] or '-'}, lr {lr_text(b['lr'])}" + (f" ({results.BASELINES[b['baseline']]} baseline)" if b['baseline'] else "")),
        ("ID test accuracy", f"{pct(b['id_acc'])}%", f"95% CI {ci(b['id_acc_ci'])} (n = {s['n_test'] or '?'})"),
        ("Mean OOD accuracy", f"{pct(b['ood_acc_mean'])}%",
         f"95% CI {ci(b['ood_acc_ci'])}; OOD \u2212 ID {pts((b['ood_acc_mean'] or 0) - (b['id_acc'] or 0))} points"),
        ("Worst shift", f"{worst or '-'}", f"{pct(b['ood_acc_worst'])}% accuracy"),
        ("Against the baselines", vs or "-", "points of mean OOD accuracy"),
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


def headline(summaries: list[dict]) -> Raw:
    blocks = []
    for s in summaries:
        title = f"<h3>{esc(s['name'])}</h3>" if len(summaries) > 1 else ""
        banner = f'<div class="banner warn" id="no-completed">{esc(s["message"])}</div>' if s["message"] and s["best"] is not None else ""
        blocks.append(f'<div class="study">{title}{banner}{_cards(s)}{_conditions(s)}</div>')
    grid = "grid2" if len(summaries) > 1 else ""
    return section("headline", "Headline", "the configuration the study selected, its accuracy on the clean test set "
                   "(ID) and under the held-out shifts (OOD) with 95% Wilson intervals, and pass/warn/fail checks on it.",
                   Raw(f'<div class="{grid}">{"".join(blocks)}</div>'))


def provenance(summaries: list[dict]) -> Raw:
    def fields(s):
        p = s["provenance"]
        c = p["counts"]
        v = p["versions"] or {}
        oc = p["optuna_counts"]
        return [
            ("study", s["name"]), ("MLflow experiment / parent run", f"{s['experiment_id']} / {s['parent_run_id']}"),
            ("tracking URI", s["tracking_uri"]), ("Optuna storage", p["optuna_storage"] or "-"),
            ("sampler / pruner", f"{p['sampler']} / {p['pruner']}"), ("objective", p["objective"]), ("seed", p["seed"]),
            ("trials: target / complete / pruned / failed / running",
             f"{p['n_trials_target']} / {c['complete']} / {c['pruned']} / {c['failed']} / {c['running']}"),
            ("Optuna agrees", "-" if oc is None else
             ("yes" if (oc["complete"], oc["pruned"], oc["fail"]) == (c["complete"], c["pruned"], c["failed"]) else
              f"no: Optuna has {oc['complete']} complete, {oc['pruned']} pruned, {oc['fail']} failed")
             if oc else f"storage not read ({p['optuna_error']})"),
            ("wall time", f"{num(p['span_seconds'], '.0f')} s from first start to last end of the parent run; "
                          f"{num(p['trial_seconds'], '.0f')} s in trials"),
            ("device", p["device"]), ("git SHA", p["git_sha"]),
            ("versions", ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "torchvision", "optuna", "mlflow", "numpy") if k in v)),
            ("platform", v.get("platform", "-")),
            ("test-set size", f"{s['n_test'] or '?'} images ({s['n_test_source']}); each shifted test set "
                              f"{s['n_shift_eval'] or '?'} images (a fixed stratified subset)"),
            ("held-out test shifts", ", ".join(s["shifts"]["test"] + s["shifts"]["sets"]) or "-"),
            ("selection shifts (validation)", ", ".join(s["shifts"]["selection"]) or "-"),
            ("severities", ", ".join(map(str, s["shifts"]["severities"]))),
            ("data / shift-suite cache keys", f"{p['data_key']} / {p['shift_suite']}"),
            ("pretraining", "-" if not p["pretrain"] else
             f"{p['pretrain']['key']}: source val acc {pct(p['pretrain']['source_val_acc'])}%, "
             f"{num(p['pretrain']['seconds'], '.0f')} s"),
        ]

    cols = [fields(s) for s in summaries]
    rows = [[label] + [c[i][1] for c in cols] for i, (label, _) in enumerate(cols[0])]
    body = [table([""] + [s["name"] for s in summaries] if len(summaries) > 1 else ["", "value"], rows, "kv")]
    if len(summaries) > 1:
        keys = sorted({k for s in summaries for k in s["provenance"]["params"]})
        diff = [[k] + [s["provenance"]["params"].get(k, "-") for s in summaries] for k in keys
                if len({s["provenance"]["params"].get(k) for s in summaries}) > 1]
        body.append(Raw("<h3>Config keys that differ</h3>"))
        body.append(table(["key"] + [s["name"] for s in summaries], diff, "kv") if diff else Raw("<p>none</p>"))
    for s in summaries:
        cfg = s["provenance"]["config"]
        if cfg:
            body.append(Raw(f"<details><summary>resolved config of {esc(s['name'])} (config/resolved.toml)</summary>"
                            f"<pre>{esc(cfg)}</pre></details>"))
    return section("provenance", "Provenance", "what ran, where, with which code and packages; enough to reproduce "
                   "the study. Trial counts come from MLflow run states and are checked against Optuna.", Raw("".join(body)))


def _with_ci(r: dict, key: str) -> Raw:
    cik = {"id_acc": "id_acc_ci", "ood_acc_mean": "ood_acc_ci"}[key]
    return Raw(f'<td><span data-key="{esc(key)}">{esc(pct(r[key]))}</span> '
               f'<small class="ci" data-key="{esc(cik)}">{esc(ci(r[cik]))}</small></td>')


def leaderboard(summaries: list[dict]) -> Raw:
    body = []
    for s in summaries:
        head = ["rank", "trial", "strategy", "lr", f"{OBJECTIVE_LABEL.get(s['objective'], s['objective'])} (%)", "ID acc (%) [95% CI]",
                "OOD mean (%) [95% CI]", "OOD worst (%)", "eff. robustness (pts)", "ID ECE", "OOD ECE"]
        done = sorted((r for r in s["trials"] if r.get("rank")), key=lambda r: r["rank"])
        if len(summaries) > 1:
            body.append(Raw(f"<h3>{esc(s['name'])}</h3>"))
        if not done:
            body.append(Raw(f'<p class="empty">{esc(s["message"])}</p>'))
            continue
        rows = [[td(r["rank"]), Raw(f'<td><span data-key="number">#{esc(r["number"])}</span> {chips(r, s)}</td>'),
                 td(r["text"] or "-", cls="wrap"), td(lr_text(r["lr"]), "lr"), td(pct(r["objective"]), "objective"),
                 _with_ci(r, "id_acc"), _with_ci(r, "ood_acc_mean"),
                 Raw(f'<td><span data-key="ood_acc_worst">{esc(pct(r["ood_acc_worst"]))}</span> '
                     f'<small class="ci">{esc(r["worst_shift"] or "")}</small></td>'),
                 td(pts(r["effective_robustness"]), "effective_robustness"),
                 td(num(r["id_ece"]), "id_ece"), td(num(r["ood_ece_mean"]), "ood_ece_mean")] for r in done]
        attrs = [{"data-run-id": r["run_id"], "data-trial": r["number"],
                  "class": "selected" if r["number"] == s["best"] else ("baseline" if r["baseline"] else "")} for r in done]
        body.append(Raw(f'<div class="scroll">{table(head, rows, "leaderboard", attrs)}</div>'))
    return section("leaderboard", "Leaderboard", "completed trials ranked by the study objective (validation data). "
                   "ID and OOD accuracies are on the held-out test images; the 95% Wilson interval uses n = the clean test-set "
                   "size for ID and n = one shifted set's size for the OOD mean, conservative since the mean pools "
                   "many (correlated) sets of the same images. Effective robustness is the "
                   "OOD accuracy above the accuracy-on-the-line fit. Baselines carry a coloured tag.", Raw("".join(body)))


def shifts_section(summaries: list[dict], acc_curves: dict) -> Raw:
    body = []
    fig = fig_severity(summaries, acc_curves, "acc")
    if fig:
        body.append(Raw("<h3>Accuracy versus severity, per shift family</h3>"))
        body.append(fig)
    for s in summaries:
        hm = fig_heatmap(s)
        if hm:
            body.append(Raw(f"<h3>Trial \u00d7 shift accuracy{(': ' + esc(s['name'])) if len(summaries) > 1 else ''}</h3>"))
            body.append(hm)
    if not body:
        body.append(Raw('<p class="empty">No completed trial with shift metrics.</p>'))
    return section("shifts", "Shifts", "top: mean accuracy over each family's held-out shifts at each severity "
                   "(0 = clean test set) for the baselines and the best configurations; bottom: every completed trial "
                   "(rows, best first) on every shift (columns, accuracy averaged over the severities; '(sel)' marks "
                   "selection shifts, on validation images). Red is low accuracy.", Raw("".join(body)))


def line_section(summaries: list[dict]) -> Raw:
    body = []
    main = fig_line(summaries)
    if main:
        body.append(main)
    grid = fig_line_grid(summaries)
    if grid:
        body.append(Raw("<h3>Per held-out shift</h3>"))
        body.append(grid)
    for s in summaries:
        fits = [("mean over held-out shifts", s["on_the_line"]["mean"])] + list(s["on_the_line"]["per_shift"].items())
        sel = set(s["shifts"]["selection"])
        rows = [[name + (" (selection, validation images)" if name in sel else ""), num(f["slope"], ".3f"),
                 num(f["intercept"], ".3f"), num(f["r2"], ".3f"), f["n"]] for name, f in fits if f]
        if len(summaries) > 1:
            body.append(Raw(f"<h3>{esc(s['name'])}</h3>"))
        if rows:
            body.append(table(["OOD accuracy of", "slope", "intercept", "R\u00b2", "trials"], rows, "fits"))
            done = sorted((r for r in s["trials"] if r.get("rank") and r["effective_robustness"] is not None),
                          key=lambda r: -r["effective_robustness"])
            body.append(Raw("<details><summary>effective robustness per trial (points above the line)</summary>"))
            body.append(table(["trial", "role", "strategy", "ID acc (%)", "OOD mean (%)", "eff. robustness (pts)"],
                              [[f"#{r['number']}", td(chips(r, s)), r["text"], pct(r["id_acc"]), pct(r["ood_acc_mean"]),
                                pts(r["effective_robustness"])] for r in done], "er"))
            body.append(Raw("</details>"))
        else:
            body.append(Raw('<p class="empty">Needs at least 3 completed trials with different ID accuracies.</p>'))
    return section("on-the-line", "Accuracy on the line", "each point is a trial; both axes are probit-scaled "
                   "(accuracies clipped to [1/2n, 1 - 1/2n]). Miller et al. 2021 found OOD accuracy is close to linear in "
                   "ID accuracy on this scale: a high R\u00b2 means ID validation predicts OOD accuracy, and points "
                   "above the line are more robust than their ID accuracy predicts (effective robustness).",
                   Raw("".join(body)))


def hyper_section(summaries: list[dict]) -> Raw:
    body = []
    for s in summaries:
        if len(summaries) > 1:
            body.append(Raw(f"<h3>{esc(s['name'])}</h3>"))
        fig = fig_hparams(s)
        if not fig:
            body.append(Raw('<p class="empty">No completed trial.</p>'))
            continue
        body.append(fig)
        rows = []
        for param in ("lr", "freeze_layers", "unfreeze_epoch"):
            cells = [param]
            for target in ("id_acc", "ood_acc_mean"):
                imp = s["importances"].get(target, {})
                v = imp.get("values", {}).get(param)
                cells.append(Raw(f'<td class="bar" data-key="importance/{esc(target)}/{esc(param)}">'
                                 f'<span style="width:{0 if v is None else round(100 * v)}%"></span>'
                                 f'{num(v, ".2f")}</td>'))
            rows.append(cells)
        body.append(Raw("<h3>Parameter importance (fANOVA)</h3>"))
        body.append(table(["hyperparameter", "importance for ID accuracy", "importance for OOD accuracy"], rows, "imp"))
        notes = [f"{t}: {v['note']}" for t, v in s["importances"].items() if v.get("note")]
        body.append(Raw(f'<p class="note">{esc("; ".join(notes))}</p>' if notes else
                        '<p class="note">unfreeze_epoch is conditional (sampled only when freeze_layers &gt; 0); '
                        'trials without frozen groups enter as 0, the value MLflow logs for them.</p>'))
        ph = fig_pareto_history(s)
        if ph:
            body.append(Raw("<h3>Pareto front (ID versus OOD) and optimization history</h3>"))
            body.append(ph)
            front = [r for r in s["trials"] if r["number"] in s["pareto"]]
            body.append(table(["Pareto trial", "strategy", "lr", "ID acc (%)", "OOD mean (%)"],
                              [[f"#{r['number']}", r["text"], lr_text(r["lr"]), pct(r["id_acc"]), pct(r["ood_acc_mean"])]
                               for r in front], "pareto"))
    return section("hyperparameters", "Hyperparameters", "top: ID (upper row) and OOD (lower row) accuracy of every "
                   "completed trial against each hyperparameter (axis plots; the selected trial is a star, baselines "
                   "are coloured). Importances (fANOVA, share of explained variance) are rough with few trials. The "
                   "Pareto front holds the trials no other trial beats on both ID and OOD accuracy.", Raw("".join(body)))


def calibration_section(summaries: list[dict], ece_curves: dict) -> Raw:
    fig = fig_severity(summaries, ece_curves, "ece")
    body = [fig] if fig else [Raw('<p class="empty">No ECE under shift was logged.</p>')]
    for s in summaries:
        shown = _shown(s)
        if not shown:
            continue
        if len(summaries) > 1:
            body.append(Raw(f"<h3>{esc(s['name'])}</h3>"))
        keys = ("id_ece", "id_nll", "id_brier", "ood_ece_mean", "ood_nll_mean")
        body.append(table(["trial", "role"] + list(keys),
                          [[f"#{r['number']}", td(chips(r, s))] + [td(num(r["final"].get(k)), k) for k in keys] for r in shown],
                          "calib"))
    return section("calibration", "Calibration under shift", "expected calibration error (15 equal-width bins, lower "
                   "is better) per shift family against severity (0 = clean) for the baselines and the best "
                   "configurations. Ovadia et al. 2019: calibration usually degrades as the shift intensifies.",
                   Raw("".join(body)))


def training_section(summaries: list[dict]) -> Raw:
    body = []
    for s in summaries:
        if len(summaries) > 1:
            body.append(Raw(f"<h3>{esc(s['name'])}</h3>"))
        fig = fig_training(s)
        body.append(fig if fig else Raw('<p class="empty">No per-epoch metrics logged.</p>'))
    return section("training", "Training curves", "per-epoch validation accuracy, validation loss and training loss of "
                   "every trial: solid completed, dashed pruned, dotted failed (x marks their last epoch). Baselines and "
                   "the selected trial are coloured, the rest grey.", Raw("".join(body)))


def failures_section(summaries: list[dict]) -> Raw:
    body = []
    for s in summaries:
        bad = [r for r in s["trials"] if r["state"] != "complete"]
        if len(summaries) > 1:
            body.append(Raw(f"<h3>{esc(s['name'])}</h3>"))
        if not bad:
            body.append(Raw('<p class="empty">None: every trial completed.</p>'))
            continue
        body.append(table(["trial", "state", "strategy", "lr", "stopped at epoch", "reason"],
                          [[f"#{r['number']}", Raw(f'<td><span class="badge {esc(r["state"])}">{esc(r["state"])}</span></td>'),
                            r["text"] or "-", lr_text(r["lr"]), r["stopped_epoch"] if r["stopped_epoch"] is not None else "-",
                            td(r["reason"] or "-", "reason")] for r in bad], "failures",
                          [{"data-run-id": r["run_id"]} for r in bad]))
    return section("failures", "Pruned and failed trials", "pruned trials were stopped by the pruner (their curves "
                   "are in Training curves); failed trials raised an error, whose message is the reason. Neither is "
                   "ranked.", Raw("".join(body)))


def metrics_section(summaries: list[dict]) -> Raw:
    body = []
    for s in summaries:
        shown = _shown(s)
        if not shown:
            continue
        keys = sorted({k for r in shown for k in r["final"]})
        if len(summaries) > 1:
            body.append(Raw(f"<h3>{esc(s['name'])}</h3>"))
        body.append(table(["metric"] + [trial_label(r, s["best"]) for r in shown],
                          [[k] + [td(num(r["final"].get(k), ".4g"), k) for r in shown] for k in keys], "metrics"))
    return section("metrics", "All final metrics", "every final (step 0) metric MLflow holds for the baselines and the "
                   "best configurations, including those the sections above do not plot (label shift, corruption "
                   "errors, timings). The JSON file next to this page has them for every trial.",
                   Raw("".join(body) or '<p class="empty">No completed trial.</p>'))


def examples_section(studies: list[dict]) -> Raw:
    body = []
    for st in studies:
        png = st["parent"]["shift_examples"]
        if len(studies) > 1:
            body.append(Raw(f"<h3>{esc(st['name'])}</h3>"))
        body.append(_img(png, f"shift examples of {st['name']}") if png else Raw('<p class="empty">No shift_examples.png logged.</p>'))
    return section("examples", "Shift examples", "one image per shift (rows; selection shifts act on validation "
                   "images, test shifts on test images), clean and at each severity (columns).", Raw("".join(body)))


# ----------------------------------------------------------------------------------------------- page

CSS = """
:root{--fg:#1d232b;--mut:#5b6672;--line:#e3e7ec;--bg:#fff;--soft:#f6f8fa;--acc:#0b62c4}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
nav.toc{position:fixed;top:0;left:0;width:200px;height:100vh;overflow:auto;padding:20px 14px;background:var(--soft);border-right:1px solid var(--line)}
nav.toc b{display:block;margin-bottom:8px;font-size:12px;text-transform:uppercase;letter-spacing:.06em;color:var(--mut)}
nav.toc a{display:block;padding:3px 6px;border-radius:4px;color:var(--fg);text-decoration:none}
nav.toc a:hover{background:#e8edf3}
main{margin-left:200px;padding:24px 36px 80px;max-width:1320px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:0 0 4px;padding-top:8px}
h2 a{color:inherit;text-decoration:none}
h3{font-size:15px;margin:18px 0 6px}
section{border-top:1px solid var(--line);padding:14px 0 10px;margin-top:14px}
.sub{color:var(--mut);margin:0 0 8px;font-size:13px;overflow-wrap:anywhere}
p.how{color:var(--mut);margin:0 0 12px;font-size:13px;max-width:1000px}
p.note{color:var(--mut);font-size:12.5px;margin:6px 0}
.empty{color:var(--mut);font-style:italic}
table{border-collapse:collapse;margin:6px 0 10px;font-size:12.5px;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600;white-space:nowrap}
td{overflow-wrap:anywhere}
table.leaderboard td,table.metrics td,table.calib td,table.er td,table.fits td,table.failures td{white-space:nowrap}
table.failures td[data-key=reason]{white-space:normal}
table.leaderboard td.wrap{white-space:normal;min-width:140px}
table.leaderboard th{white-space:normal;vertical-align:bottom}
table.leaderboard th,table.leaderboard td{padding:4px 6px}
.scroll{overflow-x:auto}
table.kv td:first-child{color:var(--mut);white-space:nowrap}
td.ci{color:var(--mut)}
tr.selected{background:#fff3f2}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(190px,1fr));gap:10px;margin:4px 0 8px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px;background:#fff}
.card .k{font-size:11.5px;text-transform:uppercase;letter-spacing:.04em;color:var(--mut)}
.card .v{font-size:21px;font-weight:650;margin:2px 0;overflow-wrap:anywhere}
.card .d{font-size:12px;color:var(--mut)}
.card .v small{font-size:13px;font-weight:500;color:var(--mut)}
.card .v.list{font-size:15px;line-height:1.45}
small.ci{color:var(--mut);font-size:11px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:20px}
.badge{display:inline-block;white-space:nowrap;min-width:44px;text-align:center;padding:1px 7px;border-radius:10px;font-size:11.5px;font-weight:600;color:#fff}
.badge.pass{background:#1a7f37}.badge.warn{background:#bf8700}.badge.fail,.badge.failed{background:#cf222e}
.badge.n\\/a,.badge.running{background:#8c959f}.badge.pruned{background:#6e7781}
.chip{display:inline-block;padding:0 6px;margin-right:3px;border-radius:4px;font-size:11px;font-weight:600;border:1px solid}
.chip.full_ft{color:#1f77b4;border-color:#1f77b4}.chip.linear_probe{color:#c25e00;border-color:#ff7f0e}
.chip.lp_ft{color:#2ca02c;border-color:#2ca02c}.chip.best{color:#fff;background:#d62728;border-color:#d62728}
.chip.pareto{color:var(--mut);border-color:#c8d0d8}
.banner{padding:12px 14px;border-radius:8px;margin:8px 0;font-weight:600}
.banner.warn{background:#fff8c5;border:1px solid #d4a72c}
td.bar{position:relative;min-width:160px}
td.bar span{position:absolute;left:0;top:3px;bottom:3px;background:#cfe2fb;z-index:-1;border-radius:2px}
td.bar{z-index:0}
img{max-width:100%;height:auto;display:block;margin:6px 0}
pre{background:var(--soft);padding:10px;border-radius:6px;overflow:auto;font-size:12px}
details{margin:6px 0}summary{cursor:pointer;color:var(--acc)}
@media (max-width:900px){nav.toc{display:none}main{margin-left:0}}
"""

SECTIONS = [("headline", "Headline"), ("provenance", "Provenance"), ("leaderboard", "Leaderboard"), ("shifts", "Shifts"),
            ("on-the-line", "Accuracy on the line"), ("hyperparameters", "Hyperparameters"),
            ("calibration", "Calibration under shift"), ("training", "Training curves"),
            ("failures", "Pruned and failed"), ("examples", "Shift examples"), ("metrics", "All final metrics")]


def render(studies: list[dict], summaries: list[dict], generated: str) -> str:
    """The page. Adds the plotted severity curves to each summary, so the JSON holds them too."""
    if any(s.get("kind") == "sustain" for s in summaries):  # harness.sustain studies: their own page (block at the end)
        return sustain_page(studies, summaries, generated)
    names = " + ".join(s["name"] for s in summaries)
    acc, ece = severity_curves(summaries, "acc"), severity_curves(summaries, "ece")
    for i, s in enumerate(summaries):
        s["severity_curves"] = {"note": "mean over each family's held-out shifts; severity 0 = clean test set",
                                "acc": acc[i], "ece": ece[i]}
    parts = [headline(summaries), provenance(summaries), leaderboard(summaries), shifts_section(summaries, acc),
             line_section(summaries), hyper_section(summaries), calibration_section(summaries, ece),
             training_section(summaries), failures_section(summaries), examples_section(studies), metrics_section(summaries)]
    toc = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t in SECTIONS)
    sub = (f"{'Studies' if len(summaries) > 1 else 'Study'} {names} \u00b7 generated {generated} \u00b7 "
           f"MLflow {summaries[0]['tracking_uri']} \u00b7 numbers also in report.json next to this file")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc('Report: ' + names)}</title><style>{CSS}</style></head><body>"
            f'<nav class="toc"><b>Contents</b>{toc}</nav><main>'
            f"<h1>Fine-tuning under distribution shift: {esc(names)}</h1><p class=\"sub\">{esc(sub)}</p>"
            f'<p class="how"><b>How to read this page:</b> start with the Headline (the selected configuration and '
            f'its checks), then the Leaderboard. ID means the clean held-out test set; OOD means the held-out test '
            f'shifts, which never influence selection. Accuracies are percentages; each section says how to read '
            f'its figure.</p>{"".join(parts)}</main></body></html>')


def _clean(obj):
    """JSON-safe: NaN and infinities become null, tuples lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def build(study_names: list[str], tracking_uri: str, storage: str | None = None, out_dir="reports",
          log=print) -> Path:
    """Read the studies from MLflow (and Optuna), write <out_dir>/<study>/index.html (several studies:
    <a>+<b>/index.html) and report.json next to it, log both on each study's parent run, return the HTML path.
    Raises results.StudyNotFound for an unknown study or store."""
    if not study_names:
        raise results.StudyNotFound("no study name given")
    names = list(dict.fromkeys(study_names))  # the same study twice is shown once
    storage = storage or results.default_storage()
    studies = [results.load(n, tracking_uri, storage) for n in names]
    summaries = [results.summarize(st) for st in studies]
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = render(studies, summaries, generated)
    data = _clean({"harness_report_version": VERSION, "generated": generated, "tracking_uri": tracking_uri,
                   "studies": summaries})
    folder = Path(out_dir) / "+".join(slug(n) for n in names)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "index.html"
    out.write_text(page, encoding="utf-8")
    text = json.dumps(data, indent=1, sort_keys=False, allow_nan=False)
    (folder / "report.json").write_text(text, encoding="utf-8")
    for s in summaries:
        if s["message"]:
            log(s["message"])
    _log_to_mlflow(summaries, tracking_uri, page, text, folder.name, log)
    return out.resolve()


def _log_to_mlflow(summaries, tracking_uri, page: str, text: str, folder: str, log) -> None:
    """report/index.html and report/report.json on the parent run (several studies: report/compare/<a>+<b>/ on
    each parent). A store that refuses the upload costs a warning, not the report on disk."""
    from harness import tracking

    client = results.connect(tracking_uri)
    prefix = "report" if len(summaries) == 1 else f"report/compare/{folder}"
    for s in summaries:
        try:
            tracking.log_text(client, s["parent_run_id"], page, f"{prefix}/index.html")
            tracking.log_text(client, s["parent_run_id"], text, f"{prefix}/report.json")
        except Exception as e:  # noqa: BLE001 - e.g. a read-only store or artifact server down
            log(f"warning: could not log the report on run {s['parent_run_id']}: {type(e).__name__}: {e}")


# ------------------------------------------------------------------------------------------------ CLI

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report", description="Write the HTML report of one or more "
                                 "studies (several: side by side) from MLflow, and log it on each study's parent run.",
                                 epilog="Exit codes: 0 success, 1 runtime failure (e.g. server unreachable), 2 bad input.")
    ap.add_argument("--study-name", action="append", required=True, metavar="NAME",
                    help="study to report on; repeat to compare studies side by side")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlruns/mlflow.db in the current "
                    "directory)")
    ap.add_argument("--storage", help="Optuna storage URL (default: sqlite:///mlruns/optuna.db in the current "
                    "directory; used for the trial states, optional)")
    ap.add_argument("--out", default="reports", help="output folder (default: reports)")
    args = ap.parse_args(argv)
    uri = args.tracking_uri or results.default_tracking_uri()
    if not uri.startswith(("sqlite:///", "http://", "https://", "postgresql", "mysql", "databricks")):
        print(f"error: --tracking-uri: unsupported URI {uri!r}; use sqlite:///PATH or http://HOST:PORT", file=sys.stderr)
        return 2
    if any(not n.strip() for n in args.study_name):
        print("error: --study-name: must not be empty", file=sys.stderr)
        return 2
    try:
        from harness import tracking

        tracking.check_reachable(uri)
        out = build(args.study_name, uri, args.storage, args.out)
    except results.StudyNotFound as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except (ConnectionError, OSError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # an MlflowException from a broken store: a message, not a traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ===================================================================================================== sustainability
# The page of a harness.sustain study (results.summarize_sustain): accuracy over time per policy with update markers,
# the accuracy matrix R[i][j] per policy, accuracy against update cost with the Pareto front, and a table of
# per-policy metrics (mean ± sd over seeds; every cell carries data-key, data-mean and data-sd).

MAX_POLICIES = 8  # policies drawn in the time and matrix figures (the table and the cost scatter show every one)
POLICY_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
NEVER_COLOR = "#7f7f7f"
SUSTAIN_SECTIONS = [("sustainability", "Sustainability"), ("sustain-failures", "Failed policy runs"),
                    ("provenance", "Provenance")]
# table columns: (metric key, header, how a value is shown); accuracies in %, transfer in points, costs as counts
SUSTAIN_COLUMNS = [("stream_acc_mean", "mean stream acc (%)", "pct"), ("stream_acc_worst", "worst period (%)", "pct"),
                   ("bwt", "BWT (pts)", "pts"), ("forgetting", "forgetting (pts)", "pts"), ("fwt", "FWT (pts)", "pts"),
                   ("n_updates", "updates", ".1f"), ("update_seconds", "update time (s)", ".2f"),
                   ("update_examples", "update examples (images \u00d7 epochs)", ".0f")]


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


def _sustain_shown(s: dict) -> list[dict]:
    """Policies drawn in the per-policy figures: all when few; else never, the Pareto front, then the most accurate."""
    groups = s["policies"]
    if len(groups) <= MAX_POLICIES:
        return groups
    acc = lambda g: g["metrics"]["stream_acc_mean"]["mean"] or 0  # noqa: E731
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
        out.append(f"{t}\n{_t(what)}" if what else str(t))
    return out


def fig_sustain_time(s: dict) -> Raw | None:
    shown = [g for g in _sustain_shown(s) if g["periods"] and any(p["mean"] is not None for p in g["stream_acc"])]
    if not shown:
        return None
    colors = _policy_colors(s)
    periods = max(g["periods"] for g in shown)
    with _rc():
        fig = _figure(max(7.5, 0.62 * periods + 4.5), 3.8)  # the legend takes ~3.5 in on the right
        ax = fig.subplots()
        for g in shown:
            ts = [t for t, p in enumerate(g["stream_acc"]) if p["mean"] is not None]
            ys = [100 * g["stream_acc"][t]["mean"] for t in ts]
            sds = [100 * (g["stream_acc"][t]["sd"] or 0) for t in ts]
            c = colors[g["key"]]
            n_up = g["metrics"]["n_updates"]["mean"]
            ax.plot(ts, ys, "--" if g["policy"] == "never" else "-", color=c, lw=1.6, marker="o", ms=3,
                    label=f"{_t(g['key'])} ({num(n_up, '.1f')} updates)")
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
        return _png(fig, "stream accuracy per period for each update policy, with update markers")


def fig_sustain_matrix(s: dict) -> Raw | None:
    shown = [g for g in _sustain_shown(s) if g["matrix"]["R"]]
    if not shown:
        return None
    import numpy as np

    mats = [np.array(g["matrix"]["R"]) * 100 for g in shown]
    lo, hi = min(m.min() for m in mats), max(m.max() for m in mats)
    cols = min(4, len(shown))
    rows = -(-len(shown) // cols)
    with _rc():
        fig = _figure(3.1 * cols + 0.6, 2.9 * rows + 0.3)
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
            ax.set_title(_t(g["key"]), fontsize=9)
            if T <= 10:
                for (i, j), v in np.ndenumerate(m):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=5.5)
        for ax in list(axes.flat)[len(shown):]:
            ax.set_visible(False)
        fig.colorbar(im, ax=list(axes.flat), fraction=0.02, pad=0.02, label="accuracy (%)")
        return _png(fig, "accuracy matrix R[i][j] per update policy")


def fig_sustain_cost(s: dict) -> Raw | None:
    pts_ = [(g, g["metrics"]["update_examples"], g["metrics"]["stream_acc_mean"]) for g in s["policies"]]
    pts_ = [(g, x, y) for g, x, y in pts_ if x["mean"] is not None and y["mean"] is not None]
    if not pts_:
        return None
    colors = _policy_colors(s)
    with _rc():
        fig = _figure(6.4, 4.0)
        ax = fig.subplots()
        for g, x, y in pts_:
            on = g["key"] in s["pareto"]
            ax.errorbar([x["mean"]], [100 * y["mean"]], xerr=[x["sd"] or 0], yerr=[100 * (y["sd"] or 0)],
                        fmt="*" if g["key"] == s["best"] else "o", ms=9 if g["key"] == s["best"] else 6,
                        color=colors[g["key"]], ecolor=colors[g["key"]], elinewidth=0.8, capsize=2,
                        markeredgecolor="black" if on else "white", zorder=3)
        at = {}  # policies with equal cost and accuracy (common on short streams) share one label
        for g, x, y in pts_:
            at.setdefault((x["mean"], y["mean"]), []).append(_t(g["key"]))
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
        return _png(fig, "mean stream accuracy against update cost per policy, with the Pareto front")


def _sustain_table(s: dict) -> Raw:
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


def _sustain_headline(s: dict) -> Raw:
    by = {g["key"]: g for g in s["policies"]}
    best = by.get(s["best"])
    if best is None:
        return Raw(f'<div class="banner warn" id="no-completed">{esc(s["message"] or "No finished policy run.")}</div>')
    m = best["metrics"]
    text = (f"Highest mean stream accuracy: {best['key']} ({stat_text(m['stream_acc_mean'], 'pct')}%, "
            f"{num(m['n_updates']['mean'], '.1f')} updates and {num(m['update_examples']['mean'], '.0f')} update "
            f"examples per stream, {best['n_seeds']} seed{'s' if best['n_seeds'] != 1 else ''}).")
    never = next((g for g in s["policies"] if g["policy"] == "never"), None)
    if never is not None and never is not best and never["metrics"]["stream_acc_mean"]["mean"] is not None:
        gain = m["stream_acc_mean"]["mean"] - never["metrics"]["stream_acc_mean"]["mean"]
        text += (f" Never updating: {stat_text(never['metrics']['stream_acc_mean'], 'pct')}% "
                 f"({pts(gain)} points for the best policy).")
    text += f" Pareto front (accuracy against update cost): {', '.join(s['pareto']) or '-'}."
    return Raw(f'<p class="note" data-key="sustain-headline">{esc(text)}</p>')


def sustain_section(summaries: list[dict]) -> Raw:
    body = []
    for s in summaries:
        if len(summaries) > 1:
            body.append(Raw(f"<h3>{esc(s['name'])}</h3>"))
        body.append(_sustain_headline(s))
        if not s["policies"]:
            continue
        for title, fig in (("Stream accuracy over time", fig_sustain_time(s)),
                           ("Accuracy matrix R[i][j] per policy (mean over seeds)", fig_sustain_matrix(s)),
                           ("Accuracy against update cost", fig_sustain_cost(s))):
            if fig:
                body.append(Raw(f"<h3>{esc(title)}</h3>"))
                body.append(fig)
        body.append(Raw("<h3>Policies</h3>"))
        body.append(_sustain_table(s))
        defs = s["metric_definitions"]
        body.append(Raw(f'<p class="note">{esc("; ".join(f"{k}: {v}" for k, v in defs.items()))}.</p>'))
    return section("sustainability", "Sustainability", "a drifting stream of periods is replayed once per update "
                   "policy and seed. Top: the accuracy of the model in service on each period before it may update on "
                   "it (test on the near future), mean over seeds with a \u00b1 sd band; triangles mark updates. "
                   "Middle: R[i][j], the accuracy on period j of the model after period i; the diagonal is accuracy "
                   "right after a period, the lower triangle what was kept (backward transfer), the upper triangle "
                   "what carried forward. Bottom: mean stream accuracy against update work; the Pareto front holds "
                   "the policies no other beats on both. The table gives mean \u00b1 sample sd over seeds of each "
                   "child run's MLflow metrics.", Raw("".join(body)))


def sustain_failures(summaries: list[dict]) -> Raw:
    body = []
    for s in summaries:
        if len(summaries) > 1:
            body.append(Raw(f"<h3>{esc(s['name'])}</h3>"))
        if not s["failed"]:
            body.append(Raw('<p class="empty">None: every policy run finished.</p>'))
            continue
        rows = [[td(f["run_name"], "run_name"), td(f["label"], "policy"), td("-" if f["seed"] is None else f["seed"], "seed"),
                 Raw(f'<td><span class="badge {esc(f["state"])}">{esc(f["state"])}</span></td>'),
                 td(f["reason"] or "-", "reason"), td("yes" if f["retried"] else "no", "retried")] for f in s["failed"]]
        body.append(table(["run", "policy", "seed", "state", "reason", "finished on a later run"], rows, "failures",
                          [{"data-run-id": f["run_id"]} for f in s["failed"]]))
    return section("sustain-failures", "Failed policy runs", "policy runs that raised (e.g. a diverging update: "
                   "non-finite loss) or whose process died. They are not in the figures or the table; re-running the "
                   "same command replays them.", Raw("".join(body)))


def sustain_provenance(summaries: list[dict]) -> Raw:
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
        if len(summaries) > 1:
            body.append(Raw(f"<h3>{esc(s['name'])}</h3>"))
        body.append(table(["", "value"], [list(r) for r in rows], "kv"))
        if p["config"]:
            body.append(Raw(f"<details><summary>resolved config of {esc(s['name'])} (config/resolved.toml)</summary>"
                            f"<pre>{esc(p['config'])}</pre></details>"))
    return section("provenance", "Provenance", "what ran, where, with which code and packages.", Raw("".join(body)))


def sustain_page(studies: list[dict], summaries: list[dict], generated: str) -> str:
    """The page of one or more sustain studies. A fine-tuning study and a sustain study answer different questions
    and share no section: asking for both on one page is bad input (exit 2), raised before anything is written."""
    other = [s["name"] for s in summaries if s.get("kind") != "sustain"]
    if other:
        sus = [s["name"] for s in summaries if s.get("kind") == "sustain"]
        raise results.StudyNotFound(f"{', '.join(map(repr, sus))}: sustain stud{'ies' if len(sus) > 1 else 'y'} "
                                    f"(harness.sustain) cannot share a page with fine-tuning stud"
                                    f"{'ies' if len(other) > 1 else 'y'} {', '.join(map(repr, other))}; report them "
                                    f"separately")
    names = " + ".join(s["name"] for s in summaries)
    parts = [sustain_section(summaries), sustain_failures(summaries), sustain_provenance(summaries)]
    toc = "".join(f'<a href="#{esc(i)}">{esc(t)}</a>' for i, t in SUSTAIN_SECTIONS)
    sub = (f"{'Sustain studies' if len(summaries) > 1 else 'Sustain study'} {names} \u00b7 generated {generated} "
           f"\u00b7 MLflow {summaries[0]['tracking_uri']} \u00b7 numbers also in report.json next to this file")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc('Report: ' + names)}</title><style>{CSS}</style></head><body>"
            f'<nav class="toc"><b>Contents</b>{toc}</nav><main>'
            f"<h1>Model sustainability under drift: {esc(names)}</h1><p class=\"sub\">{esc(sub)}</p>"
            f'<p class="how"><b>How to read this page:</b> each update policy (never, every k periods, or triggered '
            f'by a drift monitor) was replayed on the same drifting stream, for each seed. The question is how much '
            f'accuracy each keeps and what its updates cost. Accuracies are percentages; transfer and forgetting are '
            f'points of accuracy.</p>{"".join(parts)}</main></body></html>')

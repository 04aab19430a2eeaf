"""The study page's figures (matplotlib, inline PNG) and which trials they draw, in which colour."""

from __future__ import annotations

from harness import schema
from harness.report.kit import Raw, drawn, figure, num, png, rc
from harness.stats import probit
from harness.strategies import PARAMS

COLORS = {"full_ft": "#1f77b4", "linear_probe": "#ff7f0e", "lp_ft": "#2ca02c", "best": "#d62728"}
OTHERS = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
STUDY_STYLES = ["-", "--", ":", "-."]  # line style per study when several share a figure
STUDY_MARKERS = ["o", "s", "^", "D"]
MAX_HEATMAP_ROWS = 40  # beyond that the cells are unreadable; the leaderboard lists everyone
MAX_CURVES = 3  # non-baseline configurations drawn in the severity and calibration curves
PROBIT_TICKS = (0.5, 0.9, 0.1, 0.99, 0.01, 0.8, 0.2, 0.95, 0.05, 0.98, 0.02, 0.7, 0.3, 0.6, 0.4)  # by preference


def trial_label(r: dict, best: int | None = None, long: bool = False) -> str:
    """'#5 best', '#0 full FT', '#4'; long adds how it fine-tunes ('#4 freeze 2, unfreeze@1')."""
    role = schema.BASELINES.get(r["baseline"], "")
    tag = (f"best ({role})" if role else "best") if r["number"] == best else role
    out = f"#{r['number']}" + (f" {tag}" if tag else "")
    if long and not r["baseline"] and r["short"]:
        out += f" {r['short']}"  # its strategy's words for a legend (harness.strategies)
    return out


def shown(s: dict) -> list[dict]:
    """Trials drawn in curve figures: the baselines, the selected one and the next best configurations."""
    done = sorted((r for r in s["trials"] if r.get("rank")), key=lambda r: r["rank"])
    keep = [r for r in done if r["baseline"] or r["number"] == s["best"]]
    keep += [r for r in done if r not in keep][:MAX_CURVES - 1]
    return sorted(keep, key=lambda r: r["rank"])


def _color(r: dict, s: dict, i: int) -> str:
    if r["number"] == s["best"]:
        return COLORS["best"]
    return COLORS.get(r["baseline"], OTHERS[i % len(OTHERS)])


def severity_curves(s: dict, key: str = "acc") -> dict:
    """{trial number: {family: [[severity, mean over the family's shifts]]}} of the shown trials; severity 0 is the
    clean images of the shifted sets (clean_subset_acc or clean_subset_ece: the same images as every severity; the
    whole clean test set for studies that predate them). Held-out shifts with severities only (label shift has
    none)."""
    fams = {}
    for n in s["shifts"]["test"]:
        fams.setdefault(s["shifts"]["families"].get(n, n), []).append(n)
    per = {}
    for r in shown(s):
        src = r["shift_acc"] if key == "acc" else r["shift_ece"]
        sub = r.get(schema.CLEAN_SUBSET_ACC if key == "acc" else schema.CLEAN_SUBSET_ECE)
        clean = sub if sub is not None else (r[schema.ID_ACC] if key == "acc" else r[schema.ID_ECE])
        curves = {}
        for fam, names in fams.items():
            pts_ = [[0, clean]] if clean is not None else []
            for sev in s["shifts"]["severities"]:
                vals = [src[n][str(sev)] for n in names if str(sev) in src.get(n, {})]
                if vals:
                    pts_.append([sev, sum(vals) / len(vals)])
            curves[fam] = pts_
        per[r["number"]] = curves
    return per


def fig_severity(summaries: list[dict], key: str) -> Raw | None:
    """Accuracy (key "acc") or ECE ("ece") against severity, one panel per shift family, from each summary's
    severity_curves."""
    curves = {si: s["severity_curves"][key] for si, s in enumerate(summaries)}
    fams = sorted({f for per in curves.values() for c in per.values() for f in c})
    if not fams:
        return None
    cols = min(len(fams), 4)
    rows = -(-len(fams) // cols)
    with rc():
        fig = figure(2.9 * cols + 0.4, 2.5 * rows + 0.5)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, fam in zip(axes.flat, fams):
            for si, s in enumerate(summaries):
                for i, r in enumerate(shown(s)):
                    pts_ = curves[si].get(r["number"], {}).get(fam)
                    if not pts_:
                        continue
                    xs, ys = zip(*pts_)
                    ys = [100 * y for y in ys] if key == "acc" else ys
                    label = trial_label(r, s["best"], True) + (f" [{drawn(s['name'])}]" if len(summaries) > 1 else "")
                    ax.plot(xs, ys, STUDY_STYLES[si % 4], marker=STUDY_MARKERS[si % 4], ms=3.5, lw=1.6,
                            color=_color(r, s, i), label=label)
            ax.set_title(drawn(fam))
            sevs = sorted({0, *(v for s in summaries for v in s["shifts"]["severities"])})
            ax.set_xticks(sevs)
            ax.set_xlabel("severity (0 = the same images, clean)")
            ax.set_ylabel("accuracy (%)" if key == "acc" else "ECE")
        for ax in list(axes.flat)[len(fams):]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout()
        return png(fig, f"{'accuracy' if key == 'acc' else 'ECE'} versus severity per shift family")


def heatmap(s: dict) -> dict:
    """What fig_heatmap draws: trials (rows, best first, at most MAX_HEATMAP_ROWS) x columns (ID, held-out shifts,
    then selection shifts), each cell the shift's accuracy averaged over its severities (the whole clean test set for
    ID). {"rows": [trial numbers], "cols": [names], "cells": [[accuracy or None]]}."""
    done = sorted((r for r in s["trials"] if r.get("rank")), key=lambda r: r["rank"])[:MAX_HEATMAP_ROWS]
    sh = s["shifts"]
    cols = ["ID"] + [n for n in sh["test"] + sh["sets"] + sh["selection"] if any(n in r["shift_mean"] for r in done)]
    return {"rows": [r["number"] for r in done], "cols": cols,
            "cells": [[(r[schema.ID_ACC] if n == "ID" else r["shift_mean"].get(n)) for n in cols] for r in done]}


def fig_heatmap(s: dict) -> Raw | None:
    """Trials (rows, best first) x shifts (columns: ID, held-out shifts, then selection shifts), each cell the
    shift's accuracy averaged over its severities: one readable column per shift (11 shifts x 5 severities would be
    56 columns too narrow for their numbers); per severity, see the curves and the JSON. Draws s["heatmap"]."""
    hm = s["heatmap"]
    rows = {r["number"]: r for r in s["trials"]}
    done, cols, grid = [rows[n] for n in hm["rows"]], hm["cols"], hm["cells"]
    sh = s["shifts"]
    if not done or len(cols) == 1:
        return None
    with rc():
        import numpy as np

        data = np.array([[np.nan if v is None else 100 * v for v in row] for row in grid])
        fig = figure(max(5.0, 0.55 * len(cols) + 3.0), max(1.8, 0.3 * len(done) + 1.6))
        ax = fig.subplots()
        im = ax.imshow(data, aspect="auto", cmap="RdYlGn", vmin=np.nanmin(data), vmax=np.nanmax(data))
        ax.grid(False)
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([drawn(n) + (" (sel)" if n in sh["selection"] else "") for n in cols], rotation=40,
                           ha="right", fontsize=7.5)
        ax.set_yticks(range(len(done)))
        ax.set_yticklabels([trial_label(r, s["best"], True) for r in done], fontsize=7.5)
        if data.size <= 600:
            for (i, j), v in np.ndenumerate(data):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="black")
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="accuracy (%), mean over severities")
        fig.tight_layout()
        return png(fig, "heatmap of accuracy per trial and shift")


def _probit_axis(ax, lo: float, hi: float, n, axis: str, max_ticks: int = 10) -> None:
    """Percent ticks on a probit axis, at most max_ticks of them, the round ones first: probit crowds 20-80% into a
    third of the axis, so every candidate tick would overprint in a small panel."""
    gap = (hi - lo + 0.5) / max_ticks
    ticks = []
    for t in PROBIT_TICKS:
        z = probit(t, n)
        if lo - 0.25 <= z <= hi + 0.25 and all(abs(z - probit(k, n)) >= gap for k in ticks):
            ticks.append(t)
    ticks.sort()
    setter = ax.set_xticks if axis == "x" else ax.set_yticks
    labeler = ax.set_xticklabels if axis == "x" else ax.set_yticklabels
    setter([probit(t, n) for t in ticks])
    labeler([f"{100 * t:g}" for t in ticks])


def _study_on_line(ax, summaries: list[dict], si: int, shift: str | None, own: bool) -> tuple[list, list]:
    """One study's ranked trials at (probit ID, probit OOD) and its fitted line; returns the coordinates drawn."""
    s = summaries[si]
    n = s["n_test"]
    pts_ = [(r, r[schema.ID_ACC], r[schema.OOD_ACC_MEAN] if shift is None else r["shift_mean"].get(shift))
            for r in s["trials"] if r.get("rank")]
    pts_ = [(r, x, y) for r, x, y in pts_ if x is not None and y is not None]
    if not pts_:
        return [], []
    px = [probit(x, n) for _, x, _ in pts_]
    py = [probit(y, n) for _, _, y in pts_]
    for (r, _, _), x, y in zip(pts_, px, py):
        c = _color(r, s, 5) if (r["baseline"] or r["number"] == s["best"]) else ("#555" if len(summaries) == 1 else OTHERS[si])
        ax.scatter([x], [y], s=46 if r["number"] == s["best"] else 26, color=c, zorder=3,
                   marker="*" if r["number"] == s["best"] else STUDY_MARKERS[si % 4], edgecolor="white", lw=0.5)
        if own and (len(summaries) == 1 or r["number"] == s["best"]):  # several studies: label the selected only
            label = trial_label(r, s["best"]) + (f" [{drawn(s['name'])}]" if len(summaries) > 1 else "")
            ax.annotate(label, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
    fit = s["on_the_line"]["mean"] if shift is None else s["on_the_line"]["per_shift"].get(shift)
    if fit:
        lo, hi = min(px), max(px)
        ax.plot([lo, hi], [fit["slope"] * lo + fit["intercept"], fit["slope"] * hi + fit["intercept"]],
                STUDY_STYLES[si % 4], color="#333" if len(summaries) == 1 else OTHERS[si], lw=1.2,
                label=(f"{drawn(s['name'])}: " if len(summaries) > 1 else "") +
                f"fit slope {fit['slope']:.2f}, R\u00b2 {num(fit['r2'], '.2f')}")
    return px, py


def fig_line(summaries: list[dict], shift: str | None = None, size=(5.6, 4.2), ax=None, fig=None) -> Raw | None:
    """Probit(OOD) against probit(ID) per trial, with each study's fitted line and y = x; on its own figure, or on
    the given axes (a panel of fig_line_grid)."""
    own = ax is None
    with rc():
        if own:
            fig = figure(*size)
            ax = fig.subplots()
        xs_all, ys_all = [], []
        for si in range(len(summaries)):
            px, py = _study_on_line(ax, summaries, si, shift, own)
            xs_all += px
            ys_all += py
        if not xs_all:
            return None
        lo, hi = min(xs_all + ys_all), max(xs_all + ys_all)
        pad = 0.1 * (hi - lo or 1)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ":", color="#999", lw=1, label="y = x (no drop)")
        n = summaries[0]["n_test"]
        most = 10 if own else 6  # a panel of the per-shift grid is ~3 inches wide
        _probit_axis(ax, lo - pad, hi + pad, n, "x", most)
        _probit_axis(ax, lo - pad, hi + pad, n, "y", most)
        ax.set_xlabel("ID test accuracy (%, probit scale)")
        ax.set_ylabel(("mean OOD accuracy" if shift is None else f"{drawn(shift)} accuracy") + " (%, probit scale)")
        ax.margins(0.08)
        if shift is not None:
            ax.set_title(drawn(shift))
        ax.legend(loc="upper left")
        if own:
            fig.tight_layout()
            return png(fig, "OOD versus ID accuracy on probit axes")
        return Raw("")


def fig_line_grid(summaries: list[dict]) -> Raw | None:
    names = []
    for s in summaries:
        names += [n for n in s["shifts"]["test"] + s["shifts"]["sets"] if n not in names and n in s["on_the_line"]["per_shift"]]
    if not names:
        return None
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    with rc():
        fig = figure(3.0 * cols, 2.8 * rows)
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, n in zip(axes.flat, names):
            fig_line(summaries, n, ax=ax, fig=fig)
            ax.set_xlabel("ID (%)")
            ax.set_ylabel("OOD (%)")
            if ax.get_legend():
                ax.get_legend().remove()
            fit = summaries[0]["on_the_line"]["per_shift"].get(n)
            if fit and len(summaries) == 1:
                ax.set_title(f"{drawn(n)}  R\u00b2 {num(fit['r2'], '.2f')}")
        for ax in list(axes.flat)[len(names):]:
            ax.set_visible(False)
        fig.tight_layout()
        return png(fig, "accuracy on the line per held-out shift")


def _hparam_axis(ax, param: str, epochs) -> None:
    """An axis as strategies.PARAMS says: log (lr) with a few labelled ticks; an epoch from 0 to 'never' (= epochs)."""
    p = PARAMS[param]
    if p.log:
        ax.set_xscale("log")
        # an lr range inside one decade gets only minor ticks, whose labels overprint: label a few
        from matplotlib.ticker import LogLocator, NullFormatter

        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if p.never and epochs:
        ticks = list(range(0, epochs + 1))
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) if t < epochs else "never" for t in ticks])
    ax.set_xlabel(param + (f" ({p.drawn})" if p.drawn else ""))


def fig_hparams(s: dict) -> Raw | None:
    """ID and OOD accuracy against each hyperparameter the study's strategies have (s["axes"]): a trial is drawn on
    the axes it has (a conditional one only where its condition holds)."""
    done, axes = [r for r in s["trials"] if r.get("rank")], s["axes"]
    if not done or not axes:
        return None
    epochs = s["epochs"]
    with rc():
        fig = figure(3.5 * len(axes), 5.0)
        grid = fig.subplots(2, len(axes), squeeze=False)
        for row, (key, name) in enumerate(((schema.ID_ACC, "ID accuracy (%)"),
                                           (schema.OOD_ACC_MEAN, "OOD accuracy (%)"))):
            for col, param in enumerate(axes):
                ax, p = grid[row][col], PARAMS[param]
                for i, r in enumerate(done):
                    x = r.get(param)
                    if r[key] is None or isinstance(x, bool) or not isinstance(x, (int, float)):
                        continue
                    if p.when and not r.get(p.when):
                        continue  # conditional: e.g. no frozen groups, nothing to unfreeze
                    if p.never and epochs:
                        x = min(x, epochs)
                    special = r["baseline"] or r["number"] == s["best"]
                    ax.scatter([x], [100 * r[key]], s=40 if special else 22, zorder=3,
                               color=_color(r, s, i) if special else "#555",
                               marker="*" if r["number"] == s["best"] else "o")
                _hparam_axis(ax, param, epochs)
                if col == 0:
                    ax.set_ylabel(name)
        fig.tight_layout()
        return png(fig, "ID and OOD accuracy against each hyperparameter")


def fig_pareto_history(s: dict) -> Raw | None:
    done = [r for r in s["trials"] if r.get("rank") and r[schema.OOD_ACC_MEAN] is not None]
    if not done:
        return None
    with rc():
        fig = figure(10.5, 3.4)
        a, b = fig.subplots(1, 2)
        front = sorted((r for r in done if r["number"] in s["pareto"]), key=lambda r: r[schema.ID_ACC])
        for i, r in enumerate(done):
            special = r["baseline"] or r["number"] == s["best"]
            a.scatter([100 * r[schema.ID_ACC]], [100 * r[schema.OOD_ACC_MEAN]],
                      color=_color(r, s, i) if special else "#555",
                      s=40 if special else 22, zorder=3, marker="*" if r["number"] == s["best"] else "o")
            a.annotate(trial_label(r, s["best"]), (100 * r[schema.ID_ACC], 100 * r[schema.OOD_ACC_MEAN]), xytext=(3, 3),
                       textcoords="offset points", fontsize=7)
        a.plot([100 * r[schema.ID_ACC] for r in front], [100 * r[schema.OOD_ACC_MEAN] for r in front], "-",
               color="#d62728",
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
        return png(fig, "Pareto front and optimization history")


def fig_training(s: dict) -> Raw | None:
    trials = [r for r in s["trials"] if r["curves"].get(schema.VAL_ACC)]
    if not trials:
        return None
    with rc():
        fig = figure(10.5, 3.4)
        axes = fig.subplots(1, 3)
        for i, r in enumerate(trials):
            style = {"complete": "-", "pruned": "--", "failed": ":", "running": "-."}.get(r["state"], "-")
            special = r["baseline"] or r["number"] == s["best"]
            color = "#b00" if r["state"] == "failed" else _color(r, s, i) if special else "#888"
            for ax, key in zip(axes, (schema.VAL_ACC, schema.VAL_LOSS, schema.TRAIN_LOSS)):
                c = r["curves"].get(key)
                if not c:
                    continue
                xs, ys = zip(*c)
                ys = [100 * y for y in ys] if key == schema.VAL_ACC else ys
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
        return png(fig, "per-epoch training curves")

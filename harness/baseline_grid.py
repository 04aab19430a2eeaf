"""The baselines' lr grids and their extension at an edge (issue 22: baselines never starved).

Each baseline family with an lr (full FT, LP-FT) gets its own log-spaced grid, enqueued before the search:
  - full FT: study.baseline_lrs, else GRID_POINTS points log-spaced on [10 x search.lr low, search.lr high], ends
    included (default [1e-3, 0.3]: 0.01, 0.0234, 0.0548, 0.128, 0.3; a step of x2.34);
  - LP-FT: full FT's grid times its family's lr_factor (strategies.BASELINES: 0.1), a decade lower (Kumar et al.
    2022 fine-tune LP-FT at a smaller lr than FT: a head that already fits lets a small lr keep the features); default
    0.001 ... 0.03. Where search.lr spans less than a decade, full FT's grid spans all of it and LP-FT's lies below.
After the search, a family whose best lr on validation (harness.selection's rule) lies on an edge of the lrs it
tried gets the next point beyond that edge, one grid step further (the ratio of the two points at that edge), as a
post-search unit (workers.post_search), round after round, until its best is interior or a limit stops it:
  - search.extend_baseline_grid = "within" (default): the next point must lie inside search.lr;
    "widen": it may leave search.lr (the user allows widening the space for the baselines only); "off": never;
  - search.baseline_extensions (default 2): at most that many points added per family.
status() says, per family, what was added and why it stopped; the study logs it as baseline_grid.json on the parent.
Pure Python (no Optuna, no torch): the rows it reads are plain dicts made from Optuna trials by the caller.
"""

from __future__ import annotations

import math

from harness import strategies

GRID_POINTS = 5  # >= 5 log-spaced points per family (issue 22); Kumar et al. 2022 sweep 10 (with 3 seeds)
MODES = ("within", "widen", "off")
TOL = 1e-9  # relative: two lrs this close are one grid point (Optuna stores floats exactly; this absorbs exp/log)


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=TOL)


def full_grid(cfg) -> list[float]:
    """Full FT's grid: study.baseline_lrs, else GRID_POINTS log-spaced on [10 x low, high] of search.lr (or on all of
    search.lr where it spans less than a decade); one point for a fixed search.lr."""
    if cfg.study.baseline_lrs:
        return list(dict.fromkeys(cfg.study.baseline_lrs))
    lo, hi = cfg.search.lr
    lo = lo * 10 if hi >= lo * 10 else lo
    if _same(lo, hi):
        return [hi]
    a, b = math.log(lo), math.log(hi)
    return [math.exp(a + (b - a) * i / (GRID_POINTS - 1)) for i in range(GRID_POINTS)]


def grid(cfg, family: str) -> list[float]:
    """The family's enqueued lrs ([] for a family without an lr: the linear probe)."""
    b = strategies.BASELINES[family]
    if not strategies.get(b.strategy).lr:
        return []
    return list(dict.fromkeys(lr * b.lr_factor for lr in full_grid(cfg)))


def baselines(cfg, n_groups: int) -> list[dict]:
    """The enqueued baselines, in order: full FT at each of its lrs, the converged linear probe, LP-FT at each of its
    lrs: [{"name", "params"}]."""
    out = []
    for name, b in strategies.BASELINES.items():
        lrs = grid(cfg, name) or [None]
        out += [{"name": name, "params": b.params(lr, n_groups, cfg.train.epochs)} for lr in lrs]
    return out


def _edge(cfg, family: str, rows: list[dict]) -> dict:
    """One family's state: {"grid", "added", "best", "best_lr", "edge", "next", "stopped"}; next is the lr to add now
    (None: none), stopped why none is added (interior, off, limit, bound, unfinished, one point)."""
    q, g = cfg.search, grid(cfg, family)
    mine = [r for r in rows if r["family"] == family and r.get("lr") is not None]
    added = sorted(r["lr"] for r in mine if r.get("extension"))
    out = {"grid": g, "added": added, "best": None, "best_lr": None, "edge": "", "next": None, "stopped": ""}
    if len(g) < 2:
        return {**out, "stopped": "one point" if g else "no lr"}
    if any(r["state"] in ("waiting", "running") for r in mine):
        return {**out, "stopped": "unfinished"}
    done = [r for r in mine if r["state"] == "complete" and r.get("value") is not None]
    if not done:
        return {**out, "stopped": "unfinished"}
    best = min(done, key=lambda r: (-r["value"], r["number"]))  # harness.selection's rule on one seed each
    lrs = [r["lr"] for r in mine]
    out.update(best=best["number"], best_lr=best["lr"])
    if _same(best["lr"], max(lrs)) or best["lr"] > max(lrs):
        out["edge"], nxt = "high", best["lr"] * g[-1] / g[-2]
    elif _same(best["lr"], min(lrs)) or best["lr"] < min(lrs):
        out["edge"], nxt = "low", best["lr"] * g[0] / g[1]
    else:
        return {**out, "stopped": "interior"}
    mode = q.extend_baseline_grid
    if mode == "off":
        return {**out, "stopped": "off"}
    if len(added) >= q.baseline_extensions:
        return {**out, "stopped": "limit"}
    if mode == "within" and not (q.lr[0] * (1 - TOL) <= nxt <= q.lr[1] * (1 + TOL)):
        return {**out, "stopped": "bound"}
    return {**out, "next": nxt}


def status(cfg, rows: list[dict]) -> dict:
    """{family: _edge(...)} for every family with an lr. rows: the study's baseline trials as {"number", "family",
    "lr", "state" (complete, pruned, fail, waiting, running), "value" (search-time, None unless complete),
    "extension" (high/low on the points this module added, else "")}."""
    return {f: _edge(cfg, f, rows) for f in strategies.BASELINES if grid(cfg, f)}


def extensions(cfg, rows: list[dict], n_groups: int) -> list[dict]:
    """The points to add now: [{"family", "lr", "edge", "params"}], one per family whose best lies on an edge."""
    return [{"family": f, "lr": s["next"], "edge": s["edge"],
             "params": strategies.BASELINES[f].params(s["next"], n_groups, cfg.train.epochs)}
            for f, s in status(cfg, rows).items() if s["next"] is not None]


STOPPED = {  # the report's words for why a family's grid was not extended further
    "interior": "its best lr is interior", "off": "search.extend_baseline_grid = \"off\"",
    "limit": "search.baseline_extensions points added", "bound": "the next point lies outside search.lr "
    "(search.extend_baseline_grid = \"widen\" allows it)", "unfinished": "its sweep did not finish",
    "one point": "a one-point grid has no step", "no lr": "no lr",
}

"""Drifting streams: which shift at which severity and class prior each period, and the seeded draw of its images."""

from __future__ import annotations

import torch

from harness import config, data as datamod, shifts


def _ramp(t: int, periods: int, top: int) -> int:
    """Severity 0 (clean) at the first period rising linearly to `top` at the last, rounded: 0 1 1 2 2 3 3 4 4 5."""
    return round(top * t / (periods - 1))


def _severity_ramp(s: config.Stream, num_classes: int, gen: torch.Generator) -> list[dict]:
    return [{"shift": s.shift, "severity": _ramp(t, s.periods, s.severity), "prior": None} for t in range(s.periods)]


def _rotation_ramp(s: config.Stream, num_classes: int, gen: torch.Generator) -> list[dict]:
    return [{"shift": "rotate", "severity": _ramp(t, s.periods, s.severity), "prior": None} for t in range(s.periods)]


def _prior_drift(s: config.Stream, num_classes: int, gen: torch.Generator) -> list[dict]:
    """Class priors move linearly from uniform to q ~ Dirichlet(alpha), drawn once per seed; pixels stay clean."""
    q = shifts.dirichlet_prior(num_classes, s.alpha, gen)
    uniform = torch.full_like(q, 1 / num_classes)
    out = []
    for t in range(s.periods):
        a = t / (s.periods - 1)
        out.append({"shift": "none", "severity": 0, "prior": ((1 - a) * uniform + a * q).tolist()})
    return out


def _recurring(s: config.Stream, num_classes: int, gen: torch.Generator) -> list[dict]:
    """A for `phase` periods, then B, then A again ...: what was learnt once comes back (forgetting shows)."""
    return [{"shift": s.shift if (t // s.phase) % 2 == 0 else s.shift_b, "severity": s.severity, "prior": None}
            for t in range(s.periods)]


# kind -> fn(stream config, num_classes, generator) -> one recipe per period: {"shift", "severity", "prior"}
STREAMS = {"severity": _severity_ramp, "rotation": _rotation_ramp, "prior": _prior_drift, "recurring": _recurring}


def schedule(s: config.Stream, num_classes: int, seed: int) -> list[dict]:
    """The period recipes of a stream: which shift at which severity, and which class prior (None = as sampled)."""
    recipes = STREAMS[s.kind](s, num_classes, torch.Generator().manual_seed(seed))
    return [{"period": t, **r} for t, r in enumerate(recipes)]


def stream_shift(st: config.Stream) -> str:
    """The stream's shift in words, for tags, params and the log: contrast, rotate, dirichlet(0.3), contrast/rotate."""
    return {"severity": st.shift, "rotation": "rotate", "prior": f"dirichlet({st.alpha:g})",
            "recurring": f"{st.shift}/{st.shift_b}"}[st.kind]


def seeds_of(cfg: config.Config) -> list[int]:
    """The replicate seeds: stream.seeds, or study.seed alone when it is empty."""
    return list(cfg.stream.seeds) or [cfg.study.seed]


SEARCH_SEED_OFFSET = 10_000  # the policy search selects on other streams (and head inits, batch orders) than it reports


def search_seeds(cfg: config.Config) -> list[int]:
    """The seeds a policy search selects on: each reported seed + SEARCH_SEED_OFFSET, so the reported accuracy of the
    selected policy is measured on streams the selection never saw (a winner's curse otherwise)."""
    return [s + SEARCH_SEED_OFFSET for s in seeds_of(cfg)]


def _draw(x, y, n, prior, gen):
    if prior is not None:
        idx = shifts.resample_to_prior(y, torch.tensor(prior, dtype=torch.float64), n, gen)
    elif n <= len(y):
        idx = torch.randperm(len(y), generator=gen)[:n]
    else:
        idx = torch.randint(len(y), (n,), generator=gen)
    return x[idx], y[idx], idx


# stream.pool_fraction, the share of the target train split held out as the stream pool. Half: the default's 537
# train images give the deployed model 268 and the pool 269, from which 10 periods draw 50 labelled images each
# (every pool image comes back ~1.9 times over the stream, under a different shift each time), and the tiny test
# study's 60 give 30 / 30.
def split_pool(labels: torch.Tensor, seed: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(deployed-model indices, stream-pool indices) into the train split: disjoint, together all of it, stratified by
    class and seeded by the replicate seed. The pool feeds the stream's labelled batches, so neither the accuracy
    monitor's reference nor an update ever sees an image the deployed model was fine-tuned on."""
    deploy, pool = datamod.stratified_split(labels.cpu(), [1 - fraction, fraction], torch.Generator().manual_seed(seed))
    if not len(deploy) or not len(pool):
        raise ValueError(f"the train split ({len(labels)} images) is too small to hold out a stream pool of "
                         f"{fraction:.0%}; raise data.labels_per_class")
    return deploy, pool


def make_stream(data: dict, recipes: list[dict], n_labelled: int, n_eval: int, seed: int) -> list[dict]:
    """One dict per period: x, y (labelled batch from data['train']: pass the stream pool, see split_pool) with idx,
    the pool positions of its images (a pool image comes back in several periods: the accuracy monitor must know which
    an update trained on), eval_x, eval_y (from data['test']), and the recipe. Pure and seeded: the same data, recipes
    and seed give identical tensors."""
    gen = torch.Generator().manual_seed(seed)
    periods = []
    for r in recipes:
        p = dict(r)
        for (x_key, y_key), split, n in ((("x", "y"), "train", n_labelled), (("eval_x", "eval_y"), "test", n_eval)):
            x, y, idx = _draw(*data[split], n, r["prior"], gen)
            x = datamod.pixels(x)  # float in [0, 1]: shifted, and concatenated with shifted batches (replay)
            if r["shift"] != "none" and r["severity"] > 0:
                x = shifts.SHIFTS[r["shift"]](x, r["severity"], gen)
            p[x_key], p[y_key] = x.contiguous(), y.contiguous()
            if split == "train":
                p["idx"] = idx
        periods.append(p)
    return periods

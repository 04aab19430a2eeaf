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


def _draw(y, n, prior, gen):
    if prior is not None:
        return shifts.resample_to_prior(y, torch.tensor(prior, dtype=torch.float64), n, gen)
    if n == len(y):  # the whole pool, in its order: every period (and seed) evaluates the same images, crossed
        return torch.arange(len(y))
    if n < len(y):
        return torch.randperm(len(y), generator=gen)[:n]
    return torch.randint(len(y), (n,), generator=gen)


def control(recipes: list[dict]) -> list[dict]:
    """The no-drift control of a stream (issue 24): the same periods with no shift (severity 0) and no prior drift,
    so a policy replayed on it spends the same labelled budget on the same draws of images and the same evaluation
    images, and what it gains there is extra training, not adaptation to drift."""
    return [{**r, "shift": "none", "severity": 0, "prior": None} for r in recipes]


# The test split is halved, per class and seeded by study.seed (one halving for every replicate seed), into the images
# a policy search evaluates on and the images reported streams evaluate on (issue 24: before, both drew from the whole
# test split and 125-128 of a reported period's 150 images were pixel-identical to ones the search selected on).
# Pixel-identical test images (none in digits 5-9; a folder may hold copies) go to the half of their first copy.
EVAL_HALVES = ("search", "reported")


def eval_halves(x: torch.Tensor, y: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """{"search": indices, "reported": indices} into the test split: disjoint, together all of it, stratified by
    class, and no image of one pixel-identical to an image of the other."""
    first, owner = {}, []
    for i, row in enumerate(x.reshape(len(x), -1)):
        owner.append(first.setdefault(row.numpy().tobytes(), i))
    owner = torch.tensor(owner)
    uniq = torch.unique(owner)
    halves = datamod.stratified_split(y[uniq].cpu(), [0.5, 0.5], torch.Generator().manual_seed(seed))
    if any(not len(h) for h in halves):
        raise ValueError(f"the test split ({len(y)} images) is too small to halve into search and reported "
                         f"evaluation images; raise data.test_fraction")
    out = {}
    for name, h in zip(EVAL_HALVES, halves):
        keep = torch.isin(owner, uniq[h])
        out[name] = keep.nonzero().squeeze(1)
    return out


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
    an update trained on), eval_x, eval_y (from data['test']: pass one half of eval_halves) with eval_idx, their
    positions, and the recipe. Pure and seeded: the same data, recipes and seed give identical tensors. Every period's
    images are drawn before any is shifted, so a stream and its control (same seed, no prior drift) draw the same
    images whatever the shift consumes of the generator."""
    gen = torch.Generator().manual_seed(seed)
    drawn = [(_draw(data["train"][1], n_labelled, r["prior"], gen), _draw(data["test"][1], n_eval, r["prior"], gen))
             for r in recipes]
    periods = []
    for r, (idx, eval_idx) in zip(recipes, drawn):
        p = dict(r)
        for (x_key, y_key), split, i in ((("x", "y"), "train", idx), (("eval_x", "eval_y"), "test", eval_idx)):
            x, y = data[split][0][i], data[split][1][i]
            x = datamod.pixels(x)  # float in [0, 1]: shifted, and concatenated with shifted batches (replay)
            if r["shift"] != "none" and r["severity"] > 0:
                x = shifts.SHIFTS[r["shift"]](x, r["severity"], gen)
            p[x_key], p[y_key] = x.contiguous(), y.contiguous()
        p["idx"], p["eval_idx"] = idx, eval_idx
        periods.append(p)
    return periods

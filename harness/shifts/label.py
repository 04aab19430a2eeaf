"""Label shift: class priors (Dirichlet, Lipton et al.'s tweak-one) and resampling a set to a prior."""

from __future__ import annotations

import torch


def dirichlet_prior(num_classes: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """q ~ Dir(alpha * 1) as normalised Gamma(alpha) draws, float64 (alpha = 0.1 gives draws below 1e-30).
    torch._standard_gamma is the op behind torch.distributions.Gamma, which takes no generator."""
    if num_classes < 1 or not alpha > 0:
        raise ValueError(f"need num_classes >= 1 and alpha > 0, got {num_classes}, {alpha}")
    conc = torch.full((num_classes,), float(alpha), dtype=torch.float64, device=generator.device)
    g = torch._standard_gamma(conc, generator=generator).cpu()
    if g.sum() == 0:  # every draw underflowed (alpha ~ 1e-3): the limit is all mass on one class
        g[torch.randint(num_classes, (1,), generator=generator, device=generator.device).cpu()] = 1.0
    return g / g.sum()


def tweak_one_prior(num_classes: int, cls: int, rho: float) -> torch.Tensor:
    """Lipton et al.'s tweak-one shift: class cls gets rho, the other K - 1 share 1 - rho equally (float64)."""
    if not 0 <= cls < num_classes or not 0 <= rho <= 1 or num_classes < 2:
        raise ValueError(f"need 0 <= cls < num_classes (>= 2), 0 <= rho <= 1; got {cls=}, {num_classes=}, {rho=}")
    prior = torch.full((num_classes,), (1 - rho) / (num_classes - 1), dtype=torch.float64)
    prior[cls] = rho
    return prior


def resample_to_prior(labels: torch.Tensor, prior: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n indices into `labels` (on the labels' device, shuffled) whose class counts are n * prior rounded by largest
    remainder (so they sum to n exactly); within a class, drawn uniformly with replacement."""
    prior = prior.detach().double().cpu()
    if prior.dim() != 1 or (prior < 0).any() or prior.sum() <= 0:
        raise ValueError("prior must be a 1-D tensor of non-negative weights with a positive sum")
    prior = prior / prior.sum()
    k = prior.numel()
    y = labels.detach().long().cpu()
    if y.numel() and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}) to match a prior over {k} classes")
    have = torch.bincount(y, minlength=k)
    missing = ((prior > 0) & (have == 0)).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"classes {missing} have positive prior but no examples to resample from")
    exact = prior * n
    counts = exact.floor().long()
    extra = n - int(counts.sum())
    # largest remainder first; ties go to the lower class index (stable sort), so the result is deterministic
    counts[torch.sort(exact - counts, descending=True, stable=True).indices[:extra]] += 1
    picks = []
    for cls in counts.nonzero().flatten().tolist():
        pool = (y == cls).nonzero().flatten()
        draw = torch.randint(len(pool), (int(counts[cls]),), generator=generator, device=generator.device).cpu()
        picks.append(pool[draw])
    idx = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)
    idx = idx[torch.randperm(len(idx), generator=generator, device=generator.device).cpu()]
    return idx.to(labels.device)

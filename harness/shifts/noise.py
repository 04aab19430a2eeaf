"""Noise shifts (CIFAR-10-C's noise family): gaussian, shot, impulse and speckle noise."""

from __future__ import annotations

import torch

from harness.shifts.common import _pick, _rand, _randn

GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # sigma
SHOT_NOISE = (500, 250, 100, 75, 50)  # photons per unit intensity (lambda)
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # fraction of values set to 0 or 1
SPECKLE_NOISE = (0.06, 0.10, 0.12, 0.16, 0.20)  # sigma of the multiplicative noise
# make_imagenet_c.py's (above 64 px, common.IMAGENET_ABOVE)
IMAGENET_GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)
IMAGENET_SHOT_NOISE = (60, 25, 12, 5, 3)
IMAGENET_IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)
IMAGENET_SPECKLE_NOISE = (0.15, 0.2, 0.35, 0.45, 0.6)


def gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """clip(x + N(0, sigma)), sigma = .04, .06, .08, .09, .10."""
    sigma, _ = _pick(images, severity, GAUSSIAN_NOISE, IMAGENET_GAUSSIAN_NOISE)
    return (images + sigma * _randn(images.shape, generator, images.device)).clamp(0, 1)


def shot_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """clip(Poisson(x * lam) / lam), lam = 500, 250, 100, 75, 50: fewer photons, more noise."""
    lam, _ = _pick(images, severity, SHOT_NOISE, IMAGENET_SHOT_NOISE)
    counts = torch.poisson((images * lam).to(generator.device), generator=generator).to(images.device)
    return (counts / lam).clamp(0, 1)


def impulse_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Salt and pepper on each value independently (skimage random_noise 's&p', salt_vs_pepper=0.5): a fraction
    amount = .01, .02, .03, .05, .07 of values becomes 0 or 1 with equal odds."""
    amount, _ = _pick(images, severity, IMPULSE_NOISE, IMAGENET_IMPULSE_NOISE)
    u = _rand(images.shape, generator, images.device)  # u < amount flips; its lower half of those is pepper
    return torch.where(u < amount, (u >= amount / 2).to(images.dtype), images)


def speckle_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """clip(x + x * N(0, sigma)), sigma = .06, .1, .12, .16, .2: noise proportional to intensity."""
    sigma, _ = _pick(images, severity, SPECKLE_NOISE, IMAGENET_SPECKLE_NOISE)
    return (images + images * sigma * _randn(images.shape, generator, images.device)).clamp(0, 1)

"""What every shift shares: the image contract, the severity check, draws on the generator's device."""

from __future__ import annotations

import torch

# Every covariate shift is fn(images, severity, generator) -> images: float32 (N, C, H, W) in [0, 1], C = 1 or 3,
# any device. Random numbers are drawn on the generator's device and moved to the images, so a CPU generator
# seeded once gives the same shifted set on CPU and CUDA. Constants are make_cifar_c.py's (hendrycks/robustness
# @ ca36008, science.md 3.1), one entry per severity 1..5; those in pixels are for 32x32 and scale with H/32.


def _level(images: torch.Tensor, severity: int) -> int:
    """Index into the constant tuples; rejects what no shift can handle."""
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    if images.dim() != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
        raise ValueError(f"images must be float (N, C, H, W), C in (1, 3); got {tuple(images.shape)} {images.dtype}")
    return severity - 1


def _rand(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=generator, device=generator.device).to(device)


def _randn(shape, generator: torch.Generator, device) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)

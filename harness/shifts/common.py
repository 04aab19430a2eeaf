"""What every shift shares: the image contract, the severity check, draws on the generator's device."""

from __future__ import annotations

import torch

# Every covariate shift is fn(images, severity, generator) -> images: float32 (N, C, H, W) in [0, 1], C = 1 or 3,
# any device. Random numbers are drawn on the generator's device and moved to the images, so a CPU generator
# seeded once gives the same shifted set on CPU and CUDA. Constants are make_cifar_c.py's (hendrycks/robustness
# @ ca36008, science.md 3.1), one entry per severity 1..5; those in pixels are for 32x32 and scale with H/32.
# Above IMAGENET_ABOVE px the corruptions of IMAGENET_C take make_imagenet_c.py's constants instead (hendrycks/
# robustness @ 8190fe3, ImageNet-C/create_c/make_imagenet_c.py, the IMAGENET_* tables beside the CIFAR ones), for
# 224x224 and scaling with H/224, so that "severity 3" at 224 px is ImageNet-C's severity 3 (issue 26).

IMAGENET_ABOVE = 64  # px: Tiny ImageNet's 64 px still reads as CIFAR-scale; 96, 128, 224 px as ImageNet-scale
CONSTANT_SETS = ("make_cifar_c", "make_imagenet_c")
# The corruptions whose make_imagenet_c constants are taken (their formula is make_cifar_c's with other constants).
# fog, frost, snow, spatter and elastic_transform keep make_cifar_c's scaled by H/32 at every size: their ImageNet
# versions change the formula too (fog's 256 px fractal, frost's unscaled photographs, elastic's 244 px constants)
IMAGENET_C = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "defocus_blur",
              "motion_blur", "zoom_blur", "glass_blur", "contrast", "brightness", "saturate", "pixelate",
              "jpeg_compression")


def constant_set(size: int) -> str:
    """Which reference's constants images of size x size take (CONSTANT_SETS): logged with the suite."""
    return CONSTANT_SETS[size > IMAGENET_ABOVE]


def _pick(images: torch.Tensor, severity: int, cifar: tuple, imagenet: tuple):
    """(the severity's constants, the scale of constants in pixels): make_cifar_c's and H/32, or above IMAGENET_ABOVE
    px make_imagenet_c's and H/224."""
    level, h = _level(images, severity), images.shape[2]
    return (imagenet[level], h / 224) if h > IMAGENET_ABOVE else (cifar[level], h / 32)


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

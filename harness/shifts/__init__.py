"""The shift registry: SHIFTS (one pure seeded function per corruption, a module per family), FAMILY, BENCHMARK."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.shifts.common import CONSTANT_SETS, IMAGENET_ABOVE, IMAGENET_C, constant_set
from harness.shifts.blur import defocus_blur, gaussian_blur, glass_blur, motion_blur, zoom_blur
from harness.shifts.digital import contrast, elastic_transform, jpeg_compression, pixelate, saturate
from harness.shifts.geometric import rotate, translate
from harness.shifts.label import dirichlet_prior, resample_to_prior, tweak_one_prior
from harness.shifts.noise import gaussian_noise, impulse_noise, shot_noise, speckle_noise
from harness.shifts.weather import brightness, fog, frost, snow, spatter

SHIFTS = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "glass_blur": glass_blur,
    "contrast": contrast,
    "brightness": brightness,
    "saturate": saturate,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "elastic_transform": elastic_transform,
    "fog": fog,
    "snow": snow,
    "frost": frost,
    "spatter": spatter,
    "rotate": rotate,
    "translate": translate,
}

# CIFAR-10-C's families (fog, brightness, snow, frost and spatter are weather; elastic, pixelate, jpeg, contrast and
# saturate digital)
FAMILY = {
    "gaussian_noise": "noise", "shot_noise": "noise", "impulse_noise": "noise", "speckle_noise": "noise",
    "gaussian_blur": "blur", "defocus_blur": "blur", "motion_blur": "blur", "zoom_blur": "blur", "glass_blur": "blur",
    "fog": "weather", "brightness": "weather", "snow": "weather", "frost": "weather", "spatter": "weather",
    "contrast": "digital", "saturate": "digital", "pixelate": "digital", "jpeg_compression": "digital",
    "elastic_transform": "digital",
    "rotate": "geometric", "translate": "geometric",
}


# CIFAR-10-C's 15 benchmark corruptions, in its order (mCE averages over these); speckle_noise, gaussian_blur,
# spatter and saturate are its 4 extra ("validation") corruptions
BENCHMARK = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
             "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")


def apply(name: str, images: torch.Tensor, severity: int, seed: int) -> torch.Tensor:
    """SHIFTS[name] with a fresh CPU generator seeded by `seed`: the same seed gives the same set on any device."""
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; allowed: {', '.join(SHIFTS)}")
    return SHIFTS[name](images, severity, torch.Generator().manual_seed(seed))


def source() -> str:
    """The shift code as text, for cache keys: every module of this package, in name order, so that editing any
    corruption (or a helper one shares) invalidates every set built with it."""
    return "".join(p.read_text(encoding="utf-8") for p in sorted(Path(__file__).parent.glob("*.py")))

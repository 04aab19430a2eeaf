"""Geometric shifts: rotation and translation, corners and bands filled with 0."""

from __future__ import annotations

import math

import torch

from harness import imageops as ops
from harness.shifts.common import _level, _rand

ROTATE = (10, 20, 30, 40, 50)  # degrees, sign random per image
TRANSLATE = (2, 4, 6, 8, 10)  # pixels for 32x32, direction random per image


def rotate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Rotation about the centre by 10, 20, 30, 40, 50 degrees, sign random per image, bilinear. Corners fill with 0,
    as torchvision's rotate (fill=0) and Ovadia et al.'s rotated MNIST do: the digits' background is 0 anyway."""
    degrees = ROTATE[_level(images, severity)]
    n, _, h, w = images.shape
    sign = torch.where(_rand((n,), generator, images.device) < 0.5, -1.0, 1.0).double()
    theta = torch.deg2rad(sign * degrees)[:, None, None]
    xs, ys = ops.pixel_grid(images)
    x0, y0 = xs - (w - 1) / 2, ys - (h - 1) / 2
    src_x = torch.cos(theta) * x0 + torch.sin(theta) * y0 + (w - 1) / 2
    src_y = -torch.sin(theta) * x0 + torch.cos(theta) * y0 + (h - 1) / 2
    return ops.remap(images, src_x, src_y, "zeros", align_corners=False).clamp(0, 1)


def translate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Shift by 2, 4, 6, 8, 10 px (x H/32) towards a direction U(0, 2 pi) per image, rounded to whole pixels so no
    interpolation blur mixes in (the length is d to within 0.71 px); the uncovered band fills with 0, as rotate."""
    d = TRANSLATE[_level(images, severity)] * images.shape[2] / 32
    phi = _rand((images.shape[0],), generator, images.device).double() * 2 * math.pi
    dy, dx = torch.round(d * torch.sin(phi)).long(), torch.round(d * torch.cos(phi)).long()
    return ops.shift(images, dy, dx, fill=0.0)

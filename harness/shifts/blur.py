"""Blur shifts (CIFAR-10-C's blur family): gaussian, defocus, motion, zoom and glass blur."""

from __future__ import annotations

import math

import numpy as np

import torch

from harness import imageops as ops
from harness.shifts.common import _pick, _rand

GAUSSIAN_BLUR = (0.4, 0.6, 0.7, 0.8, 1.0)  # sigma, pixels
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))  # (disk radius, alias_blur), pixels
MOTION_BLUR = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))  # (radius, sigma), pixels
# end points of the zoom factors np.arange(1, end, 0.01): 7, 12, 16, 21, 26 factors (the float steps keep the end
# point 1.06 and 1.11 but not 1.16, 1.21, 1.26). The factors are numpy's own floats: arange steps by
# (1 + .01) - 1 = 0.010000000000000009, so the last factor at severity 5 is 1.2500000000000002, whose zoomed crop
# round(26 * z) is 33 px where 1.25 would give 32 (Python rounds 32.5 to even)
ZOOM_BLUR = (1.06, 1.11, 1.16, 1.21, 1.26)
GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))  # (sigma px, max_delta px, iterations)
# make_imagenet_c.py's, in pixels of 224x224 (above 64 px, common.IMAGENET_ABOVE); zoom: (end, step) of np.arange(1, end,
# step), 11, 16, 11, 13, 11 factors (numpy's floats, as ZOOM_BLUR's)
IMAGENET_GAUSSIAN_BLUR = (1, 2, 3, 4, 6)
IMAGENET_DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))
IMAGENET_MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))
IMAGENET_ZOOM_BLUR = ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03))
IMAGENET_GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))


def gaussian_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """skimage gaussian, sigma = .4, .6, .7, .8, 1 px: truncate 4 and 'nearest' borders as skimage does
    (torchvision's gaussian_blur pads by reflection, hence not used)."""
    sigma, scale = _pick(images, severity, GAUSSIAN_BLUR, IMAGENET_GAUSSIAN_BLUR)
    sigma *= scale
    return ops.gaussian(images, sigma, truncate=4.0, mode="edge").clamp(0, 1)


def _disk(radius: float, alias_blur: float) -> torch.Tensor:
    """make_cifar_c.disk: a normalised aliased disk on a 17x17 grid, smoothed by cv2.GaussianBlur(3x3, alias_blur),
    cropped to its non-zero support (radius 1.5 -> 5x5) so the convolution stays small."""
    half = 8 if radius <= 8 else math.ceil(radius)
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).double()
    disk = disk / disk.sum()
    size = 3 if radius <= 8 else 5
    g = torch.exp(-0.5 * (torch.arange(size, dtype=torch.float64) - size // 2) ** 2 / alias_blur**2)
    g = g / g.sum()
    disk = ops.separable(disk[None, None], ops.band(2 * half + 1, g, "reflect"), ops.band(2 * half + 1, g, "reflect"))[0, 0]
    rows, cols = disk.abs().sum(1).nonzero(), disk.abs().sum(0).nonzero()
    r = max(half - int(rows.min()), int(rows.max()) - half)
    c = max(half - int(cols.min()), int(cols.max()) - half)
    return disk[half - r:half + r + 1, half - c:half + c + 1]


def defocus_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Disk kernel of radius .3, .4, .5, 1, 1.5 px antialiased by a gaussian of alias_blur .4, .5, .6, .2, .1, applied
    with cv2.filter2D's reflect-101 borders. Radii below 1 give a single-pixel disk, so severities 1-3 are pure
    alias blur."""
    (radius, alias), scale = _pick(images, severity, DEFOCUS_BLUR, IMAGENET_DEFOCUS_BLUR)
    return ops.filter2d(images, _disk(radius * scale, alias * scale), "reflect").clamp(0, 1)


def _motion_line(images: torch.Tensor, radius: float, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """ImageMagick MotionBlurImage as imagecorruptions._motion_blur reimplements it: a one-sided line of
    2*ceil(radius)+1 taps with weights exp(-i^2 / 2 sigma^2), i = 0.., towards angle (radians, one per image), the
    offsets rounded to whole pixels, edge pixels repeated."""
    taps = torch.arange(2 * math.ceil(radius) + 1, dtype=torch.float64)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).tolist()
    out = torch.zeros_like(images)
    for i, wgt in enumerate(weights):
        dy = torch.ceil(i * torch.sin(angle) - 0.5).long()
        dx = torch.ceil(i * torch.cos(angle) - 0.5).long()
        out += wgt * ops.shift(images, dy, dx, fill=None)
    return out


def motion_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """ImageMagick MotionBlurImage as imagecorruptions reimplements it (_motion_line) at angle U(-45, 45) per image.
    (radius, sigma) = (6,1), (6,1.5), (6,2), (8,2), (9,2.5): the weights are ~0 past 3 sigma = 6 taps, so the
    radius hardly matters and severities 3 and 4 are the same blur up to 1e-9."""
    (radius, sigma), scale = _pick(images, severity, MOTION_BLUR, IMAGENET_MOTION_BLUR)
    angle = torch.deg2rad(_rand((images.shape[0],), generator, images.device).double() * 90 - 45)
    return _motion_line(images, radius * scale, sigma * scale, angle).clamp(0, 1)


def _zoom_matrix(n: int, z: float) -> torch.Tensor:
    """make_cifar_c.clipped_zoom along one axis as an (n, n) matrix: crop the central ceil(n/z), scipy zoom
    (order 1, corners aligned) to round(ceil(n/z) * z), keep the central n."""
    ch = math.ceil(n / z)
    top = (n - ch) // 2
    size = int(round(ch * z))
    trim = (size - n) // 2
    src = top + (torch.arange(n, dtype=torch.float64) + trim) * (ch - 1) / max(size - 1, 1)
    lo = src.floor().long().clamp(max=n - 1)
    frac = src - lo
    m = torch.zeros(n, n, dtype=torch.float64)
    m[torch.arange(n), lo] += 1 - frac
    m[torch.arange(n), (lo + 1).clamp(max=n - 1)] += frac
    return m


def zoom_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Mean of x and its centre zooms by np.arange(1, 1.06|1.11|1.16|1.21|1.26, 0.01) (7, 12, 16, 21, 26 factors, the
    factors numpy's floats: at severity 5 the last is 1.2500000000000002 and its crop 33 px, as in CIFAR-10-C). Each
    zoom is separable, so it is two small matmuls."""
    (end, step), _ = _pick(images, severity, tuple((e, 0.01) for e in ZOOM_BLUR), IMAGENET_ZOOM_BLUR)
    factors = np.arange(1, end, step).tolist()
    _, _, h, w = images.shape
    out = images.clone()
    for z in factors:
        out += ops.separable(images, _zoom_matrix(h, z), _zoom_matrix(w, z))
    return (out / (len(factors) + 1)).clamp(0, 1)


def glass_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """make_cifar_c's: gaussian blur (sigma .05, .25, .4, .25, .4 px, skimage 'nearest' borders), quantized to uint8
    by truncation as np.uint8 does, then 1, 1, 1, 2, 2 passes of a local pixel shuffle, then the same blur again.
    A pass visits rows h = H-d .. d+1 and, within each, columns w = W-d .. d+1 (descending, d = max_delta = 1 px)
    and draws (dx, dy) in [-d, d) (np.random.randint's open upper end, so only up and left); the reference's
    `x[h, w], x[h', w'] = x[h', w'], x[h, w]` on numpy views copies pixel (h+dy, w+dx) into (h, w) and leaves the
    source as it is, so this copies too (for colour and grey images alike). Draws: one
    randint(-d, d, (N, passes, rows, cols, 2)) tensor, (dx, dy) last. The visits are sequential (a pixel moved
    early can move again), so they run as a loop over positions, batched over images: ~1800 steps at 32x32."""
    (sigma, delta, iters), scale = _pick(images, severity, GLASS_BLUR, IMAGENET_GLASS_BLUR)
    n, c, h, w = images.shape
    sigma, d = sigma * scale, max(1, round(delta * scale))
    x = torch.floor(ops.gaussian(images.double(), sigma, truncate=4.0, mode="edge") * 255) / 255
    rows, cols = list(range(h - d, d, -1)), list(range(w - d, d, -1))
    draws = torch.randint(-d, d, (n, iters, len(rows), len(cols), 2), generator=generator,
                          device=generator.device).cpu().numpy()
    src = np.tile(np.arange(h * w), (n, 1))  # src[i, p]: which pixel of the blurred image sits at p
    every = np.arange(n)
    for it in range(iters):
        for a, r in enumerate(rows):
            for b, col in enumerate(cols):
                dx, dy = draws[:, it, a, b, 0], draws[:, it, a, b, 1]
                src[:, r * w + col] = src[every, (r + dy) * w + col + dx]
    index = torch.from_numpy(src).to(images.device)[:, None].expand(n, c, h * w)
    x = x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)
    return ops.gaussian(x, sigma, truncate=4.0, mode="edge").clamp(0, 1).to(images.dtype)

"""Pure, seeded image-shift functions (CIFAR-10-C family, geometric) and label-shift resampling."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

import torch
import torch.nn.functional as F

from harness import imageops as ops

# Every covariate shift is fn(images, severity, generator) -> images: float32 (N, C, H, W) in [0, 1], C = 1 or 3,
# any device. Random numbers are drawn on the generator's device and moved to the images, so a CPU generator
# seeded once gives the same shifted set on CPU and CUDA. Constants are make_cifar_c.py's (hendrycks/robustness
# @ ca36008, science.md 3.1), one entry per severity 1..5; those in pixels are for 32x32 and scale with H/32.

GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # sigma
SHOT_NOISE = (500, 250, 100, 75, 50)  # photons per unit intensity (lambda)
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # fraction of values set to 0 or 1
SPECKLE_NOISE = (0.06, 0.10, 0.12, 0.16, 0.20)  # sigma of the multiplicative noise
GAUSSIAN_BLUR = (0.4, 0.6, 0.7, 0.8, 1.0)  # sigma, pixels
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))  # (disk radius, alias_blur), pixels
MOTION_BLUR = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))  # (radius, sigma), pixels
# end points of the zoom factors np.arange(1, end, 0.01): 7, 12, 16, 21, 26 factors (the float steps keep the end
# point 1.06 and 1.11 but not 1.16, 1.21, 1.26). The factors are numpy's own floats: arange steps by
# (1 + .01) - 1 = 0.010000000000000009, so the last factor at severity 5 is 1.2500000000000002, whose zoomed crop
# round(26 * z) is 33 px where 1.25 would give 32 (Python rounds 32.5 to even)
ZOOM_BLUR = (1.06, 1.11, 1.16, 1.21, 1.26)
GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))  # (sigma px, max_delta px, iterations)
# (loc, scale, zoom, threshold, blur radius px, blur sigma px, blend) of the snow layer
SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # (image weight, frost weight)
FROST_SCALE = 0.2  # make_cifar_c resizes the frost photographs by 0.2 (cv2 INTER_LINEAR) before cropping 32x32
# (loc, scale, sigma px, threshold, intensity, mud): severities 1-3 water, 4-5 mud
SPATTER = ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
           (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1))
GREY = (0.299, 0.587, 0.114)  # cv2 COLOR_RGB2GRAY weights (snow's grey image)
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor on the deviation from the channel mean
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to HSV value
SATURATE = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))  # (mult, add) on HSV saturation
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # side of the low-resolution copy, fraction of H
JPEG_QUALITY = (80, 65, 58, 50, 40)
# (alpha, sigma, affine) as fractions of the image side (make_cifar_c's IMSIZE = 32 times these)
ELASTIC = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))  # (strength, wibbledecay)
ROTATE = (10, 20, 30, 40, 50)  # degrees, sign random per image
TRANSLATE = (2, 4, 6, 8, 10)  # pixels for 32x32, direction random per image


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


# ---------------------------------------------------------------------------------------------------------- noise


def gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """clip(x + N(0, sigma)), sigma = .04, .06, .08, .09, .10."""
    sigma = GAUSSIAN_NOISE[_level(images, severity)]
    return (images + sigma * _randn(images.shape, generator, images.device)).clamp(0, 1)


def shot_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """clip(Poisson(x * lam) / lam), lam = 500, 250, 100, 75, 50: fewer photons, more noise."""
    lam = SHOT_NOISE[_level(images, severity)]
    counts = torch.poisson((images * lam).to(generator.device), generator=generator).to(images.device)
    return (counts / lam).clamp(0, 1)


def impulse_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Salt and pepper on each value independently (skimage random_noise 's&p', salt_vs_pepper=0.5): a fraction
    amount = .01, .02, .03, .05, .07 of values becomes 0 or 1 with equal odds."""
    amount = IMPULSE_NOISE[_level(images, severity)]
    u = _rand(images.shape, generator, images.device)  # u < amount flips; its lower half of those is pepper
    return torch.where(u < amount, (u >= amount / 2).to(images.dtype), images)


def speckle_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """clip(x + x * N(0, sigma)), sigma = .06, .1, .12, .16, .2: noise proportional to intensity."""
    sigma = SPECKLE_NOISE[_level(images, severity)]
    return (images + images * sigma * _randn(images.shape, generator, images.device)).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------- blur


def gaussian_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """skimage gaussian, sigma = .4, .6, .7, .8, 1 px: truncate 4 and 'nearest' borders as skimage does
    (torchvision's gaussian_blur pads by reflection, hence not used)."""
    sigma = GAUSSIAN_BLUR[_level(images, severity)] * images.shape[2] / 32
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
    radius, alias = DEFOCUS_BLUR[_level(images, severity)]
    scale = images.shape[2] / 32
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
    radius, sigma = MOTION_BLUR[_level(images, severity)]
    scale = images.shape[2] / 32
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
    factors = np.arange(1, ZOOM_BLUR[_level(images, severity)], 0.01).tolist()
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
    sigma, delta, iters = GLASS_BLUR[_level(images, severity)]
    n, c, h, w = images.shape
    scale = h / 32
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


# -------------------------------------------------------------------------------------------- weather and digital


# brightness and saturate are defined on HSV (skimage rgb2hsv/hsv2rgb). hsv2rgb makes every channel
# v * (1 - s * g_c(h)) with g_c in [0, 1] a function of hue alone, so with h kept the round trip has a closed form:
# a new v scales the pixel, a new s moves each channel's distance below v by s_new / s. Exact, no hue needed.


def brightness(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """HSV value += .05, .1, .15, .2, .3 (clipped), hue and saturation kept: each pixel scales by v_new / v, and a
    black pixel (s = 0) becomes grey v_new. For grey images v is the grey level."""
    delta = BRIGHTNESS[_level(images, severity)]
    v = images.amax(1, keepdim=True)
    v_new = (v + delta).clamp(0, 1)
    return torch.where(v > 0, images * (v_new / torch.where(v > 0, v, 1)), v_new).clamp(0, 1)


def saturate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """HSV saturation * mult + add (clipped), (mult, add) = (.3,0), (.1,0), (1.5,0), (2,.1), (2.5,.2): severities 1-2
    desaturate, 3-5 oversaturate. A grey pixel has hue 0 in skimage, so add > 0 tints it red, as in CIFAR-10-C;
    grey images (C = 1) cannot hold a hue and are returned unchanged."""
    mult, add = SATURATE[_level(images, severity)]
    if images.shape[1] == 1:
        return images.clone()
    v = images.amax(1, keepdim=True)
    s = (v - images.amin(1, keepdim=True)) / torch.where(v > 0, v, 1)  # 0 where all channels are equal
    s_new = (s * mult + add).clamp(0, 1)
    coloured = v - (v - images) * (s_new / torch.where(s > 0, s, 1))
    red = v * (1 - s_new * torch.tensor([0.0, 1.0, 1.0], device=images.device).view(1, 3, 1, 1))  # hue 0: (v, p, p)
    return torch.where(s > 0, coloured, red).clamp(0, 1)


def contrast(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """(x - mean) * c + mean with the per-image, per-channel mean, c = .75, .5, .4, .3, .15 (torchvision's
    adjust_contrast blends towards the grey mean instead, hence not used)."""
    c = CONTRAST[_level(images, severity)]
    mean = images.mean(dim=(2, 3), keepdim=True)
    return ((images - mean) * c + mean).clamp(0, 1)


def _plasma(n: int, mapsize: int, wibbledecay: float, generator: torch.Generator) -> torch.Tensor:
    """make_cifar_c.plasma_fractal for n maps at once: diamond-square on a (mapsize, mapsize) torus, each new point
    the mean of its 4 neighbours + wibble * U(-wibble, wibble) (sic, wibble squared: 100 at the coarsest step,
    divided by wibbledecay per step), then rescaled to [0, 1] per map."""
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float64, device=generator.device)
    wibble = 100.0
    step = mapsize

    def wibbled(total: torch.Tensor) -> torch.Tensor:
        u = torch.rand(total.shape, generator=generator, device=generator.device, dtype=torch.float64)
        return total / 4 + wibble * (2 * u - 1) * wibble

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        square = corners + corners.roll(-1, dims=1)
        m[:, half::step, half::step] = wibbled(square + square.roll(-1, dims=2))
        centres, corners = m[:, half::step, half::step], m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled(centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2))
        m[:, half::step, 0::step] = wibbled(centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1))
        step = half
        wibble /= wibbledecay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


def fog(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """x + strength * plasma (one fractal per image, shared by its channels), rescaled by max / (max + strength)
    with max the clean image's maximum; (strength, wibbledecay) = (.2,3), (.5,3), (.75,2.5), (1,2), (1.5,1.75)."""
    strength, decay = FOG[_level(images, severity)]
    n, _, h, w = images.shape
    mapsize = max(2, 1 << (max(h, w) - 1).bit_length())  # smallest power of 2 >= the image: 32 for CIFAR
    plasma = _plasma(n, mapsize, decay, generator)[:, None, :h, :w].to(images)
    top = images.amax(dim=(1, 2, 3), keepdim=True)
    return ((images + strength * plasma) * top / (top + strength)).clamp(0, 1)


def snow(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """make_cifar_c's: a layer N(loc, scale) per image, clipped-zoomed by 1, 1, 1.75, 2.25, 1.25, zeroed below the
    threshold, clipped and stored as uint8 (truncation, make_cifar_c's PNG), motion-blurred at U(-135, -45) degrees
    and rounded to uint8; the image is blended towards max(x, 1.5 grey + .5) and the layer and its 180-degree
    rotation are added. Departure: CIFAR-10-C blurred the layer with ImageMagick (Wand); this uses the numpy
    reimplementation imagecorruptions ships (_motion_line, as motion_blur), so only the blur differs from the files.
    Draws: randn (N, H, W), then rand (N,) for the angle."""
    loc, scale, zoom, threshold, radius, sigma, blend = SNOW[_level(images, severity)]
    n, c, h, w = images.shape
    px = h / 32
    layer = _randn((n, 1, h, w), generator, images.device).double() * scale + loc
    layer = ops.separable(layer, _zoom_matrix(h, zoom), _zoom_matrix(w, zoom))
    layer = torch.floor(torch.where(layer < threshold, 0.0, layer).clamp(0, 1) * 255) / 255
    angle = torch.deg2rad(_rand((n,), generator, images.device).double() * 90 - 135)
    layer = torch.round(_motion_line(layer, radius * px, sigma * px, angle) * 255) / 255
    x = images.double()
    grey = x if c == 1 else sum(wt * x[:, i:i + 1] for i, wt in enumerate(GREY))
    x = blend * x + (1 - blend) * torch.maximum(x, grey * 1.5 + 0.5)
    return (x + layer + layer.flip(2, 3)).clamp(0, 1).to(images.dtype)


def _frost_photographs() -> list[torch.Tensor]:
    """frost1.png .. frost5.jpg, uint8 (3, h, w) RGB: the ImageNet-C frost photographs as the imagecorruptions
    package ships them (Apache-2.0). Read through its distribution metadata, because importing the package needs
    setuptools' pkg_resources. make_cifar_c draws among the first five only (np.random.randint(5)); so does frost."""
    from importlib import metadata

    dist = metadata.distribution("imagecorruptions")
    out = []
    for name in ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"):
        with Image.open(dist.locate_file(f"imagecorruptions/frost/{name}")) as img:
            out.append(torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1))
    return out


_FROST_CACHE: dict = {}


def _frost_textures(size: int) -> list[torch.Tensor]:
    """The photographs resized by 0.2 x size/32 (bilinear, half-pixel centres, no antialiasing: cv2.resize's
    INTER_LINEAR, which at 0.2 samples pixel 5i + 2 exactly), float64 in [0, 1]; cached per image size."""
    if size not in _FROST_CACHE:
        f = FROST_SCALE * size / 32
        _FROST_CACHE[size] = [F.interpolate(p[None].double() / 255, scale_factor=f, mode="bilinear",
                                            align_corners=False, recompute_scale_factor=False)[0]
                              for p in _frost_photographs()]
    return _FROST_CACHE[size]


def frost(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """make_cifar_c's: clip(a x + b frost) with (a, b) = (1,.2), (1,.3), (.9,.4), (.85,.4), (.75,.45), frost an HxW
    crop of one of five frost photographs (shipped by imagecorruptions) shrunk by 0.2 x H/32; grey images take the
    texture's grey (rgb2gray .2989, .587, .114, as imagecorruptions). Draws: randint(5, (N,)) for the photograph,
    then rand (N, 2) for the crop's top-left corner, floor(u * (size - H)) and floor(u * (size - W)) as
    np.random.randint(0, size - H) draws it."""
    a, b = FROST[_level(images, severity)]
    n, c, h, w = images.shape
    textures = _frost_textures(h)
    if any(t.shape[1] <= h or t.shape[2] <= w for t in textures):
        raise ValueError(f"frost: images of {h}x{w} are larger than the frost photographs allow")
    pick = torch.randint(len(textures), (n,), generator=generator, device=generator.device).cpu()
    corner = torch.rand((n, 2), generator=generator, device=generator.device, dtype=torch.float64).cpu()
    crops = []
    for i in range(n):
        t = textures[int(pick[i])]
        top = int(corner[i, 0] * (t.shape[1] - h))
        left = int(corner[i, 1] * (t.shape[2] - w))
        crops.append(t[:, top:top + h, left:left + w])
    texture = torch.stack(crops).to(images.device)
    if c == 1:
        texture = sum(wt * texture[:, i:i + 1] for i, wt in enumerate((0.2989, 0.5870, 0.1140)))
    return (a * images.double() + b * texture).clamp(0, 1).to(images.dtype)


def _water_edges(liquid: np.ndarray) -> np.ndarray:
    """make_cifar_c's spatter 'dist' map of one uint8 (H, W) liquid layer, through the same OpenCV calls (Canny,
    L2 distance transform with a 5x5 mask, truncation at 20, 3x3 box blurs, histogram equalization, an 8-bit
    emboss filter): edge detection and distance transforms have no batched torch form, so this runs per image on
    the CPU (~20 us each at 32x32), as jpeg_compression runs PIL."""
    import cv2  # opencv-python, a dependency of imagecorruptions; imported here so other shifts never load it

    dist = 255 - cv2.Canny(liquid, 50, 150)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
    dist = cv2.equalizeHist(dist)
    dist = cv2.filter2D(dist, cv2.CV_8U, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
    return cv2.blur(dist, (3, 3)).astype(np.float32)


def spatter(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """make_cifar_c's: a liquid layer N(loc, scale) per image, gaussian-blurred (sigma .7, .8, 1, .7, .5 px,
    skimage 'nearest') and zeroed below the threshold. Severities 1-3 are water: the layer as uint8 times its
    embossed edge-distance map (_water_edges), normalized to max 1, times .5, adds pale turquoise (175, 238, 238)
    / 255. Severities 4-5 are mud: where the layer passes the threshold, blurred by sigma .6 px and kept >= .8, the
    image is replaced by mud brown (63, 42, 20) / 255. Grey images get the colours' grey (rgb2gray, as
    imagecorruptions). A water layer with no edge at all (max 0, a NaN in the reference) adds nothing.
    Draws: randn (N, H, W)."""
    loc, scale, sigma, threshold, intensity, mud = SPATTER[_level(images, severity)]
    n, c, h, w = images.shape
    px = h / 32
    x = images.double()
    liquid = ops.gaussian(_randn((n, 1, h, w), generator, images.device).double() * scale + loc, sigma * px,
                          truncate=4.0, mode="edge")
    liquid = torch.where(liquid < threshold, 0.0, liquid)
    grey = torch.tensor((0.2989, 0.5870, 0.1140), dtype=torch.float64, device=images.device).view(1, 3, 1, 1)
    if not mud:
        # (liquid * 255).astype(np.uint8): truncation, and values past 255 wrap around as numpy's cast does on x86
        u8 = (torch.floor(liquid * 255).long() % 256).to(torch.uint8)[:, 0].cpu().numpy()
        dist = torch.from_numpy(np.stack([_water_edges(img) for img in u8])).to(images.device)[:, None]
        m = torch.from_numpy(u8).to(images.device)[:, None].float() * dist
        top = m.amax(dim=(1, 2, 3), keepdim=True)
        m = torch.where(top > 0, m / torch.where(top > 0, top, 1), 0.0).double() * intensity
        color = torch.tensor((175, 238, 238), dtype=torch.float64, device=images.device).view(1, 3, 1, 1) / 255
        if c == 1:
            return (x + ((m * color).clamp(0, 1) * grey).sum(1, keepdim=True)).clamp(0, 1).to(images.dtype)
        return (x + m * color).clamp(0, 1).to(images.dtype)
    m = ops.gaussian((liquid > threshold).double(), intensity * px, truncate=4.0, mode="edge")
    m = torch.where(m < 0.8, 0.0, m)
    color = torch.tensor((63, 42, 20), dtype=torch.float64, device=images.device).view(1, 3, 1, 1) / 255 * m
    if c == 1:
        color = (color * grey).sum(1, keepdim=True)
    return (x * (1 - m) + color).clamp(0, 1).to(images.dtype)


def _box_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Pillow's Image.resize(BOX) along one axis as an (n_out, n_in) matrix (Resample.c precompute_coeffs): output
    pixel o averages the input pixels whose centres fall in its footprint ((o + .5) * scale +- scale / 2), which for
    a non-integer ratio is not the area average F.interpolate(mode='area') computes; upsampling is nearest."""
    scale = n_in / n_out
    support = 0.5 * max(scale, 1.0)
    centre = (torch.arange(n_out, dtype=torch.float64)[:, None] + 0.5) * scale
    x = torch.arange(n_in, dtype=torch.float64)[None, :]
    lo, hi = (centre - support + 0.5).floor(), (centre + support + 0.5).floor()
    t = (x - centre + 0.5) / max(scale, 1.0)
    m = ((t > -0.5) & (t <= 0.5) & (x >= lo) & (x < hi)).double()
    return m / m.sum(dim=1, keepdim=True)


def pixelate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """PIL BOX resize down to int(H * c), c = .95, .9, .85, .75, .65 (30, 28, 27, 24, 20 px at 32), and BOX back up.
    Both resizes are linear and separable, so one (H, H) and one (W, W) matrix do it."""
    c = PIXELATE[_level(images, severity)]
    _, _, h, w = images.shape
    mh = _box_matrix(int(h * c), h) @ _box_matrix(h, int(h * c))
    mw = _box_matrix(int(w * c), w) @ _box_matrix(w, int(w * c))
    return ops.separable(images, mh, mw).clamp(0, 1)


def jpeg_compression(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """A real JPEG round trip at quality 80, 65, 58, 50, 40 through PIL, exactly as make_cifar_c.py does, of the
    uint8 image; per image on the CPU, the codec has no batched form. (torchvision.io's codec gives identical bytes
    but is deprecated in torchvision 0.29.)"""
    quality = JPEG_QUALITY[_level(images, severity)]
    u8 = (images.detach() * 255).round().clamp(0, 255).to(device="cpu", dtype=torch.uint8)
    u8 = u8.permute(0, 2, 3, 1).contiguous().numpy()
    out = []
    for img in u8:
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, "JPEG", quality=quality)
        arr = torch.from_numpy(np.asarray(Image.open(buf)).copy())
        out.append(arr.unsqueeze(-1) if arr.dim() == 2 else arr)
    decoded = torch.stack(out).permute(0, 3, 1, 2)
    return (decoded.to(images.device, torch.float32) / 255).to(images.dtype)


def elastic_transform(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """make_cifar_c's: a random affine (three control points at the centre +- H//3 moved by U(-affine, affine) each,
    bilinear, reflect-101 borders as cv2.warpAffine) then a displacement field alpha * gaussian(U(-1, 1), sigma,
    truncate 3) per axis (bilinear, scipy 'reflect' borders as map_coordinates). (alpha, sigma, affine) =
    (0,0,.08), (.05,.2,.07), (.08,.06,.06), (.1,.04,.05), (.1,.03,.03) x H: the affine part shrinks with severity
    while the elastic part grows, so the pixel change is not monotone in severity (see tests)."""
    alpha, sigma, affine = (v * images.shape[2] for v in ELASTIC[_level(images, severity)])
    n, _, h, w = images.shape
    cx, cy, half = float(w // 2), float(h // 2), float(min(h, w) // 3)
    src = torch.tensor([[cx + half, cy + half], [cx + half, cy - half], [cx - half, cy - half]], dtype=torch.float64)
    dst = src + (_rand((n, 3, 2), generator, "cpu").double() * 2 - 1) * affine
    # cv2.getAffineTransform: [src | 1] @ M.T = dst; warpAffine then samples the input at M^-1 (output pixel)
    mt = torch.linalg.solve(torch.cat((src, torch.ones(3, 1, dtype=torch.float64)), dim=1), dst)  # (N, 3, 2)
    a_inv, b = torch.linalg.inv(mt[:, :2].transpose(1, 2)), mt[:, 2]  # x_out = A x_in + b
    xs, ys = ops.pixel_grid(images)
    p = torch.stack((xs, ys), dim=-1)[None] - b.to(images.device)[:, None, None]  # (N, H, W, 2)
    q = torch.einsum("nij,nhwj->nhwi", a_inv.to(images.device), p)
    out = ops.remap(images, q[..., 0], q[..., 1], "reflection", align_corners=True)
    if alpha > 0:  # severity 1 is the affine alone (alpha = 0)
        field = _rand((n, 2, h, w), generator, images.device) * 2 - 1
        field = ops.gaussian(field, sigma, truncate=3.0, mode="symmetric") * alpha
        out = ops.remap(out, xs + field[:, 0].double(), ys + field[:, 1].double(), "reflection", align_corners=False)
    return out.clamp(0, 1)


# -------------------------------------------------------------------------------------------------------- geometric


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


# ------------------------------------------------------------------------------------------------------ label shift


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

"""Weather shifts (CIFAR-10-C's weather family): brightness, fog, snow, frost and spatter."""

from __future__ import annotations

import numpy as np
from PIL import Image

import torch
import torch.nn.functional as F

from harness import imageops as ops
from harness.shifts.blur import _motion_line, _zoom_matrix
from harness.shifts.common import _level, _pick, _rand, _randn

# (loc, scale, zoom, threshold, blur radius px, blur sigma px, blend) of the snow layer
SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # (image weight, frost weight)
FROST_SCALE = 0.2  # make_cifar_c resizes the frost photographs by 0.2 (cv2 INTER_LINEAR) before cropping 32x32
# (loc, scale, sigma px, threshold, intensity, mud): severities 1-3 water, 4-5 mud
SPATTER = ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
           (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1))
GREY = (0.299, 0.587, 0.114)  # cv2 COLOR_RGB2GRAY weights (snow's grey image)
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to HSV value
FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))  # (strength, wibbledecay)
IMAGENET_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # make_imagenet_c.py's (above 64 px, common.IMAGENET_ABOVE)


# brightness and saturate (digital.py) are defined on HSV (skimage rgb2hsv/hsv2rgb). hsv2rgb makes every channel
# v * (1 - s * g_c(h)) with g_c in [0, 1] a function of hue alone, so with h kept the round trip has a closed form:
# a new v scales the pixel, a new s moves each channel's distance below v by s_new / s. Exact, no hue needed.


def brightness(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """HSV value += .05, .1, .15, .2, .3 (clipped), hue and saturation kept: each pixel scales by v_new / v, and a
    black pixel (s = 0) becomes grey v_new. For grey images v is the grey level."""
    delta, _ = _pick(images, severity, BRIGHTNESS, IMAGENET_BRIGHTNESS)
    v = images.amax(1, keepdim=True)
    v_new = (v + delta).clamp(0, 1)
    return torch.where(v > 0, images * (v_new / torch.where(v > 0, v, 1)), v_new).clamp(0, 1)


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

"""Digital shifts (CIFAR-10-C's digital family): contrast, saturate, pixelate, JPEG and elastic."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

import torch

from harness import imageops as ops
from harness.shifts.common import _level, _pick, _rand

CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor on the deviation from the channel mean
SATURATE = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))  # (mult, add) on HSV saturation
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # side of the low-resolution copy, fraction of H
JPEG_QUALITY = (80, 65, 58, 50, 40)
# make_imagenet_c.py's (above 64 px, common.IMAGENET_ABOVE)
IMAGENET_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
IMAGENET_SATURATE = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))
IMAGENET_PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)
IMAGENET_JPEG_QUALITY = (25, 18, 15, 10, 7)
# (alpha, sigma, affine) as fractions of the image side (make_cifar_c's IMSIZE = 32 times these)
ELASTIC = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))


# saturate, as brightness, uses the closed form of the HSV round trip (weather.py says why it is exact)


def saturate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """HSV saturation * mult + add (clipped), (mult, add) = (.3,0), (.1,0), (1.5,0), (2,.1), (2.5,.2): severities 1-2
    desaturate, 3-5 oversaturate. A grey pixel has hue 0 in skimage, so add > 0 tints it red, as in CIFAR-10-C;
    grey images (C = 1) cannot hold a hue and are returned unchanged."""
    (mult, add), _ = _pick(images, severity, SATURATE, IMAGENET_SATURATE)
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
    c, _ = _pick(images, severity, CONTRAST, IMAGENET_CONTRAST)
    mean = images.mean(dim=(2, 3), keepdim=True)
    return ((images - mean) * c + mean).clamp(0, 1)


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
    c, _ = _pick(images, severity, PIXELATE, IMAGENET_PIXELATE)
    _, _, h, w = images.shape
    mh = _box_matrix(int(h * c), h) @ _box_matrix(h, int(h * c))
    mw = _box_matrix(int(w * c), w) @ _box_matrix(w, int(w * c))
    return ops.separable(images, mh, mw).clamp(0, 1)


def jpeg_compression(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """A real JPEG round trip at quality 80, 65, 58, 50, 40 through PIL, exactly as make_cifar_c.py does, of the
    uint8 image; per image on the CPU, the codec has no batched form. (torchvision.io's codec gives identical bytes
    but is deprecated in torchvision 0.29.)"""
    quality, _ = _pick(images, severity, JPEG_QUALITY, IMAGENET_JPEG_QUALITY)
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

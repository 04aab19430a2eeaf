"""Each corruption against its reference: scipy, PIL, matplotlib's HSV, and make_cifar_c.py's own formulas."""

import io

import numpy as np
import pytest
import torch

from harness import shifts

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------------------ fidelity to the references


def test_blurs_match_scipy(images):
    """gaussian_blur is scipy gaussian_filter (mode 'nearest', truncate 4, as skimage); zoom_blur is make_cifar_c's
    mean of clipped scipy zooms; defocus is the 3x3-smoothed disk correlated with reflect-101 borders."""
    ndimage = pytest.importorskip("scipy.ndimage")
    x = images[:2].double().numpy()
    ref = ndimage.gaussian_filter(x, sigma=(0, 0, 0.7, 0.7), mode="nearest", truncate=4.0)
    assert np.abs(shifts.gaussian_blur(images[:2], 3, torch.Generator()).numpy() - ref).max() < 1e-5

    def clipped_zoom(img, z):  # make_cifar_c.clipped_zoom on (C, H, W)
        h = img.shape[1]
        ch = int(np.ceil(h / z))
        top = (h - ch) // 2
        out = ndimage.zoom(img[:, top:top + ch, top:top + ch], (1, z, z), order=1)
        trim = (out.shape[1] - h) // 2
        return out[:, trim:trim + h, trim:trim + h]

    for severity, end in enumerate((1.06, 1.11, 1.16, 1.21, 1.26), start=1):
        factors = np.arange(1, end, 0.01)  # severity 5: the last is 1.2500000000000002, its zoomed crop 33 px
        ref = np.stack([(im + sum(clipped_zoom(im, z) for z in factors)) / (len(factors) + 1) for im in x])
        assert np.abs(shifts.zoom_blur(images[:2], severity, torch.Generator()).numpy() - ref).max() < 1e-5, severity

    radius, alias = 1.5, 0.1  # severity 5
    t = np.arange(-8, 9)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).astype(np.float64)
    g = np.exp(-0.5 * (np.arange(3) - 1) ** 2 / alias**2)
    disk = ndimage.correlate(disk / disk.sum(), np.outer(g, g) / g.sum() ** 2, mode="mirror")  # mirror = reflect-101
    ref = ndimage.correlate(x, disk[None, None], mode="mirror")
    assert np.abs(shifts.defocus_blur(images[:2], 5, torch.Generator()).numpy() - ref).max() < 1e-5


def test_pixelate_and_jpeg_match_pil(images):
    """pixelate equals PIL's BOX resize down to int(32 * .75) = 24 px and back; jpeg_compression equals a PIL JPEG
    round trip (what make_cifar_c.py does) of the uint8 image bit for bit."""
    image = pytest.importorskip("PIL.Image")
    x = images[0].numpy()
    ref = np.stack([np.asarray(image.fromarray(ch, mode="F").resize((24, 24), image.BOX).resize((32, 32), image.BOX))
                    for ch in x])
    assert np.abs(shifts.pixelate(images[:1], 4, torch.Generator())[0].numpy() - ref).max() < 1e-5

    buffer = io.BytesIO()
    image.fromarray((x.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(buffer, "JPEG", quality=40)
    ref = np.asarray(image.open(buffer)).transpose(2, 0, 1) / 255
    assert np.abs(shifts.jpeg_compression(images[:1], 5, torch.Generator())[0].numpy() - ref).max() < 1e-6


def test_hsv_shifts_match_matplotlib(images):
    """brightness and saturate act on HSV exactly like skimage (here matplotlib's identical rgb<->hsv), grey and
    black pixels included (hue 0, so saturate tints grey red)."""
    colors = pytest.importorskip("matplotlib.colors")
    x = images[:2].clone()
    x[:, :, 0, :4], x[:, :, 1, :4] = 0.5, 0.0
    hsv = colors.rgb_to_hsv(x.double().permute(0, 2, 3, 1).numpy())
    bright, sat = hsv.copy(), hsv.copy()
    bright[..., 2] = np.clip(hsv[..., 2] + 0.3, 0, 1)
    sat[..., 1] = np.clip(hsv[..., 1] * 2.5 + 0.2, 0, 1)
    for fn, ref in [(shifts.brightness, bright), (shifts.saturate, sat)]:
        out = fn(x, 5, torch.Generator()).permute(0, 2, 3, 1).numpy()
        assert np.abs(out - np.clip(colors.hsv_to_rgb(ref), 0, 1)).max() < 1e-5


def test_contrast_matches_definition(images):
    """contrast scales each channel's deviation from its per-image mean by c = .15 at severity 5."""
    x = images[:2]
    mean = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(shifts.contrast(x, 5, torch.Generator()), ((x - mean) * 0.15 + mean).clamp(0, 1), atol=1e-6)


# ------------------------------------------------------------ the four ImageNet-C corruptions with random textures
# make_cifar_c.py's formulas (hendrycks/robustness @ ca36008) written out here in numpy/scipy/OpenCV, fed the same
# random draws the harness documents for each shift (its docstring's "Draws:"), at all 5 severities; where
# make_cifar_c needs ImageMagick (snow's motion blur) or the frost photographs, the imagecorruptions package supplies
# them. Tolerance 1e-5 (float32 output of float64 arithmetic) unless stated.


def reference_package():
    """imagecorruptions.corruptions, imported with a stand-in for setuptools' pkg_resources (gone from setuptools
    >= 81), which it only uses to find its frost files."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("imagecorruptions") is None:
        pytest.skip("imagecorruptions (a dependency in pyproject.toml) is not installed in this environment")
    if "pkg_resources" not in sys.modules:
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = lambda pkg, path: str(
            __import__("pathlib").Path(importlib.util.find_spec(pkg.split(".")[0]).origin).parent / path)
        sys.modules["pkg_resources"] = stub
    from imagecorruptions import corruptions

    return corruptions


def hwc(images: torch.Tensor) -> np.ndarray:
    return images.double().permute(0, 2, 3, 1).numpy()


GLASS = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)]
SNOW = [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)]
FROST = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)]
SPATTER = [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
           (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)]


def skimage_gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """skimage.filters.gaussian (multichannel for HxWxC): scipy gaussian_filter, mode 'nearest', truncate 4."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(sigma, sigma, 0)[:x.ndim], mode="nearest", truncate=4.0)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_glass_blur_matches_make_cifar_c(severity, images):
    """Blur, uint8, make_cifar_c's 'swap' loop verbatim (on numpy views it copies), blur: equal to 1e-5."""
    sigma, delta, iters = GLASS[severity - 1]
    x = images[:4]
    n = len(x)
    span = len(range(32 - delta, delta, -1))
    draws = torch.randint(-delta, delta, (n, iters, span, span, 2), generator=torch.Generator().manual_seed(5)).numpy()
    refs = []
    for img, d in zip(hwc(x), draws):
        steps = iter(d.reshape(-1, 2))
        y = np.uint8(skimage_gaussian(img, sigma) * 255)
        for _ in range(iters):
            for h in range(32 - delta, delta, -1):
                for w in range(32 - delta, delta, -1):
                    dx, dy = next(steps)
                    h_prime, w_prime = h + dy, w + dx
                    y[h, w], y[h_prime, w_prime] = y[h_prime, w_prime], y[h, w]
        refs.append(np.clip(skimage_gaussian(y / 255.0, sigma), 0, 1))
    out = shifts.glass_blur(x, severity, torch.Generator().manual_seed(5))
    assert np.abs(hwc(out) - np.stack(refs)).max() < 1e-5


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_snow_matches_make_cifar_c(severity, images):
    """make_cifar_c's snow with ImageMagick's motion blur replaced by imagecorruptions' numpy _motion_blur (what
    the harness reimplements): the layer, its zoom, threshold, uint8 steps, the grey blend and the two layers added.
    Tolerance 1e-5, except that a float32 (reference) vs float64 (harness) blur may round a layer value to the
    neighbouring uint8 level: at most 1 pixel value in 1000 differs, by 1/255 per layer."""
    ref_pkg = reference_package()
    cv2 = pytest.importorskip("cv2")
    from scipy.ndimage import zoom as scizoom

    loc, scale, zoom, threshold, radius, sigma, blend = SNOW[severity - 1]
    x = images[:4]
    g = torch.Generator().manual_seed(9)
    noise, u = torch.randn((4, 1, 32, 32), generator=g), torch.rand((4,), generator=g)
    refs = []
    for img, z, a in zip(hwc(x).astype(np.float32), noise[:, 0].double().numpy(), u.double().numpy()):
        layer = z * scale + loc
        ch = int(np.ceil(32 / zoom))
        top = (32 - ch) // 2
        layer = scizoom(layer[top:top + ch, top:top + ch, None], (zoom, zoom, 1), order=1)
        trim = (layer.shape[0] - 32) // 2
        layer = layer[trim:trim + 32, trim:trim + 32]
        layer[layer < threshold] = 0
        layer = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8) / 255.0  # the PNG make_cifar_c writes
        layer = ref_pkg._motion_blur(layer, radius=radius, sigma=sigma, angle=a * 90 - 135)
        layer = (np.round(layer * 255).astype(np.uint8) / 255.0)[..., None]
        y = blend * img + (1 - blend) * np.maximum(img, cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None] * 1.5 + 0.5)
        refs.append(np.clip(y + layer + np.rot90(layer, k=2), 0, 1))
    out = hwc(shifts.snow(x, severity, torch.Generator().manual_seed(9)))
    diff = np.abs(out - np.stack(refs))
    assert (diff > 1e-5).mean() <= 1e-3 and diff.max() < 2 / 255 + 1e-5


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_frost_matches_make_cifar_c(severity, images):
    """The frost photographs read by OpenCV from imagecorruptions' files, cv2.resize(fx=fy=.2), the crop at the
    drawn corner, BGR -> RGB, clip(a x + b frost): equal to 1e-5."""
    reference_package()
    cv2 = pytest.importorskip("cv2")
    from importlib import metadata

    dist = metadata.distribution("imagecorruptions")
    names = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"]
    photos = [cv2.resize(cv2.imread(str(dist.locate_file(f"imagecorruptions/frost/{f}"))), (0, 0), fx=0.2, fy=0.2)
              for f in names]
    a, b = FROST[severity - 1]
    x = images[:6]
    g = torch.Generator().manual_seed(severity)
    pick, corner = torch.randint(5, (6,), generator=g), torch.rand((6, 2), generator=g, dtype=torch.float64)
    refs = []
    for img, i, (u, v) in zip(hwc(x) * 255, pick.tolist(), corner.tolist()):
        frost = photos[i]
        x_start, y_start = int(u * (frost.shape[0] - 32)), int(v * (frost.shape[1] - 32))
        frost = frost[x_start:x_start + 32, y_start:y_start + 32][..., [2, 1, 0]]
        refs.append(np.clip(a * img + b * frost, 0, 255) / 255)
    out = shifts.frost(x, severity, torch.Generator().manual_seed(severity))
    assert np.abs(hwc(out) - np.stack(refs)).max() < 1e-5


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_spatter_matches_make_cifar_c(severity, images):
    """make_cifar_c's spatter verbatim (OpenCV edge map and colours for water, 1-3; blurred mask and mud, 4-5) on
    the same N(loc, scale) layer: equal to 1e-5."""
    cv2 = pytest.importorskip("cv2")
    loc, scale, sigma, threshold, intensity, mud = SPATTER[severity - 1]
    x = images[:6]
    noise = torch.randn((6, 1, 32, 32), generator=torch.Generator().manual_seed(2))[:, 0].double().numpy()
    refs = []
    for img, z in zip(hwc(x).astype(np.float32), noise):
        liquid_layer = skimage_gaussian(z * scale + loc, sigma)
        liquid_layer[liquid_layer < threshold] = 0
        if mud == 0:
            liquid_layer = (liquid_layer * 255).astype(np.uint8)
            dist = 255 - cv2.Canny(liquid_layer, 50, 150)
            dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
            _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
            dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
            dist = cv2.equalizeHist(dist)
            ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
            dist = cv2.filter2D(dist, cv2.CV_8U, ker)
            dist = cv2.blur(dist, (3, 3)).astype(np.float32)
            m = cv2.cvtColor(liquid_layer * dist, cv2.COLOR_GRAY2BGRA)
            m /= np.max(m, axis=(0, 1))
            m *= intensity
            color = np.concatenate([np.full_like(m[..., :1], v / 255.0) for v in (175, 238, 238)], axis=2)
            color = cv2.cvtColor(color, cv2.COLOR_BGR2BGRA)
            y = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
            refs.append(cv2.cvtColor(np.clip(y + m * color, 0, 1), cv2.COLOR_BGRA2BGR))
        else:
            m = np.where(liquid_layer > threshold, 1, 0)
            m = skimage_gaussian(m.astype(np.float32), intensity)
            m[m < 0.8] = 0
            color = np.concatenate([np.full_like(img[..., :1], v / 255.0) for v in (63, 42, 20)], axis=2)
            color *= m[..., None]
            refs.append(np.clip(img * (1 - m[..., None]) + color, 0, 1))
    out = shifts.spatter(x, severity, torch.Generator().manual_seed(2))
    assert np.abs(hwc(out) - np.stack(refs)).max() < 1e-5

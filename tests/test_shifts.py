"""Every registered shift keeps the image contract, is seeded, and grows with severity; label-shift resampling."""

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import shifts

# Shifts that draw nothing from the generator: the seed must not matter for them.
DETERMINISTIC = {"gaussian_blur", "defocus_blur", "zoom_blur", "contrast", "brightness", "saturate", "pixelate",
                 "jpeg_compression"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny (16 images): a second OpenMP thread gains nothing, and when the other core is busy its
    barriers cost ~100x (a zoom_blur call measured 600 ms on 2 threads vs 7 ms on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_images(n=16, c=3, size=32, seed=0):
    """Colourful images with structure at ~4 px: bilinear upsampling of 8x8 uniform noise, so blurs change them."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, c, 8, 8, generator=g), size=size, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def images():
    return smooth_images()


@pytest.fixture(scope="module")
def distances(images):
    """Mean |shifted - clean| per shift for severities 1..5, seed 0."""
    return {name: [(shifts.apply(name, images, s, 0) - images).abs().mean().item() for s in range(1, 6)]
            for name in shifts.SHIFTS}


# CIFAR-10-C's 15 benchmark corruptions and its 4 extra ones (science.md 3)
BENCHMARK = {"gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
             "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression"}
EXTRA = {"speckle_noise", "gaussian_blur", "spatter", "saturate"}


def test_registry_names_and_families():
    """All 19 CIFAR-10-C corruptions and the 2 geometric shifts are registered, and FAMILY gives each one of the
    five families, CIFAR-10-C's for the corruptions."""
    required = BENCHMARK | EXTRA | {"rotate", "translate"}
    assert required <= set(shifts.SHIFTS)
    assert set(shifts.BENCHMARK) == BENCHMARK
    assert {n for n, f in shifts.FAMILY.items() if f == "weather"} == {"snow", "frost", "fog", "brightness", "spatter"}
    assert shifts.FAMILY["glass_blur"] == "blur"
    assert set(shifts.FAMILY) == set(shifts.SHIFTS)
    assert set(shifts.FAMILY.values()) == {"noise", "blur", "weather", "digital", "geometric"}
    assert shifts.FAMILY["fog"] == shifts.FAMILY["brightness"] == "weather"
    assert shifts.FAMILY["saturate"] == "digital" and shifts.FAMILY["rotate"] == "geometric"


@pytest.mark.parametrize("name", shifts.SHIFTS)
@pytest.mark.parametrize("severity", [1, 5])
def test_contract(name, severity, images):
    """Shape, float32, device and [0, 1] are kept; the input tensor is not modified."""
    before = images.clone()
    out = shifts.apply(name, images, severity, seed=3)
    assert out.shape == images.shape and out.dtype == torch.float32 and out.device == images.device
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert torch.equal(images, before), "input was modified in place"


@pytest.mark.parametrize("name", shifts.SHIFTS)
def test_seeded(name, images):
    """Same seed -> identical output; a different seed -> a different output for the random shifts, the same for
    the deterministic ones."""
    a, b, c = (shifts.apply(name, images, 3, seed) for seed in (7, 7, 8))
    assert torch.equal(a, b)
    assert torch.equal(a, c) == (name in DETERMINISTIC)


@pytest.mark.parametrize("name", shifts.SHIFTS)
def test_distance_grows_with_severity(name, distances):
    """Mean |shifted - clean| over 16 smooth colourful images is strictly increasing in severity 1..5, except
    where the CIFAR-10-C constants themselves are not monotone; those assert what does hold, and why."""
    d = distances[name]
    assert d[0] > 0
    if name == "motion_blur":
        # (radius, sigma) = (6, 2) and (8, 2): past 3 sigma = 6 taps the weights are < 1e-8, so the longer line adds
        # nothing and severities 3 and 4 are the same blur (as in ImageMagick, which CIFAR-10-C used)
        assert d[0] < d[1] < d[2] < d[4] and d[3] == pytest.approx(d[2], rel=1e-5)
    elif name == "saturate":
        # (mult, add) = (.3,0), (.1,0), (1.5,0), (2,.1), (2.5,.2): severities 1-2 desaturate, 3-5 oversaturate, so the
        # distance restarts at 3; within each direction it grows
        assert d[0] < d[1] and d[2] < d[3] < d[4] and d[2] < d[0]
    elif name == "pixelate":
        # sizes 30, 28, 27, 24, 20 px: on smooth images the down/up round trip error depends on how the 32:28,
        # 32:27, 32:24 sampling phases line up more than on the size; the smallest size is still the worst
        assert d[0] < d[1] and d[4] > max(d[:4])
    elif name == "glass_blur":
        # (sigma, passes) = (.05,1), (.25,1), (.4,1), (.25,2), (.4,2): on smooth images the pixel shuffle dominates a
        # blur of < .5 px, so one pass (1-3) moves them alike and two passes (4-5) move them more
        assert max(d[:3]) < min(d[3:]) and d[2] == pytest.approx(d[0], rel=0.1)
    elif name == "frost":
        # (image, frost) = (1,.2), (1,.3), (.9,.4), (.85,.4), (.75,.45): from 3 on the image is darkened while the frost
        # added stays ~.4, and the two cancel in part, so past 3 the distance need not grow
        assert d[0] < d[1] < d[2] and min(d[1:]) > d[0]
    elif name == "spatter":
        # severities 1-3 are water, 4-5 a different process (mud): each grows within itself
        assert d[0] < d[1] < d[2] and d[3] < d[4]
    elif name == "elastic_transform":
        # affine jitter .08, .07, .06, .05, .03 x 32 px shrinks while the elastic field (alpha .05-.1 x 32, sigma
        # .2-.03 x 32) stays below ~0.5 px rms, so pixel change falls with severity (difficulty need not)
        assert all(a > b for a, b in zip(d, d[1:]))
    else:
        assert all(a < b for a, b in zip(d, d[1:])), f"{name}: {d}"


def test_pixelate_monotone_on_detailed_images():
    """On per-pixel noise, where the detail lost dominates, pixelate's distance is strictly increasing."""
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    d = [(shifts.pixelate(x, s, torch.Generator()) - x).abs().mean().item() for s in range(1, 6)]
    assert all(a < b for a, b in zip(d, d[1:])), d


@pytest.mark.parametrize("name", shifts.SHIFTS)
def test_grey_and_other_sizes(name):
    """Single-channel images and non-32 sizes (constants in pixels scale with H/32) keep the contract."""
    for shape in [(4, 1, 32, 32), (2, 3, 20, 28)]:
        x = smooth_images(shape[0], shape[1], 32)
        x = F.interpolate(x, size=shape[2:], mode="bilinear") if shape[2:] != (32, 32) else x
        out = shifts.apply(name, x, 4, seed=0)
        assert out.shape == x.shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
        assert torch.equal(out, shifts.apply(name, x, 4, seed=0))


@pytest.mark.parametrize("name", shifts.SHIFTS)
def test_bad_severity(name, images):
    """Severity 0 and 6 raise a ValueError that names the allowed range."""
    for severity in (0, 6):
        with pytest.raises(ValueError, match="1..5"):
            shifts.SHIFTS[name](images, severity, torch.Generator())


def test_apply_unknown_shift():
    """An unknown name raises and lists the allowed shifts."""
    with pytest.raises(ValueError, match="gaussian_noise"):
        shifts.apply("hail", smooth_images(1), 1, 0)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_gaussian_noise_std(severity):
    """On a flat 0.5 image (no clipping within 5 sigma) the noise std is within 3% of sigma_s."""
    x = torch.full((16, 3, 32, 32), 0.5)
    out = shifts.gaussian_noise(x, severity, torch.Generator().manual_seed(severity))
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[severity - 1]
    assert (out - x).std().item() == pytest.approx(sigma, rel=0.03)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", shifts.SHIFTS)
def test_cuda_matches_cpu(name, images):
    """With a CPU generator the shifted set on CUDA stays on CUDA and equals the CPU one up to float rounding."""
    cpu = shifts.apply(name, images, 5, seed=0)
    gpu = shifts.apply(name, images.cuda(), 5, seed=0)
    assert gpu.device.type == "cuda"
    # jpeg's uint8 rounding and motion's integer taps can flip on a 1e-7 difference: compare on average
    assert (gpu.cpu() - cpu).abs().mean() < 1e-3


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


# ------------------------------------------------------------------------------------------------- label shift


def test_dirichlet_prior():
    """A Dirichlet prior is non-negative, sums to 1, and is reproducible from the seed."""
    for alpha in (0.1, 1.0, 10.0):
        p = shifts.dirichlet_prior(10, alpha, torch.Generator().manual_seed(0))
        assert p.shape == (10,) and (p >= 0).all() and p.sum().item() == pytest.approx(1, abs=1e-12)
        assert torch.equal(p, shifts.dirichlet_prior(10, alpha, torch.Generator().manual_seed(0)))


def test_tweak_one_prior():
    """Tweak-one gives class cls exactly rho and splits 1 - rho evenly over the rest."""
    p = shifts.tweak_one_prior(10, 3, 0.55)
    assert p[3].item() == pytest.approx(0.55)
    assert torch.allclose(p[torch.arange(10) != 3], torch.full((9,), 0.45 / 9, dtype=p.dtype))
    assert p.sum().item() == pytest.approx(1)


def test_resample_to_prior():
    """n = 5000 resampled indices hit the requested prior within 0.01 per class (largest-remainder counts sum to
    n), are drawn from the right classes, and repeat for a fixed seed."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(10, (1000,), generator=g)
    prior = shifts.dirichlet_prior(10, 1.0, g)
    idx = shifts.resample_to_prior(labels, prior, 5000, torch.Generator().manual_seed(1))
    assert idx.shape == (5000,) and idx.dtype == torch.long and 0 <= idx.min() and idx.max() < 1000
    freq = torch.bincount(labels[idx], minlength=10).double() / 5000
    assert (freq - prior).abs().max() < 0.01
    assert torch.equal(idx, shifts.resample_to_prior(labels, prior, 5000, torch.Generator().manual_seed(1)))


def test_resample_missing_class():
    """A class with positive prior but no examples is a clear ValueError naming the class."""
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"\[2\]"):
        shifts.resample_to_prior(labels, torch.tensor([0.3, 0.3, 0.4]), 10, torch.Generator())
    # zero prior on the missing class is fine
    idx = shifts.resample_to_prior(labels, torch.tensor([0.5, 0.5, 0.0]), 10, torch.Generator())
    assert math.isclose(torch.bincount(labels[idx], minlength=3)[0].item(), 5)


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

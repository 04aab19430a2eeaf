"""Every registered shift keeps the image contract, is seeded, and grows with severity; the registry and its source."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness import shifts

from conftest import smooth_images

pytestmark = pytest.mark.usefixtures("one_thread")

# Shifts that draw nothing from the generator: the seed must not matter for them.
DETERMINISTIC = {"gaussian_blur", "defocus_blur", "zoom_blur", "contrast", "brightness", "saturate", "pixelate",
                 "jpeg_compression"}


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


def test_source_covers_every_module():
    """The suite's and the target domain's cache keys hash shifts.source(): it holds every file of harness/shifts/
    (one per family, the registry, the shared contract, label shift), so editing any corruption invalidates them."""
    files = sorted(Path(shifts.__file__).parent.glob("*.py"))
    assert {"__init__.py", "common.py", "noise.py", "blur.py", "weather.py", "digital.py", "geometric.py",
            "label.py"} <= {p.name for p in files}
    text = shifts.source()
    assert all(p.read_text(encoding="utf-8") in text for p in files)
    assert len(text) == sum(len(p.read_text(encoding="utf-8")) for p in files)

"""Shared fixtures: a tiny study config (seconds on CPU) run in a temporary working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

torch.set_num_threads(min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

# Small enough that a trial takes well under a second on 2 cores, big enough that learning shows:
# 12 labels per class, 16x16 images, 1 pretraining epoch, 3 fine-tuning epochs, 2 test shifts at 2 severities.
TINY = """
[study]
name = "tiny"
n_trials = 4
seed = 0
prune_warmup = 1
baseline_lrs = [0.01]  # one lr per baseline family: the 3 baselines are trials 0-2 (tests of the sweep set their own)

[data]
source = "digits"
image_size = 16
labels_per_class = 12

[model]
name = "resnet8"
weights = "pretrain"

[pretrain]
epochs = 2

[train]
epochs = 3
batch_size = 32

[search]
lr = [1e-3, 0.1]
freeze_layers = [0, 4]
unfreeze_epoch = [1, 3]

[shifts]
selection = ["gaussian_blur"]
test = ["gaussian_noise", "contrast"]
severities = [1, 3]
label_alpha = 1.0
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A temporary working directory: mlruns/ and reports/ are created under it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tiny_config(workdir) -> Path:
    path = workdir / "tiny.toml"
    path.write_text(TINY)
    return path


def need_service(present: bool, what: str) -> None:
    """Skip a test whose system service (PostgreSQL, Chromium) is missing, except under .ci/run, which installs them
    and sets HARNESS_REQUIRE_SERVICES=1: there a missing service is a failure, never a silent skip."""
    if present:
        return
    if os.environ.get("HARNESS_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required under .ci/run (HARNESS_REQUIRE_SERVICES=1) but missing")
    pytest.skip(f"{what} is missing (.ci/run installs it)")


def created_files(root: Path, ignore=("tiny.toml",)) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name not in ignore)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors (pytestmark = pytest.mark.usefixtures("one_thread")): a second OpenMP thread gains
    nothing there, and when the other core is busy its barriers cost ~100x (a zoom_blur call measured 600 ms on 2
    threads vs 7 ms on 1)."""
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
    """16 smooth_images, the shift tests' input."""
    return smooth_images()

"""Label shift: Dirichlet and tweak-one priors, resampling a labelled set to a prior."""

import math

import pytest
import torch

from harness import shifts


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

"""Image operations: border padding as numpy pads, the separable Gaussian as scipy's, integer shifts by index."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from harness import imageops


@pytest.mark.parametrize("mode, numpy_mode", [("edge", "edge"), ("symmetric", "symmetric"), ("reflect", "reflect")])
@pytest.mark.parametrize("n, r", [(5, 2), (4, 7), (1, 3)])
def test_pad_index_matches_numpy_pad(mode, numpy_mode, n, r):
    """Padding an axis by r on both sides (r larger than the axis too) indexes like numpy.pad of the same mode."""
    if n == 1 and mode == "reflect":
        numpy_mode = "edge"  # numpy cannot reflect a length-1 axis; one pixel repeats, as pad_index does
    got = imageops.pad_index(n, r, mode, "cpu").numpy()
    assert (got == np.pad(np.arange(n), r, mode=numpy_mode)).all()


@pytest.mark.parametrize("mode, scipy_mode", [("edge", "nearest"), ("symmetric", "reflect")])
def test_gaussian_is_scipy_gaussian_filter(mode, scipy_mode):
    x = torch.rand(2, 3, 12, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = imageops.gaussian(x, 1.3, truncate=4.0, mode=mode)
    want = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.3, 1.3), truncate=4.0, mode=scipy_mode)
    assert np.allclose(got.numpy(), want, atol=1e-12)


def test_shift_moves_each_image_by_its_own_offset():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    out = imageops.shift(x, torch.tensor([1, 0]), torch.tensor([0, -1]), fill=0.0)
    assert torch.equal(out[0, 0, :3], x[0, 0, 1:]) and (out[0, 0, 3] == 0).all()  # up by one row, bottom filled
    assert torch.equal(out[1, 0, :, 1:], x[1, 0, :, :3]) and (out[1, 0, :, 0] == 0).all()  # right by one column

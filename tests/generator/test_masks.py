"""generator.masks.dilate: the distance-transform form equals dilation by a disk exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from generator.masks import dilate, disk


@pytest.mark.parametrize("radius", [1, 2, 3, 5, 8, 13])
def test_dilate_equals_binary_dilation_by_a_disk(radius):
    rng = np.random.default_rng(radius)
    mask = ndimage.gaussian_filter(rng.random((61, 47)), 2.0) > 0.56  # blobs of every shape
    mask[0, 5] = mask[60, 46] = True  # pixels on the border
    expected = ndimage.binary_dilation(mask, structure=disk(radius))
    assert np.array_equal(dilate(mask, radius), expected)


def test_dilate_keeps_the_input_and_edge_cases():
    mask = np.zeros((9, 9), bool)
    mask[4, 4] = True
    assert dilate(mask, 0) is not mask and np.array_equal(dilate(mask, 0), mask)
    assert not dilate(np.zeros((5, 5), bool), 3).any()
    assert dilate(mask, 1).sum() == 5 and dilate(mask, 2).sum() == 13  # digital disks
    with pytest.raises(ValueError, match=">= 0"):
        dilate(mask, -1)

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


def test_ring_texture_gain_makes_the_fill_as_textured_as_the_ring():
    """Closed form: with g from ring_texture_gain, E_hf(base + g·texture) over the region equals
    E_hf(image) over the ring (the cross term ⟨ab⟩ included: a bare energy ratio misses it)."""
    from generator.masks import RING_PX, ring_texture_gain
    from shared.metrics import high_frequency_energy

    rng = np.random.default_rng(0)
    image = 0.5 + 0.05 * rng.standard_normal((64, 64))  # tissue texture everywhere
    region = np.zeros((64, 64), bool)
    region[24:40, 20:44] = True
    base = image.copy()
    base[region] = 0.5 + 0.01 * rng.standard_normal(int(region.sum()))  # a fill, a little textured
    texture = np.where(region, rng.standard_normal((64, 64)) + 0.3 * (base - 0.5) / 0.01, 0.0)
    g = ring_texture_gain(base, texture, image, region)
    ring = dilate(region, RING_PX) & ~region
    want = high_frequency_energy(image, ring)
    assert g > 0
    assert high_frequency_energy(base + g * texture, region) == pytest.approx(want, rel=1e-9)
    # a base already more textured than the ring gets no texture; no ring, no texture
    assert ring_texture_gain(image + 0.2 * rng.standard_normal((64, 64)), texture, image, region) == 0
    assert ring_texture_gain(base, texture, image, np.ones((64, 64), bool)) == 0
    assert ring_texture_gain(base, np.zeros((64, 64)), image, region) == 0


def test_ring_texture_energy_mad_ignores_an_edge_the_mean_counts():
    """On Gaussian texture the MAD estimate equals the mean of h² (1.4826·MAD is the normal's σ);
    a step edge across the ring inflates the mean several-fold but barely moves the MAD (a missing
    1.4826, an unsquared MAD or a ring that is not the ring fails one of the three)."""
    from generator.masks import RING_PX, ring_texture_energy
    from shared.metrics import high_frequency_energy, high_pass

    rng = np.random.default_rng(1)
    image = 0.5 + 0.02 * rng.standard_normal((256, 256))
    region = np.zeros((256, 256), bool)
    region[96:160, 96:160] = True
    ring = dilate(region, RING_PX) & ~region
    mean = ring_texture_energy(image, region)
    assert mean == pytest.approx(high_frequency_energy(image, ring), rel=1e-12)
    assert ring_texture_energy(image, region, estimator="mad") == pytest.approx(mean, rel=0.08)
    h = high_pass(image)[ring]
    assert np.var(h) == pytest.approx(mean, rel=0.01)  # h is zero-mean: the two estimate σ²
    step = (np.arange(256) >= 128).astype(float)
    edged = image + 0.6 * (step[None, :] + step[:, None])  # two tissue boundaries through the ring
    assert ring_texture_energy(edged, region) > 3 * mean
    assert ring_texture_energy(edged, region, estimator="mad") == pytest.approx(mean, rel=0.2)
    with pytest.raises(ValueError, match="estimator"):
        ring_texture_energy(image, region, estimator="max")

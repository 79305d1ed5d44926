"""Exemplar texture (generator/exemplar.py): copies come from clean tissue, never from the lesion
or its edge, and from the side whose surroundings match the hole's."""

import numpy as np

from generator.exemplar import GAP_PX, candidate_offsets, ranked_offsets, translated_texture
from generator.masks import RING_PX, dilate
from shared.metrics import high_pass


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_copies_clear_the_lesion_and_its_edge():
    """A bright lesion (value 5) on fine stripes (amplitude 0.1): every offered copy of the
    hole and its ring stays ``GAP_PX`` away from it, and the copied high-pass carries only
    stripe-sized values — a copy reaching the lesion's edge would carry its step of 5."""
    rows = np.arange(128)
    image = 0.5 + 0.1 * np.sin(rows * 2.1)[:, None] * np.ones((1, 128))
    lesion = _disk(image.shape, (64, 64), 8)
    image[lesion] = 5.0
    region = dilate(lesion, 2)
    offsets = ranked_offsets(image, region)
    assert offsets, "an unobstructed 128² image must offer copies"
    ring = dilate(region, RING_PX) & ~region
    stripes_hp = np.abs(high_pass(0.5 + 0.1 * np.sin(rows * 2.1)[:, None] * np.ones((1, 128))))
    for dy, dx in offsets:
        moved = np.roll(np.roll(region | ring, dy, 0), dx, 1)
        assert not (moved & dilate(region, GAP_PX)).any()
        t = translated_texture(image, region, (dy, dx))
        assert np.all(t[~region] == 0)
        r, c = np.nonzero(region)
        np.testing.assert_array_equal(t[r, c], high_pass(image)[r + dy, c + dx])
        assert np.abs(t).max() <= stripes_hp.max() + 1e-9


def test_best_copy_comes_from_tissue_like_the_ring():
    """Left half rough (noise std 0.1), right half smooth (std 0.005); the hole sits in the
    left half near the middle: the best-ranked copy lies wholly in the rough half although
    candidates on the right are valid too."""
    rng = np.random.default_rng(0)
    image = 0.5 + np.where(np.arange(160)[None, :] < 80, 0.1, 0.005) * rng.standard_normal((160, 160))
    region = _disk(image.shape, (80, 60), 6)
    offsets = ranked_offsets(image, region)
    right = [o for o in offsets if np.nonzero(region)[1].min() + o[1] >= 80]
    assert right, "the smooth half must hold valid candidates for the ranking to mean anything"
    dy, dx = offsets[0]
    assert (np.nonzero(region)[1] + dx).max() < 80
    assert offsets.index(right[0]) > 0


def test_no_copy_where_the_hole_fills_the_image():
    region = np.zeros((40, 40), bool)
    region[4:36, 4:36] = True
    assert ranked_offsets(np.random.default_rng(1).random((40, 40)), region) == []
    assert len(candidate_offsets(region)) == len(set(candidate_offsets(region)))

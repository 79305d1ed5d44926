import numpy as np
import pytest
import torch

from generator.masks import (
    biharmonic_fill,
    coarse_fill,
    dilate,
    disk,
    harmonic_fill,
    paste_back,
    place_mask,
    random_lesion_mask,
)


def test_disk_is_euclidean_ball():
    d = disk(2)
    assert d.shape == (5, 5)
    assert d.sum() == 13  # lattice points with x²+y² ≤ 4
    assert not d[0, 0] and d[0, 2] and d[2, 2]


def test_dilate_radius_in_pixels():
    m = np.zeros((21, 21), bool)
    m[10, 10] = True
    for r in (0, 1, 3, 5):
        out = dilate(m, r)
        ys, xs = np.nonzero(out)
        assert ys.max() - 10 == r and 10 - xs.min() == r
        np.testing.assert_array_equal(out[10 - r : 11 + r, 10 - r : 11 + r], disk(r))
    with pytest.raises(ValueError, match="radius"):
        dilate(m, -1)


def test_paste_back_exact_outside_region():
    rng = np.random.default_rng(0)
    orig = rng.random((16, 12, 3)).astype(np.float32)
    gen = rng.random((16, 12, 3)).astype(np.float32)
    region = rng.random((16, 12)) > 0.7
    out = paste_back(orig, gen, region)
    assert np.array_equal(out[~region], orig[~region])
    assert np.array_equal(out[region], gen[region])
    with pytest.raises(ValueError, match="region"):
        paste_back(orig, gen, region[:-1])


def test_coarse_fill_keeps_known_pixels_and_reproduces_planes():
    torch.manual_seed(0)
    image = torch.rand(2, 1, 32, 32)
    hole = torch.zeros(2, 1, 32, 32)
    hole[:, :, 10:20, 8:22] = 1
    out = coarse_fill(image, hole)
    torch.testing.assert_close(out[hole == 0], image[hole == 0], rtol=0, atol=0)
    const = torch.full((1, 1, 32, 32), 0.3)
    torch.testing.assert_close(coarse_fill(const * (1 - hole[:1]), hole[:1]), const)
    # the fill lies within the range of the known values
    assert out[hole == 1].min() >= image.min() and out[hole == 1].max() <= image.max()


def test_place_mask_avoids_lesion_and_stays_on_tissue():
    rng = np.random.default_rng(0)
    template = random_lesion_mask((48, 48), rng, min_radius=4, max_radius=6)
    avoid = np.zeros((48, 48), bool)
    avoid[:, :24] = True
    tissue = np.ones((48, 48), bool)
    for _ in range(5):
        placed = place_mask(template, avoid, tissue, rng)
        assert placed is not None
        assert not (placed & avoid).any()
        assert abs(int(placed.sum()) - int(template.sum())) <= 0.1 * template.sum()
    assert place_mask(template, np.ones((48, 48), bool), tissue, rng) is None


def test_harmonic_fill_reproduces_planes_and_keeps_known_pixels():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    plane = (0.1 + 0.02 * xx + 0.01 * yy)[None, None]  # discrete-harmonic: the exact solution
    hole = torch.zeros(1, 1, 32, 32)
    hole[:, :, 10:18, 9:17] = 1
    out = harmonic_fill(plane * (1 - hole), hole, iters=400)
    torch.testing.assert_close(out, plane, rtol=0, atol=1e-4)
    coarse_err = (coarse_fill(plane * (1 - hole), hole) - plane).abs().max()
    assert coarse_err > 1e-2  # push-pull alone is not exact: the sweeps do the work
    torch.testing.assert_close(harmonic_fill(plane, hole, iters=0), coarse_fill(plane, hole))
    image = torch.rand(2, 3, 32, 32)
    out = harmonic_fill(image, hole.expand(2, 1, 32, 32), iters=5)
    known = hole.expand(2, 3, 32, 32) == 0
    torch.testing.assert_close(out[known], image[known], rtol=0, atol=0)


def test_biharmonic_fill_reproduces_paraboloids_where_harmonic_fill_flattens():
    """x² + y² is biharmonic (Δ² = 0) but not harmonic: only the biharmonic fill recovers it."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    bowl = (0.2 + 4e-4 * ((xx - 13) ** 2 + (yy - 15) ** 2))[None, None]
    hole = torch.zeros(1, 1, 32, 32)
    hole[:, :, 9:19, 8:18] = 1
    known = bowl * (1 - hole)
    torch.testing.assert_close(biharmonic_fill(known, hole, iters=300), bowl, rtol=0, atol=1e-5)
    assert (harmonic_fill(known, hole, iters=2000) - bowl).abs().max() > 5e-3
    torch.testing.assert_close(biharmonic_fill(known, hole, iters=0), coarse_fill(known, hole))


def test_biharmonic_fill_matches_scikit_image_and_keeps_known_pixels():
    from skimage.restoration import inpaint_biharmonic

    rng = np.random.default_rng(0)
    from scipy import ndimage

    image = ndimage.gaussian_filter(rng.random((2, 40, 40)), (0, 3, 3))  # smooth, like anatomy
    holes = np.zeros((2, 40, 40), bool)
    holes[0, 12:22, 10:19] = True
    holes[1] = random_lesion_mask((40, 40), rng, min_radius=5, max_radius=7)
    x = torch.from_numpy(image.astype(np.float32))[:, None]
    h = torch.from_numpy(holes.astype(np.float32))[:, None]
    out = biharmonic_fill(x * (1 - h), h, iters=400)[:, 0].numpy()
    for i in range(2):  # holes away from the frame: the same energy, so the same solution
        expected = inpaint_biharmonic(image[i], holes[i])
        np.testing.assert_allclose(out[i][holes[i]], expected[holes[i]], atol=2e-4)
        np.testing.assert_array_equal(out[i][~holes[i]], image[i][~holes[i]].astype(np.float32))

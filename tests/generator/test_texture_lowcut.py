"""The learned texture's low band removed (``texture_lowcut_sigma``, issue 18): the prior alone
sets the fill's low frequencies, the texture energy still matches the ring."""

import numpy as np
import pytest
from scipy import ndimage

from generator.build import load_generator
from generator.compose import remove_low_band
from generator.masks import dilate


@pytest.mark.parametrize("period, passes", [(32, 1), (32, 2), (8, 2), (8, 3)])
def test_remove_low_band_is_the_gaussian_transfer_function_per_pass(period, passes):
    """On a full-image region a cosine is an eigenfunction: each pass multiplies its amplitude by
    1 − exp(−σ²ω²/2) (the Gaussian's transfer function; scipy's reflect boundary keeps a cosine
    sampled at pixel centres with a whole number of half periods exact). Fails for a missing or
    extra pass, a pass that adds the blur instead of subtracting it, or a different σ."""
    n, sigma = 128, 2.0
    omega = 2 * np.pi / period
    x = np.arange(n) + 0.5
    t = np.tile(np.cos(omega * x), (n, 1))
    out = remove_low_band(t, np.ones((n, n), bool), sigma, passes)
    kernel = ndimage.gaussian_filter1d(np.eye(1, 41, 20)[0], sigma)  # the sampled kernel scipy uses
    gain = 1 - float(np.sum(kernel * np.cos(omega * (np.arange(41) - 20))))
    assert gain == pytest.approx(1 - np.exp(-(sigma * omega) ** 2 / 2), abs=2e-3)
    np.testing.assert_allclose(out, gain**passes * t, atol=1e-6)


def test_remove_low_band_stays_inside_the_region():
    rng = np.random.default_rng(0)
    region = np.zeros((40, 40), bool)
    region[10:25, 12:30] = True
    out = remove_low_band(rng.standard_normal((40, 40)), region, 2.0, 2)
    assert np.all(out[~region] == 0) and np.abs(out[region]).mean() > 0.1


def test_lowcut_leaves_the_low_band_to_the_prior(tiny_pixel_dir):
    """A blobby learned residual (white noise blurred at σ 1.5 input px) leaks into what a σ = 2 blur
    sees even after texture_match's high-pass; with the low cut the blurred fill stays much
    nearer the prior's, while the fill is still as textured as the ring. The override changes the
    checkpoint hash; asking it of a non-pixel generator or with σ < 0 is an error naming it."""
    from skimage.restoration import inpaint_biharmonic

    from generator.scoring import texture_ratio_ring
    from shared.config import ConfigError

    gen = load_generator(tiny_pixel_dir, window="whole", texture_match=True)
    cut = load_generator(tiny_pixel_dir, window="whole", texture_match=True, texture_lowcut_sigma=2.0)
    assert (gen.texture_lowcut_sigma, cut.texture_lowcut_sigma) == (0.0, 2.0)
    assert cut.checkpoint_hash != gen.checkpoint_hash
    rng = np.random.default_rng(3)
    image = ndimage.gaussian_filter(np.clip(0.5 + 0.08 * rng.standard_normal((64, 64)), 0, 1), 0.7)
    image = image.astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[20:42, 18:44] = True
    region = dilate(mask, 2)
    noise = np.random.default_rng(4).standard_normal((32, 32))  # the tiny model's grid, ×2 up
    blobs = ndimage.gaussian_filter(noise, 0.75)

    def blobby(images, holes, gens, **k):
        out = gen.backend.coarse(images, holes).permute(0, 2, 3, 1).numpy()
        return out + 2.0 * blobs[None, :, :, None] * holes.permute(0, 2, 3, 1).numpy()

    gen.backend.fill = cut.backend.fill = blobby
    want = np.clip(inpaint_biharmonic(image.astype(np.float64), region), 0, 1)
    lo = lambda x: ndimage.gaussian_filter(x.astype(np.float64), 2.0)  # noqa: E731
    leaks = []
    for g in (gen, cut):
        out = g.generate([image], [mask], steps=1)[0][0].image
        assert np.array_equal(out[~region], image[~region])
        assert texture_ratio_ring(out, image, region) == pytest.approx(1.0, abs=0.02)
        leaks.append(np.sqrt(np.mean((lo(out) - lo(want))[region] ** 2)))
    assert leaks[1] < 0.6 * leaks[0]  # measured 0.50; no cut (or a pass adding the blur) >= 1
    with pytest.raises(ConfigError, match="pixel checkpoints only"):
        load_generator("some-org/some-inpainting-model", texture_lowcut_sigma=2.0)
    with pytest.raises(ValueError, match="texture_lowcut_sigma"):
        type(gen)(gen.backend, checkpoint_hash="x", texture_lowcut_sigma=-1.0)

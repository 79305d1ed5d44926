import numpy as np
import pytest

from generator.build import load_generator
from generator.masks import dilate
from generator.predictor import GenerationInputError
from shared.io import InputError

from .conftest import toy_pair


@pytest.fixture(scope="module")
def gen(tiny_pixel_dir):
    return load_generator(tiny_pixel_dir)


@pytest.mark.parametrize("rgb", [False, True])
@pytest.mark.parametrize("dilation_px", [0, 3])
def test_outside_dilated_mask_is_exact(gen, rgb, dilation_px):
    image, mask = toy_pair(45, 38, rgb=rgb)
    res = gen.generate([image], [mask], num_samples=2, steps=3, dilation_px=dilation_px)
    region = dilate(mask, dilation_px)
    for r in res[0]:
        assert r.image.shape == image.shape and r.image.dtype == np.float32
        assert np.array_equal(r.image[~region], image[~region])
        assert not np.array_equal(r.image[region], image[region])  # the lesion was replaced
        assert 0.0 <= r.image.min() and r.image.max() <= 1.0


def test_deterministic_per_seed_and_independent_of_batch(gen):
    a, ma = toy_pair(40, 36, seed=0)
    b, mb = toy_pair(33, 50, seed=1)
    both = gen.generate([a, b], [ma, mb], num_samples=2, seed=7, steps=3)
    alone = gen.generate([b], [mb], num_samples=2, seed=7, steps=3)
    assert [r.seed for r in both[1]] == [7, 8]
    for k in range(2):
        assert np.array_equal(both[1][k].image, alone[0][k].image)
    assert not np.array_equal(both[1][0].image, both[1][1].image)  # samples differ
    other = gen.generate([b], [mb], num_samples=1, seed=9, steps=3)
    assert not np.array_equal(other[0][0].image, alone[0][0].image)


def test_one_seed_per_image_equals_separate_calls_bit_for_bit(gen):
    """seed=[s_i]: image i, sample k uses s_i + k, exactly as a call of its own (the service
    batches requests that differ only in seed on this; batch_size 1 keeps rows bit-exact)."""
    a, ma = toy_pair(40, 36, seed=0)
    b, mb = toy_pair(40, 36, seed=1)
    both = gen.generate([a, b], [ma, mb], num_samples=2, seed=[7, 21], steps=3)
    for (img, m, s), got in zip([(a, ma, 7), (b, mb, 21)], both, strict=True):
        alone = gen.generate([img], [m], num_samples=2, seed=s, steps=3)[0]
        assert [r.seed for r in got] == [s, s + 1]
        assert all(np.array_equal(x.image, y.image) for x, y in zip(got, alone, strict=True))
    with pytest.raises(GenerationInputError, match="1 seeds for 2 images"):
        gen.generate([a, b], [ma, mb], seed=[7], steps=2)


def test_empty_mask_returns_input_unchanged(gen):
    image, _ = toy_pair()
    res = gen.generate([image], [np.zeros(image.shape, bool)], num_samples=1, steps=2)
    assert np.array_equal(res[0][0].image, image)


@pytest.mark.parametrize("method", ["diffusion", "biharmonic"])
def test_mask_that_leaves_no_context_is_refused_before_any_work(gen, method):
    """A dilated mask covering the whole image (scikit-image's solver fails on it with a numpy
    message) is a NoContextError naming the image and the dilation, for every method."""
    from generator.predictor import NoContextError

    image, _ = toy_pair()
    almost = np.ones(image.shape, bool)
    almost[0, 0] = False  # one free pixel, inside the 2-px dilation
    with pytest.raises(NoContextError, match="image 0: the mask dilated by 2 px covers the whole"):
        gen.generate([image], [almost], method=method, steps=1)
    free = np.ones(image.shape, bool)
    free[:, :4] = False  # a 4-px strip survives the dilation: fillable
    assert gen.generate([image], [free], method=method, steps=1)[0][0].image.shape == image.shape


def test_biharmonic_method_fills_smoothly(gen):
    image, mask = toy_pair()
    res = gen.generate([image], [mask], method="biharmonic", dilation_px=1)[0][0]
    region = dilate(mask, 1)
    assert res.method == "biharmonic"
    assert np.array_equal(res.image[~region], image[~region])
    assert res.image[region].mean() < 0.8  # the 0.9 blob is gone


def test_strength_below_one_stays_closer_to_input(gen):
    image, mask = toy_pair()
    full = gen.generate([image], [mask], steps=10, strength=1.0)[0][0].image
    weak = gen.generate([image], [mask], steps=10, strength=0.2)[0][0].image
    assert np.abs(weak - image)[mask].mean() < np.abs(full - image)[mask].mean()


@pytest.mark.parametrize(
    "kwargs, images, masks, match",
    [
        ({}, [np.zeros((8, 8), np.float32)], [np.zeros((8, 9), bool)], r"mask 0 is 9x8 but image is 8x8 \(width x height\)"),
        ({}, [np.full((8, 8), 2.0, np.float32)], [np.zeros((8, 8), bool)], "outside"),
        ({}, [np.zeros((8, 8), np.uint8)], [np.zeros((8, 8), bool)], "dtype"),
        ({}, [np.zeros((8, 8), np.float32)], [np.full((8, 8), 3)], "not binary"),
        ({"strength": 0.0}, [np.zeros((8, 8), np.float32)], [np.zeros((8, 8), bool)], "strength"),
        ({"method": "x"}, [np.zeros((8, 8), np.float32)], [np.zeros((8, 8), bool)], "method"),
        ({"dilation_px": -1}, [np.zeros((8, 8), np.float32)], [np.zeros((8, 8), bool)], "dilation"),
        ({}, [np.zeros((8, 8), np.float32)], [], "1 images but 0 masks"),
    ],
)
def test_bad_input_raises_named_value_error(gen, kwargs, images, masks, match):
    with pytest.raises(GenerationInputError, match=match) as err:
        gen.generate(images, masks, **kwargs)
    assert isinstance(err.value, InputError) and isinstance(err.value, ValueError)


def test_checkpoint_hash_tracks_weights(tiny_pixel_dir, tmp_path):
    import shutil

    g1 = load_generator(tiny_pixel_dir)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_pixel_dir, copy)
    assert load_generator(copy).checkpoint_hash == g1.checkpoint_hash
    cfg = copy / "generator_config.json"
    cfg.write_text(cfg.read_text().replace('"eta": 1.0', '"eta": 0.5'))
    assert load_generator(copy).checkpoint_hash != g1.checkpoint_hash


def test_embedded_default_loads():
    gen = load_generator()
    assert gen.backend.name == "pixel" and len(gen.checkpoint_hash) == 64
    # the committed default was trained on windows (issue 18) and is run on them at native scale,
    # a zoomed-out window's residual on an exact native biharmonic fill (session 12)
    assert gen.window == "lesion" and gen.backend.max_side == 2 * gen.backend.resolution
    assert gen.native_coarse


def test_ancestral_sampling_is_finite_for_any_step_count(gen):
    image, mask = toy_pair(32, 32)
    for steps in (1, 5, 7, 20):
        out = gen.generate([image], [mask], steps=steps)[0][0].image
        assert np.isfinite(out).all(), steps


def test_lesion_window_rule():
    from generator.predictor import lesion_window

    region = np.zeros((200, 160), bool)
    region[50:60, 140:152] = True  # box 10 x 12 near the right edge
    top, left, side = lesion_window(region, min_side=32, context=4.0)
    assert side == 48  # ceil(4 * 12)
    assert (top, left) == (55 - 24, 160 - 48)  # centred on the box, shifted inside the image
    assert lesion_window(region, min_side=64, context=4.0)[2] == 64  # never below the grid
    assert lesion_window(region, min_side=32, context=14.0) is None  # 168 >= short side 160
    assert lesion_window(np.zeros((9, 9), bool), min_side=4, context=2.0) is None


def test_grid_side_rule():
    from generator.predictor import grid_side

    assert grid_side(20, resolution=32, max_side=64) == 32  # small views: the backend's own grid
    assert grid_side(32, resolution=32, max_side=64) == 32
    assert grid_side(42, resolution=32, max_side=64) == 48  # own scale, rounded up to 8
    assert grid_side(64, resolution=32, max_side=64) == 64
    assert grid_side(300, resolution=32, max_side=64) == 64  # zoomed out beyond max_side
    assert grid_side(300, resolution=512, max_side=512) == 512  # a fixed-size backend (SD)


def test_lesion_window_fill_equals_the_whole_path_on_the_window_crop(tiny_pixel_dir):
    """window='lesion' = the same generator run on the window's crop alone (where the window is
    the whole crop), pasted into the image: the backend fills the lesion on a grid of the window's
    own size (42 px → 48, not the model's 32); outside the dilated mask, exact."""
    from generator.predictor import lesion_window

    windowed = load_generator(tiny_pixel_dir, window="lesion", window_context=3.0)
    seen = []
    fill = windowed.backend.fill
    windowed.backend.fill = lambda images, *a, **k: seen.append(images.shape[-1]) or fill(images, *a, **k)
    image, _ = toy_pair(120, 140, seed=2)
    mask = np.zeros(image.shape, bool)
    mask[60:70, 80:88] = True
    got = windowed.generate([image], [mask], num_samples=2, seed=5, steps=3)[0]
    assert seen == [48, 48]  # window 3 × 14 = 42 px at its own scale, rounded up to 48
    region = dilate(mask, 2)
    top, left, side = lesion_window(region, min_side=32, context=3.0)
    crop = (slice(top, top + side), slice(left, left + side))
    ref = windowed.generate([image[crop]], [mask[crop]], num_samples=2, seed=5, steps=3)[0]
    for g, r in zip(got, ref, strict=True):
        assert np.array_equal(g.image[crop], r.image)
        assert np.array_equal(g.image[~region], image[~region])
        assert not np.array_equal(g.image[region], image[region])
    whole = load_generator(tiny_pixel_dir)  # the whole-image path stays at the model's grid
    seen.clear()
    whole.backend.fill = windowed.backend.fill
    whole.generate([image], [mask], steps=2)
    assert seen == [32]
    with pytest.raises(ValueError, match="window must be one of"):
        load_generator(tiny_pixel_dir, window="tile")


def test_checkpoint_says_how_it_is_run(tiny_pixel_dir, tmp_path):
    """A window-trained checkpoint loads in lesion-window mode, an older one as a whole image; an
    explicit ``window`` wins."""
    import json
    import shutil

    from generator.build import CONFIG_NAME

    assert load_generator(tiny_pixel_dir).window == "whole"
    ckpt = tmp_path / "win"
    shutil.copytree(tiny_pixel_dir, ckpt)
    meta = json.loads((ckpt / CONFIG_NAME).read_text())
    meta["train"] = {"data": {"window_p": 0.75}}
    (ckpt / CONFIG_NAME).write_text(json.dumps(meta))
    assert load_generator(ckpt).window == "lesion"
    assert load_generator(ckpt, window="whole").window == "whole"
    meta["inference"] = {"window": "whole"}
    (ckpt / CONFIG_NAME).write_text(json.dumps(meta))
    assert load_generator(ckpt).window == "whole"
    # the native coarse fill: off unless the checkpoint says so; an explicit argument wins
    assert not load_generator(ckpt).native_coarse
    meta["inference"] = {"window": "lesion", "native_coarse": True}
    (ckpt / CONFIG_NAME).write_text(json.dumps(meta))
    assert load_generator(ckpt).native_coarse
    assert not load_generator(ckpt, native_coarse=False).native_coarse
    assert not load_generator(tiny_pixel_dir).native_coarse


def test_native_coarse_puts_the_residual_on_a_full_resolution_coarse_fill(tiny_pixel_dir):
    """With a backend whose fill is its own coarse channel (residual 0), the native-coarse
    mode returns scikit-image's exact biharmonic fill at the input's resolution; the default
    returns the grid's coarse fill upsampled, which differs on a zoomed-out view."""
    from skimage.restoration import inpaint_biharmonic

    gen = load_generator(tiny_pixel_dir, window="whole")
    b = gen.backend
    b.fill = lambda images, holes, gens, **k: b.coarse(images, holes).permute(0, 2, 3, 1).numpy()
    image, _ = toy_pair(96, 96, seed=4)
    mask = np.zeros(image.shape, bool)
    mask[40:52, 30:50] = True
    region = dilate(mask, 2)
    plain = gen.generate([image], [mask], steps=1)[0][0].image
    gen.native_coarse = True
    native = gen.generate([image], [mask], steps=1)[0][0].image
    want = inpaint_biharmonic(image.astype(np.float64), region)
    np.testing.assert_allclose(native[region], np.clip(want, 0, 1)[region], atol=1e-5)
    assert np.array_equal(native[~region], image[~region])
    assert np.abs(plain[region] - native[region]).max() > 1e-3  # 96 → 32 grid: not the same


def test_texture_match_keeps_the_biharmonic_low_pass_and_the_ring_texture(tiny_pixel_dir):
    """texture_match: with no learned residual the fill is scikit-image's exact biharmonic fill;
    with a residual, only its high-pass is added, scaled so the fill is as textured as the ring
    (texture_ratio_ring = 1 up to clipping), and outside the region the input stays exact."""
    from scipy import ndimage
    from skimage.restoration import inpaint_biharmonic

    from generator.scoring import texture_ratio_ring

    gen = load_generator(tiny_pixel_dir, window="whole", texture_match=True)
    assert gen.texture_match and not load_generator(tiny_pixel_dir).texture_match
    b = gen.backend
    coarse_only = lambda images, holes, gens, **k: b.coarse(images, holes).permute(0, 2, 3, 1).numpy()  # noqa: E731
    rng = np.random.default_rng(3)
    image = np.clip(0.5 + 0.08 * rng.standard_normal((64, 64)), 0, 1).astype(np.float32)
    image = ndimage.gaussian_filter(image, 0.7).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[24:38, 20:40] = True
    region = dilate(mask, 2)
    b.fill = coarse_only
    flat = gen.generate([image], [mask], steps=1)[0][0].image
    want = np.clip(inpaint_biharmonic(image.astype(np.float64), region), 0, 1)
    np.testing.assert_allclose(flat[region], want[region], atol=1e-5)
    assert texture_ratio_ring(flat, image, region) < 0.2  # biharmonic alone is smooth

    def noisy(images, holes, gens, **k):
        out = coarse_only(images, holes, gens)
        return out + 0.3 * rng.standard_normal(out.shape) * holes.permute(0, 2, 3, 1).numpy()

    b.fill = noisy
    out = gen.generate([image], [mask], steps=1)[0][0].image
    assert np.array_equal(out[~region], image[~region])
    assert texture_ratio_ring(out, image, region) == pytest.approx(1.0, abs=0.02)
    # the low frequencies stay the biharmonic fill's: the added part is high-pass
    lo = lambda x: ndimage.gaussian_filter(x.astype(np.float64), 2.0)  # noqa: E731
    assert np.abs(lo(out) - lo(want))[region].mean() < 0.25 * np.abs(out - want)[region].mean()
    gen.texture_match = False  # the full residual: far more than the ring's texture
    assert texture_ratio_ring(gen.generate([image], [mask], steps=1)[0][0].image, image, region) > 3


def test_composition_overrides_change_the_checkpoint_hash(tiny_pixel_dir):
    """Stores and caches key on checkpoint_hash: an override that changes the outputs must change
    it, one that repeats what the checkpoint says must not."""
    base = load_generator(tiny_pixel_dir)
    same = load_generator(tiny_pixel_dir, window=base.window, native_coarse=base.native_coarse,
                          texture_match=base.texture_match)
    assert same.checkpoint_hash == base.checkpoint_hash
    hashes = {base.checkpoint_hash,
              load_generator(tiny_pixel_dir, texture_match=True).checkpoint_hash,
              load_generator(tiny_pixel_dir, native_coarse=True).checkpoint_hash,
              load_generator(tiny_pixel_dir, window="lesion" if base.window == "whole" else "whole")
              .checkpoint_hash}
    assert len(hashes) == 4


def test_texture_match_on_a_non_pixel_generator_is_a_config_error():
    """SD-inpaint has no coarse channel to compose on: asking for the composition is an error
    naming the problem (not silently ignored, and before any hub lookup)."""
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="pixel checkpoints only"):
        load_generator("some-org/some-inpainting-model", texture_match=True)


def test_coarse_prior_kriging_is_what_texture_match_composes_on(tiny_pixel_dir):
    """coarse_prior="kriging": with no learned residual the texture-matched fill is
    generator.kriging's fill exactly; the override changes the hash, repeating the checkpoint's
    own prior does not; a misspelt prior is a one-line config error; method "kriging" is the
    classical fill itself."""
    from scipy import ndimage

    from generator.kriging import prior_fill, stationary_fill
    from shared.config import ConfigError

    gen = load_generator(tiny_pixel_dir, window="whole", texture_match=True, coarse_prior="kriging")
    assert gen.coarse_prior == "kriging"
    b = gen.backend
    b.fill = lambda images, holes, gens, **k: b.coarse(images, holes).permute(0, 2, 3, 1).numpy()
    rng = np.random.default_rng(5)
    image = np.clip(0.5 + 0.6 * ndimage.gaussian_filter(rng.standard_normal((64, 64)), 2.0), 0, 1)
    image = image.astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[20:36, 22:40] = True
    region = dilate(mask, 2)
    assert stationary_fill(image.astype(np.float64), region)[1] != "biharmonic"
    want = np.clip(prior_fill(image.astype(np.float64), region, "kriging"), 0, 1)
    out = gen.generate([image], [mask], steps=1)[0][0].image
    np.testing.assert_allclose(out[region], want[region], atol=1e-5)
    classical = gen.generate([image], [mask], method="kriging")[0][0].image
    np.testing.assert_allclose(classical[region], want[region], atol=1e-6)
    # the stacked prior: the same composition on its ring-fitted mix (not the one-best fill)
    mixed = np.clip(prior_fill(image.astype(np.float64), region, "stacked"), 0, 1)
    assert np.abs(mixed - want)[region].max() > 1e-3
    gen.coarse_prior = "stacked"
    np.testing.assert_allclose(gen.generate([image], [mask], steps=1)[0][0].image[region], mixed[region], atol=1e-5)
    classical = gen.generate([image], [mask], method="stacked")[0][0].image
    np.testing.assert_allclose(classical[region], mixed[region], atol=1e-6)
    plain = load_generator(tiny_pixel_dir)
    assert load_generator(tiny_pixel_dir, coarse_prior="biharmonic").checkpoint_hash == plain.checkpoint_hash
    kriged = load_generator(tiny_pixel_dir, coarse_prior="kriging").checkpoint_hash
    assert kriged != plain.checkpoint_hash
    # the kriging rule is part of the outputs, so of the hash (stale caches are redone)
    import generator.kriging as kriging

    stacked = load_generator(tiny_pixel_dir, coarse_prior="stacked").checkpoint_hash
    assert stacked not in (kriged, plain.checkpoint_hash)
    rule, stack = kriging.KRIGING_RULE, kriging.STACK_RULE
    try:
        kriging.KRIGING_RULE = rule + " (changed)"
        assert load_generator(tiny_pixel_dir, coarse_prior="kriging").checkpoint_hash != kriged
        assert load_generator(tiny_pixel_dir, coarse_prior="stacked").checkpoint_hash != stacked
        kriging.KRIGING_RULE, kriging.STACK_RULE = rule, stack + " (changed)"
        assert load_generator(tiny_pixel_dir, coarse_prior="kriging").checkpoint_hash == kriged
        assert load_generator(tiny_pixel_dir, coarse_prior="stacked").checkpoint_hash != stacked
    finally:
        kriging.KRIGING_RULE, kriging.STACK_RULE = rule, stack
    with pytest.raises(ConfigError, match="coarse prior 'krig'"):
        load_generator(tiny_pixel_dir, coarse_prior="krig")
    with pytest.raises(ConfigError, match="pixel checkpoints only"):
        load_generator("some-org/some-inpainting-model", coarse_prior="kriging")

"""See-through conditioning: the input's pixels inside the hole as a fifth UNet channel."""

import dataclasses

import numpy as np
import pytest
import torch

from generator import train
from generator.build import load_generator, save_pixel_checkpoint
from generator.data import DataConfig, ReferenceDataset, RegionWeights, load_records
from generator.modeling import pixel_unet

from .conftest import TINY, toy_pair

SEE = dataclasses.replace(TINY, see_through=True)


def _batch(b=3, side=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 1, side, side, generator=g)
    hole = torch.zeros(b, 1, side, side)
    hole[:, :, 10:20, 12:22] = 1.0
    return image, hole


def test_see_through_channel_is_the_holes_residual_and_visible_hides_it():
    image, hole = _batch()
    cond = pixel_unet.condition(image, hole, SEE)
    assert cond.shape[1] == 4 and pixel_unet.build_unet(SEE).config.in_channels == 5
    plain = pixel_unet.condition(image, hole, TINY)
    torch.testing.assert_close(cond[:, :3], plain)  # the first three channels are unchanged
    # On a healthy hole (target = the image) the see-through channel is exactly r0, the target.
    torch.testing.assert_close(cond[:, 3:4], pixel_unet.residual_target(image, cond, SEE))
    assert (cond[:, 3][hole[:, 0] == 0] == 0).all()
    visible = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1, 1)
    hidden = pixel_unet.condition(image, hole, SEE, visible)
    assert (hidden[1, 3] == 0).all()
    torch.testing.assert_close(hidden[[0, 2]], cond[[0, 2]])


def test_high_pass_see_through_is_the_input_minus_its_gaussian_blur():
    from scipy import ndimage

    image, hole = _batch(b=2)
    cfg = dataclasses.replace(SEE, see_through_sigma=1.0)
    seen = pixel_unet.condition(image, hole, cfg)[:, 3].double().numpy()
    x = image[:, 0].double().numpy()
    # torchvision's reflect padding is scipy's "mirror" (edge not repeated); kernel ±3σ
    low = np.stack([ndimage.gaussian_filter(xi, 1.0, mode="mirror", truncate=3.0) for xi in x])
    expected = cfg.residual_scale * (x - low) * hole[:, 0].numpy()
    np.testing.assert_allclose(seen, expected, atol=1e-5)
    # a constant-plus-linear-ramp density (what a smooth lesion mostly is) leaves no high-pass
    ramp = torch.linspace(0.2, 0.6, 32).view(1, 1, 1, 32).expand(2, 1, 32, 32).contiguous()
    inner = pixel_unet.condition(ramp, hole, cfg)[:, 3, 4:-4, 4:-4]
    torch.testing.assert_close(inner, torch.zeros_like(inner), atol=1e-5, rtol=0)


def test_widened_unet_computes_what_its_four_channel_source_does():
    torch.manual_seed(0)
    source = pixel_unet.build_unet(TINY).eval()
    wide = pixel_unet.widen_from(pixel_unet.build_unet(SEE), source).eval()
    image, hole = _batch()
    x_t = torch.randn(3, 1, 32, 32)
    t = torch.tensor([5, 50, 95])
    cond = pixel_unet.condition(image, hole, SEE)
    with torch.no_grad():
        expected = source(pixel_unet.model_input(x_t, cond[:, :3]), t).sample
        got = wide(pixel_unet.model_input(x_t, cond), t).sample
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cannot widen"):
        pixel_unet.widen_from(pixel_unet.build_unet(TINY), wide)


def test_dataset_marks_supervised_samples_visible_and_self_supervised_hidden(small_bench):
    recs = load_records(small_bench, domains=("breast_us",), split="train")
    tumor = [r for r in recs if r.mask.any()]
    always_self = ReferenceDataset(tumor, DataConfig(p_self_supervised=1.0), RegionWeights(), seed=0)
    never_self = ReferenceDataset(tumor, DataConfig(p_self_supervised=0.0), RegionWeights(), seed=0)
    assert float(never_self[0]["visible"]) == 1.0
    # a self-supervised sample's target is its own image: showing the hole would give it away
    s = always_self[0]
    if float(s["visible"]) == 0.0:
        np.testing.assert_array_equal(s["image"].numpy(), s["target"].numpy())
    normals = [r for r in recs if not r.mask.any()]
    if normals:
        assert float(ReferenceDataset(normals, DataConfig(), RegionWeights(), seed=0)[0]["visible"]) == 0.0


def _cfg(tmp_path, small_bench, init_from, extra=()):
    return [
        "--stage", "reference", f"output_dir={tmp_path / 'run'}", f"data.root={small_bench}",
        "data.held_out_domain=retina", "model.resolution=32", "model.block_out_channels=[8, 16]",
        "model.attention_levels=[]", "model.norm_num_groups=4", "model.num_train_timesteps=100",
        "model.see_through=true", f"init_from={init_from}", "optim.steps=1", "optim.batch_size=2",
        "optim.checkpoint_every=5", "optim.warmup_steps=1", "optim.lr=1e-12", *extra,
    ]


def test_fine_tune_from_a_four_channel_checkpoint_starts_where_it_was(tmp_path, small_bench):
    torch.manual_seed(0)
    src = save_pixel_checkpoint(tmp_path / "src", pixel_unet.build_unet(TINY), TINY, fp16=False)
    train.main(_cfg(tmp_path, small_bench, src))  # lr ~0: the export is the widened source
    image, mask = toy_pair(32, 32)
    before = load_generator(src).generate([image], [mask], seed=3, steps=4)[0][0].image
    after_gen = load_generator(tmp_path / "run" / "final")
    assert after_gen.backend.cfg.see_through
    after = after_gen.generate([image], [mask], seed=3, steps=4)[0][0].image
    # the training export stores float16 weights: equal up to that rounding
    np.testing.assert_allclose(after, before, atol=2e-3)
    with pytest.raises(ValueError, match="differs from the run's"):
        train.main(_cfg(tmp_path, small_bench, src, ["model.residual_scale=2.0"]))


# --- see-through sampling: keep the input's high-pass in the hole (no model change) -------------


def _checker(side: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return ((yy + xx) % 2 * 2 - 1).float().view(1, 1, side, side)  # ±1 at the Nyquist frequency


def test_keep_high_pass_takes_the_fine_structure_from_seen_and_the_rest_from_r0():
    side, sigma = 32, 1.5
    hole = torch.zeros(1, 1, side, side)
    hole[..., 6:26, 6:26] = 1.0
    torch.manual_seed(0)
    r0 = pixel_unet.gaussian_blur(torch.randn(1, 1, side, side), 3.0) * hole  # the model's guess
    # seen = r0 + a constant "lesion" density + Nyquist "anatomy" the model did not predict
    anatomy = 0.3 * _checker(side)
    seen = (r0 + 0.8 + anatomy) * hole
    out = pixel_unet.keep_high_pass(r0, pixel_unet.hole_high_pass(seen, hole, sigma), hole, sigma)
    inner = (..., slice(12, 20), slice(12, 20))  # ≥ 3σ from the hole's edge
    # the constant density is low-frequency: dropped; the Nyquist pattern passes (G_σ kills it)
    torch.testing.assert_close(out[inner], (r0 + anatomy)[inner], atol=1e-4, rtol=0)
    assert (out[hole == 0] == 0).all()
    # a prediction that already matches the measurement is left exactly as it is
    same = pixel_unet.keep_high_pass(r0, pixel_unet.hole_high_pass(r0, hole, sigma), hole, sigma)
    torch.testing.assert_close(same, r0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_clean_estimate_matches_diffusers_ddim_and_inverts(prediction_type):
    cfg = dataclasses.replace(TINY, prediction_type=prediction_type)
    scheduler = pixel_unet.build_scheduler(cfg)
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    g = torch.Generator().manual_seed(1)
    x_t, out = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    a = scheduler.alphas_cumprod[t]
    x0 = pixel_unet._clean_from_output(out, x_t, a, prediction_type)
    ref = scheduler.step(out, t, x_t, eta=0.0).pred_original_sample
    torch.testing.assert_close(x0, ref)
    torch.testing.assert_close(pixel_unet._output_from_clean(x0, x_t, a, prediction_type), out)


def test_generator_with_see_through_keeps_the_inputs_fine_structure_and_adds_no_density(tiny_pixel_dir):
    gen = load_generator(tiny_pixel_dir)
    side = 32  # the tiny checkpoint's resolution: no resizing
    mask = np.zeros((side, side), bool)
    mask[6:26, 6:26] = True
    checker = _checker(side)[0, 0].numpy()
    image = (0.5 + 0.04 * checker + 0.15 * mask).astype(np.float32)  # anatomy under a density

    def nyquist(x: np.ndarray) -> float:  # the checkerboard's amplitude deep inside the hole
        return float((x * checker)[12:20, 12:20].mean())

    kept = gen.generate([image], [mask], steps=5, dilation_px=0, see_through_px=1.5)[0][0].image
    plain = gen.generate([image], [mask], steps=5, dilation_px=0)[0][0].image
    assert nyquist(kept) == pytest.approx(0.04, abs=0.004)
    assert abs(nyquist(plain) - 0.04) > 0.01  # the random model alone does not reproduce it
    assert np.array_equal(kept[~mask], image[~mask])
    # the lesion only added density: the see-through fill is nowhere brighter than the input,
    # even where the context is brighter than the hole and a free fill goes above it
    dark = (0.5 + 0.04 * checker - 0.15 * mask).astype(np.float32)
    kept_dark = gen.generate([dark], [mask], steps=5, dilation_px=0, see_through_px=1.5)[0][0].image
    plain_dark = gen.generate([dark], [mask], steps=5, dilation_px=0)[0][0].image
    assert (kept[mask] <= image[mask] + 1e-6).all() and (kept_dark[mask] <= dark[mask] + 1e-6).all()
    assert (plain_dark[mask] > dark[mask] + 0.05).mean() > 0.5
    again = gen.generate([image], [mask], steps=5, dilation_px=0, see_through_px=1.5)[0][0].image
    assert np.array_equal(kept, again)


def test_see_through_px_is_checked(tiny_pixel_dir):
    from generator.predictor import GenerationInputError

    gen = load_generator(tiny_pixel_dir)
    image, mask = toy_pair(32, 32)
    for bad in (-1.0, float("nan")):
        with pytest.raises(GenerationInputError, match="see_through_px"):
            gen.generate([image], [mask], steps=2, see_through_px=bad)
    with pytest.raises(GenerationInputError, match="see_through_px needs method 'diffusion'"):
        gen.generate([image], [mask], method="biharmonic", see_through_px=1.0)
    with pytest.raises(GenerationInputError, match="too wide for the model's 32-pixel grid"):
        gen.generate([image], [mask], steps=2, see_through_px=11.0)
    gen.generate([image], [mask], steps=2, see_through_px=10.0)  # the widest that fits 32 px


def test_see_through_keeps_fine_structure_finer_than_the_models_grid(tiny_pixel_dir):
    gen = load_generator(tiny_pixel_dir)  # runs at 32 px; the input is 64 px
    side = 64
    mask = np.zeros((side, side), bool)
    mask[12:52, 12:52] = True
    checker = _checker(side)[0, 0].numpy()  # invisible at 32 px (antialiased downsizing)
    image = (0.5 + 0.04 * checker + 0.15 * mask).astype(np.float32)

    def nyquist(x: np.ndarray) -> float:
        return float((x * checker)[24:40, 24:40].mean())

    kept = gen.generate([image], [mask], steps=5, dilation_px=0, see_through_px=1.5)[0][0].image
    plain = gen.generate([image], [mask], steps=5, dilation_px=0)[0][0].image
    assert nyquist(kept) == pytest.approx(0.04, abs=0.004) and abs(nyquist(plain)) < 0.004
    assert (kept[mask] <= image[mask] + 1e-6).all()
    rgb = np.repeat(image[..., None], 3, axis=2)
    kept_rgb = gen.generate([rgb], [mask], steps=5, dilation_px=0, see_through_px=1.5)[0][0].image
    np.testing.assert_allclose(kept_rgb.mean(axis=2), kept, atol=1e-5)  # gray RGB = gray

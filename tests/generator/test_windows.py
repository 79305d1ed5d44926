"""Window training data (generator.windows) and the source split (shared.benchmark.sources)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from generator.windows import (
    BenchmarkWindows,
    Mixed,
    WindowConfig,
    WindowDataset,
    draw_window,
    window_hole,
)
from shared.benchmark.sources import EXTRA_TRAIN, HELD_OUT, SOURCES, TRAIN, check_training_sources

PLAIN = WindowConfig(rotate=True, elastic_p=0.0, noise_p=0.0, blur_p=0.0, min_tissue=0.0, min_std=0.0)


def test_sources_are_split_and_held_out_ones_are_refused():
    assert set(TRAIN).isdisjoint(HELD_OUT) and set(TRAIN) | set(EXTRA_TRAIN) | set(HELD_OUT) == set(SOURCES)
    assert set(EXTRA_TRAIN).isdisjoint(TRAIN) and set(EXTRA_TRAIN).isdisjoint(HELD_OUT)
    check_training_sources(EXTRA_TRAIN)
    assert {"chest_xray", "abdomen_ct", "pelvis_us", "emri_head_mr", "abdomen_mr"} <= set(HELD_OUT)
    check_training_sources(TRAIN)
    with pytest.raises(ValueError, match="held-out sources"):
        check_training_sources(("mni_brain", "abdomen_ct"))
    with pytest.raises(ValueError, match="held-out sources"):
        WindowDataset(replace(PLAIN, sources=("chest_xray",)))
    with pytest.raises(ValueError, match="unknown anatomy sources"):
        check_training_sources(("mni",))


@pytest.mark.parametrize("zoom", [1.0, 2.5])
def test_draw_window_samples_at_the_drawn_zoom_and_any_angle(zoom):
    """On a linear ramp f = c + a·y + b·x, bilinear resampling (and the anti-aliasing blur) is exact,
    so the window's gradient has norm zoom·|(a, b)| whatever the angle; a wrong zoom or a scaled
    rotation fails."""
    a, b = 0.001, 0.0005
    yy, xx = np.mgrid[0:400, 0:400].astype(np.float32)
    ramp = 0.2 + a * yy + b * xx
    tissue = np.zeros(ramp.shape, bool)
    tissue[150:250, 150:250] = True  # centres away from the border: no reflection in the window
    cfg = replace(PLAIN, size=32, zoom=(zoom, zoom), contrast=(1.0, 1.0), gamma=(1.0, 1.0))
    for seed in range(4):
        pix, t = draw_window(ramp, tissue, cfg, np.random.default_rng(seed))
        assert pix.shape == (32, 32) and t.shape == (32, 32)
        gy = np.diff(pix, axis=0)[:, :-1].astype(np.float64)
        gx = np.diff(pix, axis=1)[:-1, :].astype(np.float64)
        np.testing.assert_allclose(np.hypot(gy, gx), zoom * np.hypot(a, b), rtol=2e-3)


def test_window_hole_spans_about_one_over_context_of_the_window():
    rng = np.random.default_rng(0)
    cfg = replace(PLAIN, size=64, context=(4.0, 4.0))
    tissue = np.ones((64, 64), bool)
    for _ in range(10):
        hole = window_hole(tissue, cfg, rng)
        ys, xs = np.nonzero(hole)
        extent = max(np.ptp(ys), np.ptp(xs)) + 1
        assert 64 / 4 * 0.6 <= extent <= 64 / 4 * 1.8  # diameter 16 px, perturbed boundary


def test_window_dataset_items_are_reference_shaped():
    ds = WindowDataset(replace(WindowConfig(), sources=("natural_images",), size=32), seed=1)
    item = ds[0]
    assert {k: tuple(v.shape) for k, v in item.items()} == {
        "image": (1, 32, 32), "hole": (1, 32, 32), "target": (1, 32, 32), "weight": (1, 32, 32),
        "visible": (1, 1, 1)}
    assert torch.equal(item["image"], item["target"]) and item["visible"].item() == 0
    assert set(torch.unique(item["hole"]).tolist()) == {0.0, 1.0}
    assert torch.equal(item["weight"], torch.where(item["hole"] > 0, 1.0, 0.05))


def test_benchmark_windows_show_the_inference_window():
    """A 128² item with a 10-px hole at context 4 becomes its 64² window (the rule's minimum side),
    cropped, not resized: the pixels equal the crop exactly."""
    img = torch.rand(1, 128, 128)
    hole = torch.zeros(1, 128, 128)
    hole[:, 70:80, 20:30] = 1
    base = [{"image": img, "hole": hole, "target": img, "weight": hole, "visible": torch.ones(1, 1, 1)}]
    ds = BenchmarkWindows(base, replace(PLAIN, size=64, context=(4.0, 4.0)))
    out = ds[0]
    top, left = 75 - 32, 0  # centred on the box (row 75), shifted inside the image (col 25 − 32 < 0)
    assert torch.equal(out["image"], img[:, top : top + 64, left : left + 64])
    assert out["hole"].sum() == 100
    small = BenchmarkWindows(base, replace(PLAIN, size=32, context=(20.0, 20.0)))[0]
    assert small["image"].shape == (1, 32, 32)  # window ≥ image: the whole image, resized


def test_mixed_draws_both_in_proportion():
    first = [{"k": 0}] * 3
    second = [{"k": 1}] * 5
    ds = Mixed(first, second, 0.75, seed=0)
    share = np.mean([ds[i]["k"] == 0 for i in range(2000)])
    assert 0.72 < share < 0.78

"""Region-conditioned lesion scorers: ring standardisation, region pooling, polarity, examples."""

from __future__ import annotations

import numpy as np
import torch
from torch.testing import assert_close

from generator.masks import dilate
from generator.modeling.scorers import (
    SCORER_CONFIGS,
    build_scorer,
    dilate_region,
    ring_standardise,
)
from generator.train_scorers import ScorerTrainConfig, lesion_examples


def _image_and_region(side: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = 0.2 + 0.6 * torch.rand((2, 1, side, side), generator=g)  # ring σ ≈ 0.17
    region = torch.zeros(2, 1, side, side)
    region[0, :, 10:20, 12:22] = 1
    region[1, :, 25:33, 5:15] = 1
    return image, region


def test_dilate_region_is_square_dilation():
    region = torch.zeros(1, 1, 9, 9)
    region[0, 0, 4, 4] = 1
    out = dilate_region(region, 2)
    assert out.sum() == 25 and out[0, 0, 2:7, 2:7].min() == 1
    assert_close(dilate_region(region, 0), region)


def test_ring_standardisation_is_invariant_to_affine_intensity_changes():
    image, region = _image_and_region()
    z = ring_standardise(image, region, 6)
    for a, b in ((3.0, -0.7), (0.5, 0.2), (1.0, 0.25)):
        assert_close(ring_standardise(a * image + b, region, 6), z, atol=1e-5, rtol=1e-5)
    # the ring statistics: mean 0 and std 1 / z_clip over the ring (no clipping here)
    inside = region > 0.5
    ring = (dilate_region(region, 6) > 0.5) & ~inside
    for i in range(2):
        zr = z[i][ring[i]] * 5.0
        assert abs(float(zr.mean())) < 1e-4 and abs(float(zr.std(unbiased=False)) - 1) < 1e-4
    assert float(z.abs().max()) <= 1.0


def test_ring_standardisation_empty_region_uses_the_whole_image():
    image, _ = _image_and_region()
    z = ring_standardise(image, torch.zeros_like(image), 6, z_clip=100.0) * 100.0
    assert_close(z.mean((2, 3)), torch.zeros(2, 1), atol=1e-4, rtol=0)
    # a flat image: σ is floored, no division by zero
    flat = ring_standardise(torch.full((1, 1, 16, 16), 0.3), torch.zeros(1, 1, 16, 16), 2)
    assert torch.isfinite(flat).all() and flat.abs().max() < 1e-5


def test_lesion_scorers_are_region_conditioned_and_polarity_invariant():
    torch.manual_seed(0)
    for kind in ("lesion", "audit"):
        cfg = SCORER_CONFIGS[kind]
        assert cfg.in_channels == 2 and cfg.ring_px > 0 and cfg.region_pool
        model = build_scorer(kind).eval()
        image, region = _image_and_region(cfg.resolution)
        x = torch.cat([image, region], 1)
        with torch.no_grad():
            out = model(x)
            # polarity: the image inverted gives the same logits
            assert_close(model(torch.cat([1 - image, region], 1)), out)
            # the region channel is read: moving the region changes the logits
            moved = torch.cat([image, region.roll(9, dims=-1)], 1)
            assert (model(moved) - out).abs().max() > 1e-4


def test_region_pool_takes_the_max_over_the_cells_the_region_touches():
    model = build_scorer("lesion").eval()
    side = model.cfg.resolution
    region = torch.zeros(3, 1, side, side)
    region[0, :, :8, :8] = 1  # top-left cell of the 4×4 map only
    region[1, :, 20:40, 20:40] = 1  # cells (1..2, 1..2)
    x = torch.cat([torch.rand(3, 1, side, side), region], 1)
    m = torch.arange(16.0).reshape(1, 4, 4).repeat(3, 1, 1)
    assert_close(model.pool(m, x), torch.tensor([0.0, 10.0, 15.0]))  # empty region → all cells


def test_lesion_examples_labels_and_regions():
    rng = np.random.default_rng(0)
    side = 32
    yy, xx = np.mgrid[:side, :side]
    masks = [(yy - 10) ** 2 + (xx - 10) ** 2 <= 9, (yy - 20) ** 2 + (xx - 18) ** 2 <= 16]
    gts = [np.full((side, side), 0.5, np.float32) for _ in masks]
    pos = [np.where(m, 0.2, g).astype(np.float32) for m, g in zip(masks, gts, strict=True)]
    normal = np.full((side, side), 0.6, np.float32)
    cfg = ScorerTrainConfig(dilation_px=2, normal_regions=3)
    holes = [dilate(m, 2) for m in masks] + [None]
    images, regions, lesion, labels, bases = lesion_examples(
        cfg, pos, masks, gts, gts + [normal], holes, rng)
    assert labels.count(1.0) == 2 and len(labels) == len(images) == len(regions) == len(bases)
    for i, y in enumerate(labels):
        assert regions[i].any()
        if y == 1.0:  # positive: its dilated mask as region, the GT negative as base
            j = next(k for k, p in enumerate(pos) if p is images[i])
            assert (regions[i] == dilate(masks[j], 2)).all() and (lesion[i] == masks[j]).all()
            assert bases[i] is gts[j]
            # its GT negative with the same region is a 0, right after it
            assert images[i + 1] is gts[j] and (regions[i + 1] == regions[i]).all()
            assert labels[i + 1] == 0.0 and lesion[i + 1] is None
    # displaced regions on positives never touch the (4 px dilated) lesion
    for i, y in enumerate(labels):
        for j, p in enumerate(pos):
            if images[i] is p and y == 0.0:
                assert not (regions[i] & dilate(masks[j], 4)).any()
    assert sum(im is normal for im in images) == 3


def test_load_scorers_builds_the_stored_configs(tmp_path):
    """Weights load with the ScorerConfig saved beside them, not the current SCORER_CONFIGS."""
    from dataclasses import replace

    from generator.modeling.scorers import ConvScorer
    from generator.scoring import load_scorers, save_scorers

    torch.manual_seed(0)
    models = {k: build_scorer(k) for k in SCORER_CONFIGS}
    models["audit"] = ConvScorer(replace(SCORER_CONFIGS["audit"], widths=(8, 16), ring_px=3))
    save_scorers(tmp_path, models, {})
    loaded = load_scorers(tmp_path)
    assert loaded.audit.cfg == models["audit"].cfg and loaded.lesion.cfg == SCORER_CONFIGS["lesion"]


def test_load_scorers_reads_weights_saved_before_stored_configs_as_whole_image(tmp_path):
    """scorers.json without "scorer_configs" (session-2 checkpoints): whole-image lesion/audit."""
    import json

    from generator.modeling.scorers import WHOLE_IMAGE_CONFIGS, ConvScorer
    from generator.scoring import load_scorers, save_scorers

    torch.manual_seed(0)
    models = {k: ConvScorer(cfg) for k, cfg in WHOLE_IMAGE_CONFIGS.items()}
    save_scorers(tmp_path, models, {})
    meta = json.loads((tmp_path / "scorers.json").read_text())
    del meta["scorer_configs"]
    (tmp_path / "scorers.json").write_text(json.dumps(meta))
    loaded = load_scorers(tmp_path)
    assert loaded.lesion.cfg.in_channels == 1 and loaded.audit.cfg == WHOLE_IMAGE_CONFIGS["audit"]
    x = torch.rand(2, 1, 64, 64)
    assert_close(loaded.lesion(x), models["lesion"](x), rtol=0, atol=1e-2)  # fp16 round trip

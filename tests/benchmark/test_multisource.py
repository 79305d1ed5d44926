"""Multi-source lesion data for the CLIP's pre-training (shared.benchmark.multisource)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.benchmark import build_benchmark, load_manifest
from shared.benchmark import multisource as ms
from shared.io import read_image, read_mask


def test_window_crop_zooms_by_the_drawn_factor(monkeypatch):
    """On a horizontal ramp of slope g per native pixel, a window of ``size·z`` native pixels
    resized to ``size`` has slope g·z along one axis (either: 90° turns) and 0 along the other,
    with z in ZOOM: catches an inverted zoom (slope g/z) or a crop that is not resized."""
    g, n = 1.0 / 2048, 2048
    ramp = np.tile(np.arange(n, dtype=np.float32) * g, (n, 1))
    monkeypatch.setattr(ms, "frames", lambda name: [(ramp, np.ones((n, n), bool))])
    rng = np.random.default_rng(0)
    slopes = []
    for _ in range(20):
        img, tissue = ms.window_crop("mni_brain", rng, 64)
        dy, dx = np.gradient(img[8:-8, 8:-8].astype(np.float64))
        slope = max(np.abs(dx).mean(), np.abs(dy).mean()) / g
        assert min(np.abs(dx).mean(), np.abs(dy).mean()) < 1e-3 * slope * g
        slopes.append(slope)
        assert not tissue[:8].any() and tissue[8:-8, 8:-8].all()
    assert ms.ZOOM[0] - 0.05 <= min(slopes) and max(slopes) <= ms.ZOOM[1] + 0.05
    assert max(slopes) - min(slopes) > 1.0  # the zoom varies


def test_held_out_sources_are_refused():
    with pytest.raises(ValueError, match="held-out"):
        ms.window_crop("chest_xray", np.random.default_rng(0), 64)
    assert not set(ms.MS_SOURCES) & {"chest_xray", "emri_head_mr", "abdomen_ct", "abdomen_mr",
                                     "pelvis_us"}


def test_procedural_texture_is_deterministic_and_in_range():
    a, ta = ms.procedural(np.random.default_rng(3), 64)
    b, _ = ms.procedural(np.random.default_rng(3), 64)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1 and a.std() > 0.05
    assert ta.sum() == (64 - 16) ** 2


def test_positives_are_visible_and_exact_outside_the_mask():
    """draw_item's lesions change their mask by at least MIN_VISIBLE on average (procedural
    backgrounds always allow it) and leave every other pixel equal to the background."""
    from shared.io import to_uint8

    rng = np.random.default_rng(1)
    for _ in range(6):
        bg, preset, lesion, positive, mask = ms.draw_item("procedural", rng, 64, tumor=True)
        assert mask.any() and preset in ("brain_mri", "chest_xray", "retina", "breast_us")
        assert np.abs(positive[mask] / 255.0 - bg[mask]).mean() >= ms.MIN_VISIBLE
        np.testing.assert_array_equal(positive[~mask], to_uint8(bg)[~mask])


def test_multi_source_domains_are_training_only_and_leave_the_benchmark_unchanged(tmp_path):
    plain = build_benchmark(tmp_path / "plain", domains=("brain_mri",), n_per_domain=3, size=64, seed=0)
    more = build_benchmark(tmp_path / "ms", domains=("brain_mri",), n_per_domain=3, size=64, seed=0,
                           multi_source=2)
    base, items = load_manifest(plain), load_manifest(more)
    same = [it for it in items if it.domain == "brain_mri"]
    assert [it.id for it in same] == [it.id for it in base]
    for a, b in zip(base, same, strict=True):
        assert a.image.read_bytes() == b.image.read_bytes() and a.caption == b.caption
    extra = [it for it in items if it.domain.startswith("ms_")]
    assert {it.domain for it in extra} == {f"ms_{s}" for s in ms.MS_SOURCES}
    assert {it.split for it in extra} == {"train"} and len(extra) == len(ms.MS_SOURCES) * (2 + 1)
    ct = next(it for it in extra if it.domain == "ms_head_ct" and it.label == "tumor")
    assert ct.caption.startswith("A head CT showing")
    assert next(it for it in extra if it.domain == "ms_head_ct" and it.label == "normal").caption \
        == "A head CT showing normal brain tissue with no signs of pathology."
    outside = ~read_mask(ct.mask)
    np.testing.assert_array_equal(read_image(ct.image)[outside], read_image(ct.gt_negative)[outside])


def test_flat_backgrounds_still_give_a_consistent_pair(monkeypatch):
    """When every draw is flat (a saturated window), the item returned is one draw — background,
    positive and mask belong together — never a positive of one draw with another's background."""
    from shared.io import to_uint8

    calls = iter(range(100))
    monkeypatch.setattr(ms, "background", lambda name, rng, size: (
        np.full((size, size), 0.1 * (next(calls) % 7) + 0.2, np.float32), np.ones((size, size), bool)))
    bg, _, lesion, positive, mask = ms.draw_item("mni_brain", np.random.default_rng(0), 32, tumor=True)
    assert lesion is not None and mask.any()
    np.testing.assert_array_equal(positive[~mask], to_uint8(bg)[~mask])


def test_extra_sources_are_appended_without_changing_the_earlier_domains(tmp_path):
    """``multi_source_extra`` adds one ``ms_*`` domain per EXTRA_TRAIN source and leaves every
    earlier item byte-identical (each domain keeps its random stream: a re-indexing fails)."""
    base = load_manifest(build_benchmark(tmp_path / "a", domains=("brain_mri",), n_per_domain=1,
                                         size=48, seed=0, multi_source=1))
    more = load_manifest(build_benchmark(tmp_path / "b", domains=("brain_mri",), n_per_domain=1,
                                         size=48, seed=0, multi_source=1, multi_source_extra=True))
    old = {it.id: it for it in more if it.domain not in {f"ms_{s}" for s in ms.MS_EXTRA}}
    assert sorted(old) == sorted(it.id for it in base)
    for it in base:
        assert it.image.read_bytes() == old[it.id].image.read_bytes()
    new = [it for it in more if it.id not in old]
    assert {it.domain for it in new} == {f"ms_{s}" for s in ms.MS_EXTRA}
    assert {it.split for it in new} == {"train"}
    ct = next(it for it in new if it.domain == "ms_chest_ct" and it.label == "normal")
    assert ct.caption == "A chest CT showing normal lung tissue with no signs of pathology."
    with pytest.raises(ValueError, match="multi_source > 0"):
        build_benchmark(tmp_path / "c", domains=("brain_mri",), n_per_domain=1, size=48,
                        multi_source_extra=True)


def test_lymph_node_scan_has_its_doppler_colour_replaced_by_the_grey_around_it():
    """The power-Doppler overlay (orange/yellow, bright in luminance) would be a lesion-like blob in
    every "normal" crop: after the fill, the formerly coloured pixels are as dark as the grey
    tissue within 10 px of them (a plain grey conversion leaves them ≥ 0.15 brighter), and the
    source is one frame with a tissue band away from the header and caption."""
    import pydicom
    from scipy import ndimage

    from shared.benchmark.anatomy import _pydicom_data
    from shared.benchmark.sources import frames

    rgb = pydicom.dcmread(_pydicom_data("US1_UNCR.dcm")).pixel_array.astype(np.float32)
    colour = rgb.max(-1) - rgb.min(-1) > 20
    ring = ndimage.binary_dilation(colour, iterations=10) & ~ndimage.binary_dilation(colour, iterations=3)
    (image, tissue), = frames("lymph_us")
    assert colour.mean() > 0.02 and image.shape == colour.shape
    assert abs(float(image[colour].mean()) - float(image[ring].mean())) < 0.1
    assert rgb.mean(-1)[colour].mean() / 255 - image[ring].mean() > 0.15  # what the fill removes
    assert not tissue[:100].any() and not tissue[340:].any() and tissue.mean() > 0.3


def test_echo_and_chest_ct_sources_load_with_tissue_inside_the_image():
    """The cardiac cine gives 15 frames sharing one connected sector (the text columns at the
    right edge are outside it); the thoracic CT gives its lung and soft-tissue windows of one slice
    (the lung window is the brighter one: air at −1000 HU maps above 0 only there)."""
    from scipy import ndimage

    from shared.benchmark.sources import frames

    echo = frames("echo_us")
    assert len(echo) == 15 and all(t is echo[0][1] for _, t in echo)
    sector = echo[0][1]
    assert ndimage.label(sector)[1] == 1 and 0.05 < sector.mean() < 0.6
    assert not sector[:, -40:].any()
    (lung, body), (soft, body2) = frames("chest_ct")
    assert lung.shape == soft.shape == (128, 128) and body is body2 and 0.3 < body.mean() < 0.95
    assert lung.mean() > soft.mean() + 0.1


def test_t2_look_draws_brain_lesions_of_both_polarities_and_is_off_by_default():
    """``t2_look``: among the brain-look lesions some are drawn bright (the T2 look, captioned with
    the brain's words and "hyperintense"), brighter than their background inside the lesion; off,
    the draws are exactly those of a call without the argument (the default data unchanged)."""
    from shared.benchmark.lesions import caption

    looks, bright = [], []
    for i in range(40):
        plain = ms.draw_item("procedural", np.random.default_rng([7, i]), 48, tumor=True)
        off = ms.draw_item("procedural", np.random.default_rng([7, i]), 48, tumor=True, t2_look=False)
        assert plain[1] == off[1] and np.array_equal(plain[3], off[3])
        bg, preset, lesion, positive, mask = ms.draw_item(
            "procedural", np.random.default_rng([7, i]), 48, tumor=True, t2_look=True)
        looks.append(preset)
        if preset == "brain_mri_t2":
            assert ms.caption_domain("procedural", preset) == "brain_mri"
            assert "hyperintense brain tumor" in caption("brain_mri", lesion)
            bright.append((positive[mask] / 255.0 - bg[mask]).mean())
    assert "brain_mri" in looks and "brain_mri_t2" in looks
    assert bright and min(bright) > 0

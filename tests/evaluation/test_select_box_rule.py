"""bench/select_box_rule.py's rules in which the segmenter chooses the box margin (round 4)."""

import numpy as np
import pytest

from bench.select_box_rule import parse_rule, selected_mask
from finetune.evaluation.segmenters import ScoredMasks


class _Recorder:
    """A segmenter whose mask k is box k filled, scored by a given list."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, float)
        self.boxes = None

    def segment_scored(self, image, boxes):
        self.boxes = np.asarray(boxes)
        masks = np.zeros((len(boxes), *image.shape), bool)
        for k, (x0, y0, x1, y1) in enumerate(self.boxes):
            masks[k, y0 : y1 + 1, x0 : x1 + 1] = True
        return ScoredMasks(masks, self.scores, 1.0 - self.scores)


def _coarse(size):
    m = np.zeros((size, size), bool)
    m[size // 2 - 4 : size // 2 + 4, size // 2 - 4 : size // 2 + 4] = True
    return m


def test_parse_rule_kinds_and_errors():
    cfg, select, cand = parse_rule("2-means/peak/iou+0,4,8")
    assert (cfg.component, select, cand) == ("peak", "iou", (0, 4, 8))
    assert cfg.box_dilation_px == 0 and cfg.box_dilation_frac == 0
    assert parse_rule("thr0.3/largest/stab+4")[1:] == ("stability", (4,))
    assert parse_rule("2-means/peak/+4")[1:] == (None, ())
    for bad in ("2-means/peak/iou+", "2-means/peak/iou+-4", "2-means/mid/iou+4", "2-means/peak/foo"):
        with pytest.raises(ValueError, match="box rule"):
            parse_rule(bad)


@pytest.mark.parametrize("size, per_step", [(128, 4), (256, 8)])
def test_selected_mask_takes_the_best_scored_candidate(size, per_step):
    cfg, select, cand = parse_rule("2-means/peak/iou+0,4,8")
    seg = _Recorder([0.2, 0.9, 0.5])
    coarse = _coarse(size)
    out = selected_mask(seg, np.zeros((size, size)), coarse, cfg, 0, select, cand)
    # candidates grow by 4 px per 128 px of side: the coarse box, then +per_step, +2 per_step
    x0 = size // 2 - 4
    np.testing.assert_array_equal(seg.boxes[:, 0], [x0, x0 - per_step, x0 - 2 * per_step])
    np.testing.assert_array_equal(out, seg.segment_scored(np.zeros((size, size)), seg.boxes).masks[1])
    # the stability score is the other field (1 − those scores): the first, unwidened box
    out = selected_mask(seg, np.zeros((size, size)), coarse, cfg, 0, "stability", cand)
    assert out.sum() == 8 * 8


def test_selected_mask_ties_take_the_narrowest_and_empty_coarse_prompts_nothing():
    cfg, select, cand = parse_rule("2-means/peak/iou+0,4")
    seg = _Recorder([0.7, 0.7])
    out = selected_mask(seg, np.zeros((128, 128)), _coarse(128), cfg, 0, select, cand)
    assert out.sum() == 8 * 8
    empty = selected_mask(_Recorder([1.0]), np.zeros((128, 128)), np.zeros((128, 128), bool),
                          cfg, 0, select, (0,))
    assert not empty.any()


def test_map_prefix_and_contrast_map_closed_form():
    from bench.select_box_rule import contrast_map, map_of

    assert map_of("2-means/peak/+4") == ("m2ib", "2-means/peak/+4")
    assert map_of("contrast0.5:2-means/peak/+4") == ("contrast0.5", "2-means/peak/+4")
    assert parse_rule("contrast:2-means/peak/+4")[0].box_dilation_px == 4
    assert map_of("dense:2-means/peak/+8") == ("dense", "2-means/peak/+8")
    assert map_of("fuse-conc:2-means/peak/+12") == ("fuse-conc", "2-means/peak/+12")
    with pytest.raises(ValueError, match="unknown map"):
        map_of("diff:2-means/peak/+4")
    pos = np.array([[1.0, 0.5], [0.0, 0.5]])
    neg = np.array([[1.0, 0.0], [0.0, 0.5]])
    # pos − neg = [[0, .5], [0, 0]] -> min–max [[0, 1], [0, 0]]: the caption-specific pixel wins
    np.testing.assert_allclose(contrast_map(pos, neg, 1.0), [[0, 1], [0, 0]])
    # pos − 0.5 neg = [[.5, .5], [0, .25]] -> [[1, 1], [0, .5]]
    np.testing.assert_allclose(contrast_map(pos, neg, 0.5), [[1, 1], [0, 0.5]])
    assert not contrast_map(pos, pos - 0.2, 1.0).any()  # a constant difference: nothing salient


def test_best_per_domain_takes_each_domains_own_best_and_ties_to_the_narrower():
    from bench.select_box_rule import best_per_domain

    scores = {"brain_mri": {"+0": [0.2, 0.4], "+4": [0.5, 0.5], "+8": [0.6, 0.6]},
              "retina": {"+0": [0.5, 0.3], "+4": [0.4, 0.4], "+8": [0.1, 0.2]}}
    # retina: +0 and +4 both average 0.4 -> the earlier (narrower) one
    assert best_per_domain(scores, ["+0", "+4", "+8"], ["brain_mri", "retina"]) == {
        "brain_mri": "+8", "retina": "+0"}


def test_caption_kinds_strip_only_the_region_phrase():
    """``no-region`` drops exactly the "in the … region" phrase (one or more words before
    "region") and keeps what follows; ``generic`` is the domain's prompt file's caption, ``looks``
    its look ensemble (several captions)."""
    from types import SimpleNamespace

    from bench.select_box_rule import captions_for

    it = SimpleNamespace(domain="brain_mri", image=SimpleNamespace(name="x.png"), caption=(
        "A brain MRI showing a large, lobulated hypointense brain tumor with well-defined margins "
        "in the upper left region and surrounding edema."))
    assert captions_for(it, "own") == [it.caption]
    assert captions_for(it, "no-region") == ["A brain MRI showing a large, lobulated hypointense "
                                             "brain tumor with well-defined margins and "
                                             "surrounding edema."]
    it.caption = "A chest X-ray showing a round lung nodule in the upper region."
    assert captions_for(it, "no-region") == ["A chest X-ray showing a round lung nodule."]
    assert captions_for(it, "generic") == ["A brain MRI showing a brain tumor."]
    assert len(captions_for(it, "looks")) == 3


def test_look_ensembles_name_every_look_the_benchmark_draws_and_nothing_else():
    """``configs/prompts/looks/<domain>.txt`` holds exactly one caption per lesion kind the
    benchmark draws for the domain (its own preset and the test looks that take its words, e.g.
    the T2 look's "hyperintense" for brain), in the training captions' words: a look left out
    (the polarity round 11's generic caption lost) or a misspelt appearance fails."""
    from bench.select_box_rule import PROMPT_DIR
    from finetune.evaluation.prompts import load_prompts
    from shared.benchmark.lesions import APPEARANCE, MODALITY, PRESETS, TEST_PRESETS, WORDS_OF

    for domain, preset in PRESETS.items():
        kinds = list(preset["kinds"]) + [k for look, p in TEST_PRESETS.items()
                                         if WORDS_OF[look] == domain for k in p["kinds"]]
        modality, noun, _ = MODALITY[domain]
        want = {f"{modality} showing a {APPEARANCE[k]} {noun}." for k in kinds}
        got = load_prompts(PROMPT_DIR / "looks" / f"{domain}.txt").default
        assert sorted(got) == sorted(want), domain

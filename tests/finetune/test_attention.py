"""Attention capture: unchanged outputs, probabilities, reversibility, gradients."""

from __future__ import annotations

import pytest
import torch

from finetune.attention import AttentionCaptureError, capture_attention
from finetune.build import build_clip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_clip("embedded").model.eval()


def _hooks(model):
    return [len(b.attn.attn_drop._forward_hooks) for b in model.visual.trunk.blocks]


def test_outputs_equal_and_probabilities_valid(model):
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        reference = model.encode_image(images)
        with capture_attention(model, [-1, 2]) as maps:
            captured = model.encode_image(images)
    torch.testing.assert_close(captured, reference)
    assert maps.probs[0].shape == (2, 2, 65, 65)  # (B, heads, 1 + 8*8, 1 + 8*8)
    for p in maps.probs:
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
        assert bool((p >= 0).all())


def test_probabilities_equal_manual_softmax(model):
    block = model.visual.trunk.blocks[-1]
    seen = {}
    handle = block.attn.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    try:
        with torch.no_grad(), capture_attention(model) as maps:
            model.encode_image(torch.randn(1, 3, 128, 128))
    finally:
        handle.remove()
    x = seen["x"]  # (1, T, W): the input of the attention module (after norm1)
    attn = block.attn
    q, k, _ = attn.qkv(x).reshape(1, 65, 3, 2, 64).permute(2, 0, 3, 1, 4)
    expected = torch.softmax(q @ k.transpose(-2, -1) / 64**0.5, dim=-1)
    torch.testing.assert_close(maps[-1], expected)


def test_restored_on_exit_and_on_exception(model):
    flags = [b.attn.fused_attn for b in model.visual.trunk.blocks]
    with capture_attention(model, [0, 5]):
        assert not model.visual.trunk.blocks[0].attn.fused_attn
        assert _hooks(model) == [1, 0, 0, 0, 0, 1]
    assert [b.attn.fused_attn for b in model.visual.trunk.blocks] == flags
    assert _hooks(model) == [0] * 6
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(model, [1, 3]):
            raise RuntimeError("boom")
    assert [b.attn.fused_attn for b in model.visual.trunk.blocks] == flags
    assert _hooks(model) == [0] * 6


def test_fused_flag_on_uncaptured_blocks_untouched(model):
    blocks = model.visual.trunk.blocks
    original = blocks[0].attn.fused_attn
    blocks[0].attn.fused_attn = True
    try:
        with capture_attention(model, [-1]):
            assert blocks[0].attn.fused_attn is True
            assert blocks[-1].attn.fused_attn is False
    finally:
        blocks[0].attn.fused_attn = original


def test_gradients_reach_qkv(model):
    model.zero_grad()
    with capture_attention(model, [-1]) as maps:
        model.encode_image(torch.randn(2, 3, 128, 128))
    cls_row = maps[-1][:, :, 0, 1:]
    entropy = -(cls_row * cls_row.clamp_min(1e-12).log()).sum(-1).mean()
    entropy.backward()
    grad = model.visual.trunk.blocks[-1].attn.qkv.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    model.zero_grad()


def test_bad_indices_and_models(model):
    with pytest.raises(AttentionCaptureError, match="out of range"):
        with capture_attention(model, [6]):
            pass
    with pytest.raises(AttentionCaptureError, match="no timm ViT blocks"):
        with capture_attention(torch.nn.Linear(2, 2)):
            pass
    with capture_attention(model) as maps, pytest.raises(KeyError, match="forward"):
        maps[-1]

"""``finetune.warm_start``: the conv-stem tower filled from the patch-16 tower's weights."""

from __future__ import annotations

import pytest
import torch

from finetune.build import build_clip
from finetune.warm_start import POS_EMBED, transfer_state, warm_start


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    src = build_clip("embedded").model.eval()  # random init, 8 x 8 tokens
    dst = build_clip("embedded-convstem8").model.eval()  # 16 x 16 tokens behind a conv stem
    return src, dst


def test_copies_matching_tensors_and_keeps_only_the_stem(pair):
    src, dst = pair
    report = transfer_state(src, dst, (8, 8), (16, 16))
    assert report["resampled"] == [POS_EMBED]
    # what stays at the target's init is exactly the new stem (the 1x1 projection's bias has the
    # old projection's shape and is copied)
    assert report["kept"] and all(n.startswith("visual.trunk.patch_embed.") for n in report["kept"])
    assert "visual.trunk.patch_embed.proj.weight" in report["kept"]
    s, d = src.state_dict(), dst.state_dict()
    for name in report["copied"]:
        assert torch.equal(s[name], d[name]), name
    assert any(n.startswith("text.") for n in report["copied"])
    assert "visual.trunk.blocks.5.mlp.fc2.weight" in report["copied"]
    tokens = torch.randint(5, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(src.encode_text(tokens), dst.encode_text(tokens))


def test_position_embedding_resampled_per_channel_with_cls_kept(pair):
    src, dst = pair
    with torch.no_grad():
        pos = src.visual.trunk.pos_embed  # (1, 1 + 64, 128)
        pos[:, 0] = torch.linspace(-1, 1, 128)
        pos[:, 1:] = torch.arange(128.0) / 10  # a constant field per channel
    transfer_state(src, dst, (8, 8), (16, 16))
    new = dst.visual.trunk.pos_embed
    assert new.shape == (1, 257, 128)
    torch.testing.assert_close(new[0, 0], torch.linspace(-1, 1, 128))
    # interpolation keeps a constant field constant; a CLS slot mixed into the grid or channels
    # mixed by a wrong reshape would not
    torch.testing.assert_close(new[0, 1:], (torch.arange(128.0) / 10).expand(256, 128))


def test_written_dir_loads_and_keeps_the_source_text_tower(tmp_path):
    report = warm_start("embedded-pretrained", "embedded-convstem8", tmp_path / "warm")
    assert report["resampled"] == [POS_EMBED]
    src = build_clip("embedded-pretrained").model.float()
    warm = build_clip(f"local-dir:{tmp_path / 'warm'}").model
    tokens = torch.randint(5, 100, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(src.encode_text(tokens), warm.encode_text(tokens))
        assert warm.encode_image(torch.randn(1, 3, 128, 128)).shape == (1, 128)

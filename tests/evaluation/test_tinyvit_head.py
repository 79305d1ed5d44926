"""The TinyViT-head diagnostic's head and token masks (bench/diag_tinyvit_head.py)."""

import numpy as np
import torch

from bench.diag_tinyvit_head import TokenHead, soft_mask


def test_soft_mask_is_lesion_fraction_per_token_in_row_major_order():
    mask = np.zeros((128, 128), bool)
    mask[:, :32] = True  # the left quarter
    m = soft_mask(mask, 16)
    assert m.shape == (16, 16)
    assert torch.all(m[:, :4] == 1) and torch.all(m[:, 4:] == 0)


def test_token_head_shapes_and_patch_grid():
    head = TokenHead(embed_dim=32, width=48, depth=1, heads=2).eval()
    img, patch = head(torch.randn(2, 256, 32, 32))
    assert img.shape == (2, 32) and patch.shape == (2, 256, 32)
    assert head.trunk.patch_embed.grid_size == (16, 16)

"""The vision tower's patch tokens: one trunk pass for the global embedding and the last block's
tokens, and the token grid (any BiomedCLIP-family open_clip ``CustomTextCLIP`` with a timm ViT)."""

from __future__ import annotations

import open_clip
import torch


def encode_image_tokens(
    model: open_clip.CustomTextCLIP, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global image embedding and last-block patch tokens in one trunk pass.

    ``images``: (B, 3, S, S) preprocessed. Returns ``image_emb`` (B, D), un-normalised and equal to
    ``model.encode_image(images)``, and ``patch_tokens`` (B, N, W): the trunk's final-norm output
    of the last block with the prefix (CLS) tokens dropped; N = (S/patch)², row-major grid.
    """
    trunk = model.visual.trunk
    tokens = trunk.forward_features(images)  # (B, prefix + N, W)
    image_emb = model.visual.head(trunk.forward_head(tokens))  # (B, D)
    return image_emb, tokens[:, trunk.num_prefix_tokens:]


def patch_grid(model: open_clip.CustomTextCLIP) -> tuple[int, int]:
    """(rows, cols) of the vision tower's patch grid, e.g. (14, 14) for ViT-B/16 at 224²."""
    rows, cols = model.visual.trunk.patch_embed.grid_size
    return int(rows), int(cols)

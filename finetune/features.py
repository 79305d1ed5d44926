"""The trainable forward pass: one module whose ``forward`` returns every feature a loss needs.

Wrapping the CLIP in :class:`ClipFeatures` lets accelerate/DDP see a single forward per
micro-batch (DDP only synchronises gradients of what ran through its wrapper's ``forward``).
:func:`gather` concatenates per-process features with gradients (``torch.distributed.nn``), so a
contrastive loss over the global batch computed on every process, followed by DDP's gradient
average, gives exactly the single-process gradient of that global batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from finetune.attention import capture_attention
from finetune.modeling.tokens import encode_image_tokens


class ClipFeatures(nn.Module):
    """Image/text/patch features of positives (and negatives) for one micro-batch.

    ``forward`` returns a dict; keys present depend on the inputs:
    ``image_emb`` (B, D), ``text_emb`` (B, D), ``logit_scale`` (scalar, exp applied),
    ``patch_tokens`` (B, N, W) and ``patch_emb`` (B, N, D: the tokens through the image head, as
    the CLS token goes) when ``with_tokens``, ``attn`` list of (B, H, T, T) when
    ``entropy_blocks``, ``neg_image_emb`` (B, D) / ``neg_patch_tokens`` (B, N, W) /
    ``neg_patch_emb`` (B, N, D) when ``neg_pixels`` is given, ``text_neg_emb`` (B, D) when ``text_neg`` is given.
    Embeddings are not normalised (losses normalise).
    """

    def __init__(self, clip: nn.Module, *, with_tokens: bool = False,
                 entropy_blocks: Sequence[int] = ()) -> None:
        super().__init__()
        self.clip = clip
        self.with_tokens = with_tokens
        self.entropy_blocks = tuple(entropy_blocks)

    def _image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.with_tokens:
            return encode_image_tokens(self.clip, pixels)
        return self.clip.encode_image(pixels), None

    def forward(self, pixels: torch.Tensor, text: torch.Tensor | None = None,
                neg_pixels: torch.Tensor | None = None,
                text_neg: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out: dict = {"logit_scale": self.clip.logit_scale.exp()}
        if self.entropy_blocks:
            with capture_attention(self.clip, self.entropy_blocks) as maps:
                image_emb, tokens = self._image(pixels)
                out["attn"] = maps.probs
        else:
            image_emb, tokens = self._image(pixels)
        out["image_emb"] = image_emb
        if tokens is not None:
            out["patch_tokens"] = tokens
            out["patch_emb"] = self.clip.visual.head(tokens)
        if text is not None:
            out["text_emb"] = self.clip.encode_text(text)
        if neg_pixels is not None:
            neg_emb, neg_tokens = self._image(neg_pixels)
            out["neg_image_emb"] = neg_emb
            if neg_tokens is not None:
                out["neg_patch_tokens"] = neg_tokens
                out["neg_patch_emb"] = self.clip.visual.head(neg_tokens)
        if text_neg is not None:
            out["text_neg_emb"] = self.clip.encode_text(text_neg)
        return out


def world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over processes along dim 0, keeping gradients (identity on 1 process)."""
    _, size = world()
    if size == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)

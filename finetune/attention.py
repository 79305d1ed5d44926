"""Expose attention probabilities of chosen timm ViT blocks, reversibly.

timm's ``Attention.forward(x, attn_mask=None, is_causal=False)`` uses
``F.scaled_dot_product_attention`` when ``fused_attn`` is set, which exposes no probabilities.
Inside :func:`capture_attention` the chosen blocks run timm's own non-fused path
(``fused_attn = False`` on those blocks only) and a forward hook on their ``attn_drop`` module —
which that path calls on the softmax output — records the probabilities, still in the autograd
graph (gradients reach ``qkv``). No forward method is replaced, so any ``*args, **kwargs`` timm
passes are untouched. On exit, normal or by exception, hooks are removed and flags restored.
Outputs equal the unpatched model's up to float rounding (fused and explicit softmax attention
compute the same function).

Memory: one map is (B, heads, T, T) fp32, e.g. 12·197²·4 B ≈ 1.8 MiB per layer per image for
ViT-B/16 at 224² (design §4).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from shared.config import ConfigError


class AttentionCaptureError(ConfigError):
    """The model or block indices given to :func:`capture_attention` cannot be captured."""


class AttentionMaps:
    """Attention probabilities recorded during the last forward of each captured block.

    ``maps[i]`` is the (B, heads, T_query, T_key) tensor of block ``i`` (the index as given,
    negative indices allowed); ``maps.probs`` lists them in the order the indices were given.
    """

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = list(indices)
        self._maps: dict[int, torch.Tensor] = {}

    def _record(self, index: int, probs: torch.Tensor) -> None:
        self._maps[index] = probs

    def __getitem__(self, index: int) -> torch.Tensor:
        if index not in self._maps:
            raise KeyError(f"no attention recorded for block {index}; run a forward pass first")
        return self._maps[index]

    def __len__(self) -> int:
        return len(self._maps)

    @property
    def probs(self) -> list[torch.Tensor]:
        """Recorded maps in the order of ``indices`` (every block must have run)."""
        return [self[i] for i in self.indices]

    def clear(self) -> None:
        """Drop the recorded maps (and the graph they hold)."""
        self._maps.clear()


def _blocks_of(model: nn.Module) -> Sequence[nn.Module]:
    """ViT blocks of an open_clip CLIP with a timm tower, a timm ViT, or a block sequence."""
    visual = getattr(model, "visual", None)
    trunk = getattr(visual, "trunk", None) if visual is not None else None
    for candidate in (trunk, model):
        blocks = getattr(candidate, "blocks", None) if candidate is not None else None
        if blocks is not None:
            return blocks
    if isinstance(model, nn.Sequential | nn.ModuleList):
        return model
    raise AttentionCaptureError(
        f"{type(model).__name__} has no timm ViT blocks (expected .visual.trunk.blocks or .blocks)"
    )


@contextmanager
def capture_attention(
    model: nn.Module, block_indices: Sequence[int] = (-1,)
) -> Iterator[AttentionMaps]:
    """Record the attention probabilities of ``block_indices`` while the context is open.

    ``model``: open_clip CLIP with a timm vision tower, a timm ``VisionTransformer``, or a
    sequence of timm ``Block``. Yields an :class:`AttentionMaps` filled by each forward pass.
    """
    blocks = _blocks_of(model)
    n = len(blocks)
    if not block_indices:
        raise AttentionCaptureError("block_indices is empty")
    bad = [i for i in block_indices if not -n <= i < n]
    if bad:
        raise AttentionCaptureError(f"block indices {bad} out of range for {n} blocks")
    maps = AttentionMaps(block_indices)
    saved: list[tuple[nn.Module, bool]] = []
    handles = []
    try:
        for index in block_indices:
            attn = getattr(blocks[index], "attn", None)
            if attn is None or not hasattr(attn, "fused_attn") or not hasattr(attn, "attn_drop"):
                raise AttentionCaptureError(
                    f"block {index} has no timm Attention (.attn with fused_attn and attn_drop)"
                )
            saved.append((attn, attn.fused_attn))
            attn.fused_attn = False

            def hook(_module, inputs, _output, index=index):
                maps._record(index, inputs[0])  # softmax output, before dropout

            handles.append(attn.attn_drop.register_forward_hook(hook))
        yield maps
    finally:
        for handle in handles:
            handle.remove()
        for attn, fused in saved:
            attn.fused_attn = fused

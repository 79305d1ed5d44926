"""Saliency baselines to put beside M2IB, for the same images and prompts.

- ``cls_attention``: attention of the CLS query to the patch keys in one vision block,
  averaged over heads (text-agnostic; recomputed from the block's ``qkv`` so it works with
  timm's fused attention, which never materialises the probabilities).
- ``grad_x_input``: |∂ cos(text, image) / ∂ pixels ⊙ pixels| summed over channels, pooled to
  the patch grid (gradient × input, Shrikumar et al. 2016).
- ``dense_contrast``: the CLIP's own patch-level caption contrast, MaskCLIP-style: each last-block
  patch token through the image head, ``z_n = cos(p_n, T) − cos(p_n, T⁻)`` between the image's
  lesion caption T and its lesion-free caption T⁻ (what the embedded pre-training's dense term,
  ``finetune.patch_losses.patch_text_loss``, trains).
- ``centre_box``: a fixed box covering the central half of each axis — the floor any method
  must beat (in the embedded trial only M2IB did, on every domain).
All return float32 (H, W) maps in [0, 1] at each image's own size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from finetune.evaluation.clip_bundle import (
    ClipBundle,
    ResizeMode,
    encode_prompts,
    frozen_eval,
    preprocess,
    token_map_to_image,
)


def _cls_attention_rows(attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Recompute softmax(q k^T / sqrt(d)) for the CLS query: x (B, N, D) -> (B, heads, N)."""
    b, n, d = x.shape
    h = attn.num_heads
    qkv = attn.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (3, B, h, N, hd)
    q, k = qkv[0], qkv[1]
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)  # (B, h, 1, N)
    return logits.softmax(dim=-1)[:, :, 0]


def cls_attention(
    bundle: ClipBundle,
    images: Sequence[np.ndarray],
    *,
    layer: int = -1,
    resize_mode: ResizeMode = "pad",
) -> list[np.ndarray]:
    """CLS->patch attention of vision block ``layer`` (default the last), mean over heads."""
    blocks = bundle.trunk.blocks
    blk = blocks[layer]
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, args, _kwargs=None):
        captured["x"] = args[0]

    handle = blk.attn.register_forward_pre_hook(hook)
    try:
        with frozen_eval(bundle.model), torch.no_grad():
            pixels, placements = preprocess(bundle, images, resize_mode=resize_mode)
            bundle.model.encode_image(pixels)
            rows = _cls_attention_rows(blk.attn, captured["x"]).mean(1)  # (B, N)
    finally:
        handle.remove()
    gh, gw = bundle.grid_size
    patch = rows[:, bundle.num_prefix_tokens :].reshape(-1, gh, gw)
    return token_map_to_image(patch, bundle, placements)


def grad_x_input(
    bundle: ClipBundle,
    images: Sequence[np.ndarray],
    prompts: Sequence[Sequence[str]],
    *,
    resize_mode: ResizeMode = "pad",
) -> list[np.ndarray]:
    """Gradient × input of cos(text_emb, image_emb), |·| summed over channels, patch-pooled."""
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompt lists")
    with frozen_eval(bundle.model):
        pixels, placements = preprocess(bundle, images, resize_mode=resize_mode)
        with torch.no_grad():
            text = encode_prompts(bundle, prompts)
        pixels = pixels.clone().requires_grad_(True)
        with torch.enable_grad():
            emb = bundle.model.encode_image(pixels)
            # sum over images: each image's gradient only depends on its own cosine
            F.cosine_similarity(emb, text, dim=-1).sum().backward()
        attribution = (pixels.grad * pixels.detach()).abs().sum(1)  # (B, S, S)
    gh, gw = bundle.grid_size
    patch = F.adaptive_avg_pool2d(attribution[:, None], (gh, gw))[:, 0]
    return token_map_to_image(patch, bundle, placements)


def dense_token_scores(
    bundle: ClipBundle,
    pixels: torch.Tensor,
    prompts: Sequence[Sequence[str]],
    neg_prompts: Sequence[Sequence[str]],
) -> torch.Tensor:
    """``z`` (B, gh, gw) of preprocessed ``pixels`` (B, C, S, S): per last-block patch token p_n
    (after the trunk's final norm, through ``model.visual.head``, L2-normalised),
    ``cos(p_n, T) − cos(p_n, T⁻)`` with T / T⁻ the image's prompt / negative-prompt embedding
    (:func:`encode_prompts`: an ensemble is averaged)."""
    from finetune.modeling.tokens import encode_image_tokens

    if not len(prompts) == len(neg_prompts) == len(pixels):
        raise ValueError(f"got {len(pixels)} images, {len(prompts)} prompt lists and "
                         f"{len(neg_prompts)} negative prompt lists")
    with frozen_eval(bundle.model), torch.no_grad():
        _, tokens = encode_image_tokens(bundle.model, pixels)
        p = F.normalize(bundle.model.visual.head(tokens).float(), dim=-1)  # (B, N, E)
        direction = encode_prompts(bundle, prompts) - encode_prompts(bundle, neg_prompts)
        z = torch.einsum("bne,be->bn", p, direction.float())
    return z.view(len(pixels), *bundle.grid_size)


def dense_contrast(
    bundle: ClipBundle,
    images: Sequence[np.ndarray],
    prompts: Sequence[Sequence[str]],
    neg_prompts: Sequence[Sequence[str]],
    *,
    resize_mode: ResizeMode = "pad",
) -> list[np.ndarray]:
    """:func:`dense_token_scores` of each image mapped back to it (:func:`token_map_to_image`:
    bilinear, min-max to [0, 1]). Swapping the two prompt lists gives ``1 − map``."""
    pixels, placements = preprocess(bundle, images, resize_mode=resize_mode)
    return token_map_to_image(dense_token_scores(bundle, pixels, prompts, neg_prompts), bundle,
                              placements)


def centre_box(images: Sequence[np.ndarray], *, fraction: float = 0.5) -> list[np.ndarray]:
    """1 inside a centred box spanning ``fraction`` of each side, 0 elsewhere."""
    if not 0 < fraction <= 1:
        raise ValueError(f"centre box fraction must be in (0, 1], got {fraction}")
    out = []
    for image in images:
        h, w = np.asarray(image).shape[:2]
        bh, bw = max(1, round(h * fraction)), max(1, round(w * fraction))
        m = np.zeros((h, w), dtype=np.float32)
        m[(h - bh) // 2 : (h - bh) // 2 + bh, (w - bw) // 2 : (w - bw) // 2 + bw] = 1.0
        out.append(m)
    return out


def map_concentration(saliency: np.ndarray, *, top: float = 0.05) -> float:
    """Share of a map's total mass held by its brightest ``top`` fraction of pixels
    (k = ⌈top · N⌉ of N): 1 when all mass sits there, k / N for a flat map; 0 for an empty map."""
    s = np.asarray(saliency, dtype=np.float64).ravel()
    if not 0 < top <= 1:
        raise ValueError(f"concentration top fraction must be in (0, 1], got {top}")
    total = s.sum()
    k = int(np.ceil(top * s.size))
    return float(np.partition(s, s.size - k)[s.size - k:].sum() / total) if total > 0 else 0.0


def fuse_block_maps(default: Sequence[np.ndarray], other: Sequence[np.ndarray], how: str
                    ) -> tuple[list[np.ndarray], list[bool]]:
    """Per image, one map from two M2IB maps of the same image and caption taken at two blocks,
    without looking at any lesion (bench/results/m2ib_block_fusion.md):

    - ``"mean"``: min–max of (default + other) / 2 (a constant sum -> zeros);
    - ``"concentration"``: the ``other`` map iff its :func:`map_concentration` is strictly higher
      than the default's (ties keep the default).

    Returns the maps and, per image, whether ``other`` decided (``mean``: always False)."""
    if len(default) != len(other):
        raise ValueError(f"got {len(default)} and {len(other)} maps")
    if how == "mean":
        from finetune.evaluation.m2ib import fuse_mean

        return [fuse_mean(a, b) for a, b in zip(default, other, strict=True)], [False] * len(other)
    if how == "concentration":
        took = [map_concentration(b) > map_concentration(a) for a, b in zip(default, other, strict=True)]
        return [b if t else a for a, b, t in zip(default, other, took, strict=True)], took
    raise ValueError(f"unknown block fusion {how!r}; expected 'mean' or 'concentration'")

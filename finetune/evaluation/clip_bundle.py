"""An open_clip CLIP with a timm ViT trunk, its tokenizer and its image geometry, plus the
pieces evaluation needs: aspect-preserving preprocessing that can be undone, and the vision
tower split into a prefix (patch embedding .. block L) and a suffix (block L+1 .. projection).

Works for any open_clip ``CLIP`` whose ``visual`` is a ``TimmModel`` wrapping a timm
``VisionTransformer`` (BiomedCLIP ViT-B/16 and the embedded model).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from finetune.modeling.vit import image_channels
from shared.config import ConfigError

ResizeMode = Literal["pad", "stretch"]


class UnsupportedModelError(ConfigError):
    """The CLIP model's vision tower is not a timm ViT trunk we know how to split (a user's
    mistake: a model the evaluation cannot use)."""


def model_family(num_blocks: int, image_size: int, grid_size: Sequence[int]) -> str:
    """The key of a vision tower's own box rule (``evaluate.BOX_RULES``): ``embedded`` (the
    embedded architecture, 6 blocks at 128², 8 × 8 tokens), ``embedded-convstem8`` (its conv-stem
    variant's 16 × 16 tokens: sharper maps want their own margin) or ``upstream`` (BiomedCLIP and
    any other tower)."""
    if not (num_blocks == 6 and image_size == 128):
        return "upstream"
    return "embedded-convstem8" if tuple(grid_size) == (16, 16) else "embedded"


@dataclass(frozen=True)
class ClipBundle:
    """A CLIP model with what evaluation needs to feed it."""

    model: torch.nn.Module  # open_clip CLIP; visual.trunk is a timm VisionTransformer
    tokenizer: Callable[[list[str]], torch.Tensor]  # list of captions -> (T, L) token ids
    image_size: int  # square input side the vision tower expects (224 for BiomedCLIP)
    mean: tuple[float, ...]  # per-channel normalisation mean (len == in_chans)
    std: tuple[float, ...]  # per-channel normalisation std
    in_chans: int  # 1 (embedded gray model) or 3 (BiomedCLIP)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are: inputs are put there (preprocess, encode_prompts)."""
        param = next(self.model.parameters(), None)
        return torch.device("cpu") if param is None else param.device

    @property
    def trunk(self) -> torch.nn.Module:
        return self.model.visual.trunk

    @property
    def num_blocks(self) -> int:
        return len(self.trunk.blocks)

    @property
    def is_embedded(self) -> bool:
        """The embedded architecture (6 blocks at 128²): it gets its own M2IB preset and box rule."""
        return self.family != "upstream"

    @property
    def family(self) -> str:
        """The key of the model's own box rule (``evaluate.BOX_RULES``): :func:`model_family`."""
        return model_family(self.num_blocks, self.image_size, self.grid_size)

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.trunk, "num_prefix_tokens", 1))

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(int(g) for g in self.trunk.patch_embed.grid_size)


def bundle_from_open_clip(
    model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor]
) -> ClipBundle:
    """Read image size, channels and normalisation from an open_clip model with a timm trunk."""
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    if trunk is None or not hasattr(trunk, "blocks") or not hasattr(trunk, "patch_embed"):
        raise UnsupportedModelError(
            "model.visual.trunk must be a timm VisionTransformer (open_clip TimmModel); "
            f"got visual={type(getattr(model, 'visual', None)).__name__}"
        )
    in_chans = image_channels(trunk)
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", trunk.patch_embed.img_size)
    size = int(size[0] if isinstance(size, list | tuple) else size)
    mean = tuple(float(m) for m in cfg.get("mean", (0.5,) * in_chans))
    std = tuple(float(s) for s in cfg.get("std", (0.5,) * in_chans))
    if len(mean) != in_chans:  # e.g. a 3-value default on a 1-channel model
        mean, std = (float(np.mean(mean)),) * in_chans, (float(np.mean(std)),) * in_chans
    return ClipBundle(model, tokenizer, size, mean, std, in_chans)


@dataclass(frozen=True)
class Placement:
    """Where an (H, W) image landed inside the square network input (to undo it)."""

    height: int  # original image height
    width: int  # original image width
    top: int  # first content row in the square input
    left: int  # first content column in the square input
    inner_h: int  # content rows in the square input
    inner_w: int  # content columns in the square input


def _to_channels(image: np.ndarray, in_chans: int) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"image must be HxW or HxWx3, got shape {image.shape}")
    if image.shape[2] == in_chans:
        return image
    if in_chans == 3:
        return np.repeat(image, 3, axis=2)
    # RGB -> luminance (ITU-R BT.601) for a gray model
    return (image @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32))[..., None]


def preprocess(
    bundle: ClipBundle, images: Sequence[np.ndarray], *, resize_mode: ResizeMode = "pad"
) -> tuple[torch.Tensor, list[Placement]]:
    """Images (float [0,1], HxW or HxWx3, any size) -> (B, C, S, S) normalised tensor.

    "pad" keeps the aspect ratio (longer side -> S, centred, zero padding: no crop, so the
    saliency map can be mapped back without misalignment); "stretch" resizes each axis to S.
    """
    s = bundle.image_size
    mean = torch.tensor(bundle.mean).view(-1, 1, 1)
    std = torch.tensor(bundle.std).view(-1, 1, 1)
    batch, placements = [], []
    for image in images:
        arr = _to_channels(image, bundle.in_chans)
        h, w = arr.shape[:2]
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
        if resize_mode == "stretch":
            ih, iw, top, left = s, s, 0, 0
        elif resize_mode == "pad":
            scale = s / max(h, w)
            ih, iw = max(1, round(h * scale)), max(1, round(w * scale))
            top, left = (s - ih) // 2, (s - iw) // 2
        else:
            raise ValueError(f"unknown resize mode {resize_mode!r}; expected 'pad' or 'stretch'")
        t = F.interpolate(t, size=(ih, iw), mode="bilinear", align_corners=False, antialias=True)
        canvas = torch.zeros(1, arr.shape[2], s, s)
        canvas[:, :, top : top + ih, left : left + iw] = t
        batch.append((canvas[0] - mean) / std)
        placements.append(Placement(h, w, top, left, ih, iw))
    return torch.stack(batch).to(bundle.device), placements


def token_map_to_image(
    token_maps: torch.Tensor, bundle: ClipBundle, placements: Sequence[Placement]
) -> list[np.ndarray]:
    """(B, gh, gw) patch-grid maps -> per-image (H, W) float32 maps, min-max normalised to [0,1].

    Bilinear up-sampling to the square input, crop of the content region, bilinear resize to
    the original size (the inverse of :func:`preprocess`).
    """
    s = bundle.image_size
    up = F.interpolate(token_maps[:, None].float(), size=(s, s), mode="bilinear")
    out = []
    for m, p in zip(up, placements, strict=True):
        crop = m[:, p.top : p.top + p.inner_h, p.left : p.left + p.inner_w][None]
        full = F.interpolate(crop, size=(p.height, p.width), mode="bilinear")[0, 0]
        lo, hi = full.min(), full.max()
        full = (full - lo) / (hi - lo) if hi - lo > 1e-12 else torch.zeros_like(full)
        out.append(full.detach().cpu().numpy().astype(np.float32))
    return out


def vision_prefix(bundle: ClipBundle, pixels: torch.Tensor, layer: int) -> torch.Tensor:
    """Tokens after vision block ``layer`` (0-based): (B, C, S, S) -> (B, N, D)."""
    trunk = bundle.trunk
    x = trunk.patch_embed(pixels)
    x = trunk._pos_embed(x)
    x = trunk.patch_drop(x)
    x = trunk.norm_pre(x)
    for blk in trunk.blocks[: layer + 1]:
        x = blk(x)
    return x


def vision_suffix(
    bundle: ClipBundle, tokens: torch.Tensor, layer: int, *, class_token_only: bool = True
) -> torch.Tensor:
    """Image embedding from tokens after block ``layer``: (B, N, D) -> (B, E) (unnormalised).

    With token pooling (BiomedCLIP, the embedded model) only the class token leaves the last
    block, so by default (``class_token_only``) that block runs for the class token alone
    (:func:`_class_token_block`): the same numbers as the full block, without the other N−1
    tokens' attention rows, projection and MLP.
    """
    trunk = bundle.trunk
    x = tokens
    blocks = list(trunk.blocks[layer + 1 :])
    shortcut = (class_token_only and bool(blocks) and trunk.global_pool == "token"
                and _plain_timm_block(blocks[-1]))
    for blk in blocks[:-1] if shortcut else blocks:
        x = blk(x)
    if shortcut:
        x = _class_token_block(blocks[-1], x)
    x = trunk.norm(x)
    x = trunk.forward_head(x)
    return bundle.model.visual.head(x)


def _plain_timm_block(blk: torch.nn.Module) -> bool:
    from timm.models.vision_transformer import Attention, Block

    return type(blk) is Block and type(blk.attn) is Attention and not blk.training


def _class_token_block(blk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``Block.forward`` evaluated for query token 0 only: (B, N, D) -> (B, 1, D).

    Keys and values still come from all N tokens; the query, attention row, output projection,
    residuals and MLP are those of token 0 (eval mode: no dropout or drop-path).
    """
    attn = blk.attn
    h = blk.norm1(x)
    b, n, _ = h.shape
    qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q[:, :, :1]), attn.k_norm(k)
    y = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)  # (B, heads, 1, head_dim)
    y = attn.norm(y.transpose(1, 2).reshape(b, 1, attn.attn_dim))
    if attn.gate is not None:
        y = y * attn.gate(h[:, :1]).sigmoid()
    x0 = x[:, :1] + blk.ls1(attn.proj(y))
    return x0 + blk.ls2(blk.mlp(blk.norm2(x0)))


def encode_prompts(bundle: ClipBundle, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
    """One text embedding per image: (B,) lists of captions -> (B, E), L2-normalised.

    Several captions for one image are an ensemble: the mean of their normalised embeddings,
    re-normalised (MedCLIP-SAMv2's ``--ensemble``). Identical caption lists are encoded once.
    """
    unique: dict[tuple[str, ...], int] = {}
    for p in prompts:
        if len(p) == 0:
            raise ValueError("every image needs at least one text prompt")
        unique.setdefault(tuple(p), len(unique))
    embs = []
    for captions in unique:
        tokens = bundle.tokenizer(list(captions)).to(bundle.device)
        e = F.normalize(bundle.model.encode_text(tokens).float(), dim=-1).mean(0)
        embs.append(F.normalize(e, dim=-1))
    table = torch.stack(embs)
    return table[[unique[tuple(p)] for p in prompts]]


@contextmanager
def frozen_eval(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and no parameter gradients inside the block; both restored afterwards.

    Saliency methods need gradients w.r.t. activations or inputs only; skipping the weight
    gradients roughly halves the backward pass and leaves ``.grad`` of the model untouched.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)

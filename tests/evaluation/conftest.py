"""Tiny open_clip CLIP with a registered timm ViT trunk (same architecture family as BiomedCLIP
and the embedded model), built offline in milliseconds."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import timm
import torch
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

from finetune.evaluation.clip_bundle import ClipBundle, bundle_from_open_clip

VOCAB = 64
CONTEXT = 12


@register_model
def evaltest_tiny_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    kwargs.pop("cache_dir", None)
    model = VisionTransformer(
        img_size=32, patch_size=8, in_chans=kwargs.pop("in_chans", 1), embed_dim=32, depth=4,
        num_heads=2, mlp_ratio=2.0, **kwargs,
    )
    model.pretrained_cfg = model.default_cfg = {}  # open_clip's TimmModel reads default_cfg
    return model


def toy_tokenizer(texts: list[str]) -> torch.Tensor:
    """Deterministic word-hash tokenizer; EOT has the largest id (open_clip argmax pooling)."""
    out = torch.zeros(len(texts), CONTEXT, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [VOCAB - 2] + [1 + sum(map(ord, w)) % (VOCAB - 3) for w in text.lower().split()]
        ids = ids[: CONTEXT - 1] + [VOCAB - 1]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def make_tiny_clip(seed: int = 0, in_chans: int = 1) -> ClipBundle:
    assert "evaltest_tiny_vit" in timm.list_models("evaltest_*")
    torch.manual_seed(seed)
    vision = open_clip.CLIPVisionCfg(
        timm_model_name="evaltest_tiny_vit", timm_model_pretrained=False, timm_pool="",
        timm_proj="linear", image_size=32,
    )
    text = open_clip.CLIPTextCfg(context_length=CONTEXT, vocab_size=VOCAB, width=32, heads=2, layers=1)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)
    if in_chans != 1:
        raise NotImplementedError
    model.visual.preprocess_cfg = {"size": 32, "mean": (0.5,), "std": (0.25,)}
    return bundle_from_open_clip(model.eval(), toy_tokenizer)


@pytest.fixture(scope="session")
def tiny_clip() -> ClipBundle:
    return make_tiny_clip()


def blob_image(seed: int, size: tuple[int, int] = (40, 40)) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random background with a bright elliptical lesion: (image float [0,1], mask bool)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    bg = 0.3 + 0.1 * np.sin(xx / (3 + rng.random() * 3)) * np.cos(yy / (4 + rng.random() * 3))
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.1, 0.2) * h, rng.uniform(0.1, 0.2) * w
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    image = np.clip(bg + 0.5 * mask + 0.02 * rng.standard_normal((h, w)), 0, 1)
    return image.astype(np.float32), mask

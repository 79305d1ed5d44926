"""Small timm ViTs registered under our own names, so open_clip's ``TimmModel`` can build them.

open_clip's ``TimmModel`` passes no architecture kwargs to ``timm.create_model`` (design §7), so a
ViT with non-standard sizes needs its own registered model function. Registering is a pure
name -> constructor entry in timm's registry: no weights are loaded and nothing is seeded.

``vit_tiny_medclip_patch16_128`` is the vision tower of the embedded BiomedCLIP-family model
(design §8): 128x128 input, 3 input channels (grayscale images are replicated to RGB by open_clip's
standard preprocessing, exactly as for the real BiomedCLIP, so one preprocessing path serves
both), patch 16 -> 8x8 = 64 patch tokens + 1 CLS token, width 128, depth 6, 2 heads, MLP ratio 4.

``vit_tiny_medclip_convstem8_128`` is the same transformer behind a convolutional stem (timm
``ConvStem``: three 3x3 stride-2 convs, 32/64/128 channels, BatchNorm + ReLU after the first two,
then timm ``HybridEmbed``'s 1x1 projection) -> 16x16 = 256 patch tokens. As a mask-supervised
lesion detector it pointed into lesions on held-out sources where the patch-16 tower did not
(``bench/results/local_detector.md``). Its blocks,
patch tokens and open_clip save/load are the embedded tower's; MedCLIP-SAMv2's HF port has a single
patch-embedding conv, so this trunk has no HF-port export (``finetune.export`` refuses it).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from timm.models import build_model_with_cfg, register_model
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_hybrid import ConvStem, HybridEmbed

EMBEDDED_VIT_NAME = "vit_tiny_medclip_patch16_128"
CONVSTEM_VIT_NAME = "vit_tiny_medclip_convstem8_128"


def _default_cfg(name: str, input_size: tuple[int, int, int]) -> dict:
    # The same normalisation constants as BiomedCLIP (OpenAI CLIP mean/std).
    return {
        "architecture": name,
        "url": "",
        "num_classes": 0,
        "input_size": input_size,
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": (0.48145466, 0.4578275, 0.40821073),
        "std": (0.26862954, 0.26130258, 0.27577711),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }


@register_model
def vit_tiny_medclip_patch16_128(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT for the embedded BiomedCLIP-family CLIP: 128² RGB input, patch 16, width 128, depth 6."""
    if pretrained:
        raise ValueError(f"{EMBEDDED_VIT_NAME} has no pretrained timm weights; load a CLIP checkpoint")
    # timm.create_model passes pretrained_cfg=None; ours is the fallback.
    pretrained_cfg = kwargs.pop("pretrained_cfg", None) or _default_cfg(
        EMBEDDED_VIT_NAME, (3, 128, 128)
    )
    model_args = dict(img_size=128, patch_size=16, embed_dim=128, depth=6, num_heads=2, mlp_ratio=4.0)
    return build_model_with_cfg(
        VisionTransformer,
        EMBEDDED_VIT_NAME,
        pretrained=False,
        pretrained_cfg=pretrained_cfg,
        **dict(model_args, **kwargs),
    )


@register_model
def vit_tiny_medclip_convstem8_128(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The embedded ViT behind a 3-conv stride-8 stem: 128² RGB input -> 16 x 16 tokens, width 128."""
    if pretrained:
        raise ValueError(f"{CONVSTEM_VIT_NAME} has no pretrained timm weights; load a CLIP checkpoint")
    pretrained_cfg = kwargs.pop("pretrained_cfg", None) or dict(
        _default_cfg(CONVSTEM_VIT_NAME, (3, 128, 128)), first_conv="patch_embed.backbone.0.conv"
    )
    model_args = dict(img_size=128, patch_size=1, embed_dim=128, depth=6, num_heads=2, mlp_ratio=4.0,
                      embed_layer=partial(HybridEmbed, backbone=conv_stem(8, 128)))
    return build_model_with_cfg(
        VisionTransformer,
        CONVSTEM_VIT_NAME,
        pretrained=False,
        pretrained_cfg=pretrained_cfg,
        **dict(model_args, **kwargs),
    )


def conv_stem(stride: int, width: int, in_chans: int = 3) -> ConvStem:
    """timm ``ConvStem`` of log2(stride) 3x3 stride-2 convs, channels doubling up to ``width``
    (stride 8, width 128: 32/64/128), BatchNorm + ReLU after all but the last."""
    depth = int(math.log2(stride))
    if 2 ** depth != stride:
        raise ValueError(f"stride={stride}: a power of 2 expected")
    channels = tuple(width // 2 ** (depth - 1 - i) for i in range(depth))
    return ConvStem(in_chans=in_chans, depth=depth, channels=channels, stride=(2,) * depth, padding=1)


def image_channels(trunk) -> int:
    """Input channels of a timm ViT trunk: those of the first conv of its patch embedding (a
    ``PatchEmbed``'s projection, or a ``HybridEmbed``'s stem)."""
    return next(m.in_channels for m in trunk.patch_embed.modules()
                if isinstance(m, torch.nn.Conv2d))


def has_single_patch_conv(trunk) -> bool:
    """Whether the trunk's patch embedding is one conv (what MedCLIP-SAMv2's HF port can hold)."""
    return not isinstance(trunk.patch_embed, HybridEmbed)


def batchnorm_layers(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer (1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d) inside ``module``,
    in module order: the conv stem's; a plain ViT has none."""
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

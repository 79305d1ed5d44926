"""Stable Diffusion inpainting pieces built offline (no model hub): a letters-only CLIP tokenizer, a
tiny seeded same-architecture 9-channel pipeline in diffusers' on-disk format, and synthetic DPO
pairs. Used by the tests and by the CPU/GPU benches (``bench/bench_sd_lora.py``,
``bench/gpu_sd_inpaint.py``), so they share one definition.

The tiny pipeline: UNet widths (32, 64), cross-attention 32, VAE (32, 64) → 32² pixels / 16² latents,
CLIP text hidden 32, a DDIM scheduler with the ε or v prediction asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def offline_tokenizer(max_length: int = 16):
    """A ``CLIPTokenizer`` from a letters-only vocab (no hub). Token ids differ from CLIP's: fine for
    random-weight models (tests, timings), meaningless for a trained text encoder."""
    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for tok in letters + [t + "</w>" for t in letters] + [",</w>", ".</w>"]:
        vocab.setdefault(tok, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def build_tiny_sd(out: str | Path, *, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Write a seeded random-init tiny inpainting pipeline to ``out`` (``save_pretrained``)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=9,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=32,
    )
    tokenizer = offline_tokenizer(16)
    text = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    ))
    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(num_train_timesteps=100, steps_offset=1,
                                prediction_type=prediction_type),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    return Path(out)


def pair_batch(n: int = 2, side: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """``n`` fixed DPO pairs (B,1,side,side) in [0,1]: image with a bright blob, its hole, a smooth
    winner (the blob removed) and a loser (the blob kept), as ``generator.dpo`` loads them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    images, holes, winners = [], [], []
    for _ in range(n):
        bg = 0.4 + 0.2 * np.sin(xx / rng.uniform(3, 6)) * np.cos(yy / rng.uniform(4, 8))
        cy, cx = rng.integers(side // 3, 2 * side // 3, size=2)
        hole = (yy - cy) ** 2 + (xx - cx) ** 2 < (side / 6) ** 2
        images.append(np.where(hole, 0.95, bg))
        holes.append(hole)
        winners.append(bg)

    def stack(a):
        return torch.from_numpy(np.stack(a).astype(np.float32))[:, None]

    image = stack(images)
    return {"image": image, "hole": stack(holes), "winner": stack(winners), "loser": image.clone()}

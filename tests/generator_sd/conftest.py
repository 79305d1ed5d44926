"""A tiny 9-channel ``StableDiffusionInpaintPipeline`` built offline, saved to disk, loaded back.

Same architecture as ``tests/generator/test_sd_inpaint.py`` (UNet widths (32, 64), cross-attention
32, VAE (32, 64) → 32² pixels / 16² latents, CLIP text hidden 32), built by ``build_tiny_sd``
so the bench script can use it too. The scheduler is a DDIM with the ε or v prediction asked for.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _tiny_tokenizer():
    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for tok in letters + [t + "</w>" for t in letters] + [",</w>", ".</w>"]:
        vocab.setdefault(tok, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def build_tiny_sd(out, *, prediction_type: str = "epsilon", seed: int = 0):
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
    tokenizer = _tiny_tokenizer()
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
    return out


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(scope="session")
def tiny_sd_v_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd_v") / "pipe", prediction_type="v_prediction")


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
    t = lambda a: torch.from_numpy(np.stack(a).astype(np.float32))[:, None]  # noqa: E731
    image = t(images)
    return {"image": image, "hole": t(holes), "winner": t(winners), "loser": image.clone()}


def sd_backend(pipe_dir, *, reference_lora: str = "", need_reference: bool = True, **sd):
    """A ``SDInpaintTrainBackend`` on ``pipe_dir`` (LoRA rank 4 unless ``sd`` says otherwise)."""
    from generator.backends import SDInpaintTrainBackend, SDModelConfig

    cfg = SDModelConfig(pretrained=str(pipe_dir), **{"lora_rank": 4, "lora_alpha": 4.0, **sd})
    return SDInpaintTrainBackend(cfg, need_reference=need_reference, reference_lora=reference_lora)


def perturb_lora(backend, scale: float = 0.05, seed: int = 1) -> None:
    """Move every trainable (LoRA) weight by seeded Gaussian noise: a policy ≠ its reference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in backend.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def unet_inputs(backend, n: int = 2, seed: int = 0):
    """(x_t, cond, t) for ``n`` of ``pair_batch``'s pairs, seeded."""
    g = torch.Generator().manual_seed(seed)
    z_w, _, cond, _ = backend.pair_batch(pair_batch(n))
    return torch.randn(z_w.shape, generator=g), cond, torch.randint(0, 100, (n,), generator=g)

"""diffusers ``StableDiffusionInpaintPipeline`` (9-channel UNet) behind a fixed healthy-tissue prompt."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionInpaintPipeline

from shared.config import ConfigError

HEALTHY_PROMPT = "a medical image of healthy tissue, no tumor, no lesion"  # fixed for all requests


def load_pipeline(
    path_or_id: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusionInpaintPipeline:
    """Load from a local directory or a hub id, never touching the network (``local_files_only``)."""
    try:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            str(path_or_id),
            local_files_only=True,
            dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as err:  # no such dir, not in the local hub cache, not a pipeline
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path_or_id}: not a diffusers inpainting pipeline directory and not in "
                          f"the local hub cache (nothing is downloaded): {first}") from err
    if pipe.unet.config.in_channels != 9:
        raise ConfigError(
            f"{path_or_id}: UNet has {pipe.unet.config.in_channels} input channels; the inpainting "
            "backend needs the 9-channel inpainting UNet"
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def encode_prompt(pipe: StableDiffusionInpaintPipeline, prompt: str) -> torch.Tensor:
    """Text embeddings of ``prompt`` (1, L, D), computed once at load time."""
    embeds, _ = pipe.encode_prompt(
        prompt, pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return embeds


def resolution(pipe: StableDiffusionInpaintPipeline) -> int:
    """Pixel side the pipeline's UNet was trained at."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


@torch.no_grad()
def inpaint(
    pipe: StableDiffusionInpaintPipeline,
    prompt_embeds: torch.Tensor,
    images: torch.Tensor,
    holes: torch.Tensor,
    generators: Sequence[torch.Generator],
    *,
    steps: int,
    strength: float,
) -> np.ndarray:
    """Inpaint RGB (B,3,R,R) images in [0,1] where ``holes`` (B,1,R,R) is 1; returns (B,R,R,3) float32.

    Guidance scale is 1 (no classifier-free guidance): one fixed prompt, one forward per step.
    """
    b = images.shape[0]
    side = images.shape[-1]
    out = pipe(
        prompt_embeds=prompt_embeds.expand(b, -1, -1),
        image=images,
        mask_image=holes,
        height=side,
        width=side,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=1.0,
        generator=list(generators),
        output_type="np",
    ).images
    return np.asarray(out, dtype=np.float32)

"""A tiny 9-channel ``StableDiffusionInpaintPipeline`` built offline, saved to disk, loaded back.

The pipeline and the synthetic pairs come from ``generator.modeling.sd_offline`` (shared with the
benches); the fixtures and backend helpers of the SD tests live here.
"""

from __future__ import annotations

import pytest
import torch

from generator.modeling.sd_offline import build_tiny_sd, pair_batch

__all__ = ["build_tiny_sd", "pair_batch", "perturb_lora", "sd_backend", "unet_inputs"]


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(scope="session")
def tiny_sd_v_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd_v") / "pipe", prediction_type="v_prediction")


def sd_backend(pipe_dir, *, reference_lora: str = "", need_reference: bool = True, **sd):
    """A ``SDInpaintTrainBackend`` on ``pipe_dir`` (LoRA rank 4 unless ``sd`` says otherwise)."""
    from generator.sd_backend import SDInpaintTrainBackend, SDModelConfig

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

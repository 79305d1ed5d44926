"""Tiny fixtures: a small benchmark, a tiny pixel checkpoint built through the real builders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generator.build import save_pixel_checkpoint
from generator.modeling import pixel_unet

TINY = pixel_unet.PixelUNetConfig(
    resolution=32, block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4,
    num_train_timesteps=100,
)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def save_tiny_pixel(out):
    """A seeded random-init TINY pixel checkpoint written by the real builder; returns ``out``."""
    torch.manual_seed(0)
    save_pixel_checkpoint(out, pixel_unet.build_unet(TINY), TINY, fp16=False)
    return out


@pytest.fixture(scope="session")
def tiny_pixel_dir(tmp_path_factory):
    return save_tiny_pixel(tmp_path_factory.mktemp("pixel") / "ckpt")


@pytest.fixture(scope="session")
def small_bench(tmp_path_factory):
    from shared.benchmark import build_benchmark

    out = tmp_path_factory.mktemp("bench")
    build_benchmark(out, domains=("breast_us", "retina"), n_per_domain=5, size=32, seed=0)
    return out


def toy_pair(h: int = 40, w: int = 36, seed: int = 0, rgb: bool = False):
    """A smooth random image with a bright blob and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    image = 0.4 + 0.2 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.03 * rng.standard_normal((h, w))
    mask = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 6) ** 2
    image = np.clip(np.where(mask, 0.9, image), 0, 1).astype(np.float32)
    if rgb:
        image = np.stack([image, image * 0.9, image * 0.8], axis=-1).astype(np.float32)
    return image, mask

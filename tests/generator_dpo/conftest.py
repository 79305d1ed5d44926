"""Tiny fixtures for the DPO stage: a small benchmark, a tiny pixel reference, random scorers."""

from __future__ import annotations

import pytest
import torch

from generator.build import load_generator, save_pixel_checkpoint
from generator.modeling import pixel_unet
from generator.modeling.scorers import build_scorer
from generator.scoring import Scorers

TINY = pixel_unet.PixelUNetConfig(
    resolution=32, block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4,
    num_train_timesteps=100,
)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory):
    from shared.benchmark import build_benchmark

    out = tmp_path_factory.mktemp("bench")
    build_benchmark(out, domains=("breast_us", "retina"), n_per_domain=6, size=32,
                    seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory):
    torch.manual_seed(0)
    unet = pixel_unet.build_unet(TINY)
    out = tmp_path_factory.mktemp("ref") / "ref"
    save_pixel_checkpoint(out, unet, TINY, fp16=False)
    return out


@pytest.fixture(scope="session")
def tiny_generator(tiny_reference):
    return load_generator(tiny_reference)


@pytest.fixture(scope="session")
def tiny_scorers():
    torch.manual_seed(0)
    return Scorers(**{k: build_scorer(k).eval() for k in ("lesion", "audit", "fill")},
                   checkpoint_hash="random")

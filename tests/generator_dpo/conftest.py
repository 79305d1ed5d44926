"""Tiny fixtures for the DPO stage: a small benchmark, a tiny pixel reference, random scorers."""

from __future__ import annotations

import pytest
import torch

from generator.build import load_generator
from generator.modeling.scorers import build_scorer
from generator.scoring import Scorers
from tests.generator.conftest import TINY, _one_thread, tiny_pixel_dir  # noqa: F401 (fixtures)


@pytest.fixture(scope="session")
def bench_root(tmp_path_factory):
    from shared.benchmark import build_benchmark

    out = tmp_path_factory.mktemp("bench")
    build_benchmark(out, domains=("breast_us", "retina"), n_per_domain=6, size=32,
                    seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_reference(tiny_pixel_dir):  # noqa: F811 (the imported fixture, under the DPO name)
    return tiny_pixel_dir


@pytest.fixture(scope="session")
def tiny_generator(tiny_reference):
    return load_generator(tiny_reference)


@pytest.fixture(scope="session")
def tiny_scorers():
    torch.manual_seed(0)
    return Scorers(**{k: build_scorer(k).eval() for k in ("lesion", "audit", "fill")},
                   checkpoint_hash="random")

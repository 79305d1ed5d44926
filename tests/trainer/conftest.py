"""Fixtures for the trainer tests: a tiny lesion-injection benchmark and tiny run configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_bench(tmp_path_factory) -> Path:
    """Two training domains + the held-out one, 6 positives each, 64x64 (real benchmark code)."""
    from shared.benchmark import build_benchmark

    out = tmp_path_factory.mktemp("bench")
    build_benchmark(out, domains=("brain_mri", "breast_us", "chest_xray"), n_per_domain=6,
                    size=64, seed=0)
    return out


def tiny_overrides(bench: Path, out: Path, **extra) -> dict:
    """A 2-step run of the random-init embedded CLIP on ``bench`` (a dict for load_train_config)."""
    cfg = {
        "model": "embedded", "output_dir": str(out), "batch_size": 4, "checkpoint_every": 0,
        "log_every": 1, "resume": "none",
        "data": {"kind": "benchmark", "root": str(bench), "split": "train"},
        "negatives": {"source": "gt", "cache_dir": str(out / "neg_cache")},
        "objective": {"name": "clip"},
        "optim": {"max_steps": 2, "warmup_steps": 1, "lr": 1e-3},
    }
    for key, value in extra.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg.get(key, {}), **value}
        else:
            cfg[key] = value
    return cfg

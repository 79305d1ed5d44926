"""Wiring: ``train.py --stage dpo`` dispatch and the predictor's latent-boundary method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import generator.dpo
import generator.latent_boundary
from generator.build import load_generator
from generator.latent_boundary import LatentClassifier, LatentConfig, build_vae, save_latent
from generator.masks import dilate
from generator.predictor import GenerationInputError
from generator.train import main as train_main
from generator.train import parse_args

TINY = LatentConfig(resolution=32, vae_channels=(8, 16), norm_num_groups=4, clf_widths=(8, 16))


def test_stage_dpo_dispatches_config_and_overrides(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(generator.dpo, "main", lambda argv: seen.append(argv) or {"ok": 1})
    cfg = tmp_path / "dpo.yaml"
    out = train_main(["--stage", "dpo", "--config", str(cfg), "optim.steps=3", "loss.beta=5"])
    assert out == {"ok": 1}
    assert seen == [["--config", str(cfg), "optim.steps=3", "loss.beta=5"]]
    train_main(["--stage", "dpo", "optim.steps=1"])
    assert seen[-1] == ["optim.steps=1"]
    assert parse_args(["--stage", "reference"]).stage == "reference"
    with pytest.raises(SystemExit):
        parse_args(["--stage", "nope"])


def _pair(rgb: bool = False):
    rng = np.random.default_rng(0)
    image = rng.random((40, 40, 3) if rgb else (40, 40)).astype(np.float32)
    mask = np.zeros((40, 40), bool)
    mask[12:22, 15:27] = True
    return image, mask


def test_latent_boundary_without_weights_names_them(monkeypatch, tmp_path, tiny_generator):
    monkeypatch.setattr(generator.latent_boundary, "LATENT_DIR", tmp_path / "absent")
    image, mask = _pair()
    with pytest.raises(GenerationInputError, match="latent.*weights"):
        tiny_generator.generate([image], [mask], method="latent-boundary")


def test_latent_boundary_method_is_exact_outside_and_seeded(monkeypatch, tmp_path, tiny_reference):
    torch.manual_seed(0)
    save_latent(tmp_path / "latent", build_vae(TINY), LatentClassifier(TINY), TINY)
    monkeypatch.setattr(generator.latent_boundary, "LATENT_DIR", tmp_path / "latent")
    gen = load_generator(tiny_reference)
    for rgb in (False, True):
        image, mask = _pair(rgb)
        res = gen.generate([image], [mask], num_samples=2, seed=3, method="latent-boundary")[0]
        again = gen.generate([image], [mask], num_samples=2, seed=3, method="latent-boundary")[0]
        outside = ~dilate(mask, 2)
        for r, a in zip(res, again, strict=True):
            assert r.method == "latent-boundary" and r.image.shape == image.shape
            np.testing.assert_array_equal(r.image, a.image)
            np.testing.assert_array_equal(r.image[outside], image[outside])
            assert np.abs(r.image - image).max() > 0
        assert [r.seed for r in res] == [3, 4]

"""Latent-boundary negatives: δ confined to the mask's latent region, the classifier flips."""

from __future__ import annotations

import numpy as np
import torch
from torch.testing import assert_close

from generator.latent_boundary import (
    LatentClassifier,
    LatentConfig,
    build_vae,
    find_boundary,
    generate_latent_boundary,
    latent_region,
    load_latent,
)
from generator.latent_train import train_latent
from generator.masks import dilate

TINY = LatentConfig(resolution=32, vae_channels=(8, 16), norm_num_groups=4, clf_widths=(8, 16))


def _region() -> torch.Tensor:
    masks = torch.zeros(1, 1, 32, 32)
    masks[:, :, 8:20, 10:24] = 1
    return latent_region(masks, 16)


def _positive_classifier() -> LatentClassifier:
    """Trained on toy latents: tumor = a +1.5 offset inside the region, normal = plain noise."""
    torch.manual_seed(0)
    clf = LatentClassifier(TINY)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    for _ in range(60):
        z = torch.randn(16, 4, 16, 16)
        y = (torch.arange(16) % 2).float()
        z = z + 1.5 * y.view(-1, 1, 1, 1) * _region()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(clf(z), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clf.eval().requires_grad_(False)


def test_delta_is_zero_outside_region_and_classifier_flips():
    clf = _positive_classifier()
    region = _region().expand(3, 1, 16, 16)
    z = torch.randn(3, 4, 16, 16) + 1.5 * region
    assert clf(z).min() > 0
    params = [p.clone() for p in clf.parameters()]
    delta, flipped = find_boundary(clf, z, region, steps=150, lr=0.1, kappa=0.5)
    assert flipped.all()
    assert (clf(z + delta) < -0.5).all()
    assert (delta[region.expand_as(delta) == 0] == 0).all()
    assert delta.abs().sum() > 0
    for p, q in zip(clf.parameters(), params, strict=True):
        assert_close(p, q)  # only δ was optimised


def test_latent_region_marks_any_overlap():
    m = torch.zeros(1, 1, 8, 8)
    m[0, 0, 3, 3] = 1
    r = latent_region(m, 4)
    assert r.sum() == 1 and r[0, 0, 1, 1] == 1


def test_generate_is_exact_outside_mask_and_deterministic():
    torch.manual_seed(0)
    vae = build_vae(TINY).eval().requires_grad_(False)
    models = (vae, _positive_classifier(), TINY)
    rng = np.random.default_rng(0)
    image = rng.random((40, 40)).astype(np.float32)
    mask = np.zeros((40, 40), bool)
    mask[12:22, 15:27] = True
    a = generate_latent_boundary([image], [mask], models=models, steps=40, dilation_px=2)[0]
    b = generate_latent_boundary([image], [mask], models=models, steps=40, dilation_px=2)[0]
    np.testing.assert_array_equal(a, b)
    outside = ~dilate(mask, 2)
    np.testing.assert_array_equal(a[outside], image[outside])
    assert np.abs(a - image).max() > 0


def test_train_save_load_round_trip(bench_root, tmp_path):
    summary = train_latent(str(bench_root), tmp_path / "latent", vae_steps=3, clf_steps=3,
                           batch_size=4, cfg=TINY)
    assert summary["n_images"] > 0
    vae, clf, cfg = load_latent(tmp_path / "latent")
    assert cfg == TINY
    size = sum(p.stat().st_size for p in (tmp_path / "latent").rglob("*") if p.is_file())
    assert size < 4 * 2**20
    z = torch.randn(2, 4, 16, 16)
    assert clf(z).shape == (2,)
    assert vae.decode(z).sample.shape == (2, 1, 32, 32)


def test_a_misspelt_held_out_domain_or_zero_steps_is_refused(bench_root, tmp_path, capsys):
    import pytest

    from generator.latent_boundary import main
    from shared.io import InputError

    # was: trained on every domain, the misspelt one included, silently
    with pytest.raises(InputError, match="held_out='retna' is not a domain of"):
        train_latent(str(bench_root), tmp_path / "latent", held_out="retna", vae_steps=1,
                     clf_steps=1, cfg=TINY)
    assert not (tmp_path / "latent").exists()
    with pytest.raises(SystemExit):
        main(["--root", str(bench_root), "--out", str(tmp_path / "l"), "--vae-steps", "-5"])
    assert "--vae-steps and --clf-steps must be >= 1, got -5" in capsys.readouterr().err

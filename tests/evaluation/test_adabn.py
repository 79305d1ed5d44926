"""AdaBN (``finetune.evaluation.adabn``): the re-estimated BatchNorm statistics are the closed-form
batch statistics of each layer's input, match ``torch.optim.swa_utils.update_bn``, and leave the
model as it was found (modes, momenta; statistics on an error)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from finetune.build import build_clip
from finetune.evaluation.adabn import AdaBNError, adapt_batchnorm
from finetune.evaluation.clip_bundle import bundle_from_open_clip, preprocess
from finetune.modeling.vit import batchnorm_layers
from shared.datasets import DatasetError, list_images
from shared.io import write_png
from tests.evaluation.conftest import blob_image


@pytest.fixture(scope="module")
def convstem():
    """The embedded conv-stem CLIP (two BatchNorm layers in its stem), untrained, at 128²."""
    torch.manual_seed(0)
    built = build_clip("embedded-convstem8")
    return bundle_from_open_clip(built.model.eval(), built.tokenizer)


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    return [blob_image(seed + i, (48, 40))[0] for i in range(n)]


def _layer_inputs(bundle, images, batch_size):
    """Per BatchNorm layer, the inputs it receives in each batch of an adaptation pass."""
    layers = batchnorm_layers(bundle.model.visual)
    seen = {m: [] for m in layers}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen[m].append(args[0].detach().clone()))
             for m in layers]
    try:
        adapt_batchnorm(bundle, images, batch_size=batch_size)
    finally:
        for h in hooks:
            h.remove()
    return layers, seen


@pytest.mark.parametrize("batch_size", [8, 3])  # one batch; two of 3
def test_statistics_are_the_batch_statistics_of_each_layer_input(convstem, batch_size):
    bundle = copy.deepcopy(convstem)
    adapt_batchnorm(bundle, _images(4, seed=50))  # earlier statistics must not leak in
    layers, seen = _layer_inputs(bundle, _images(6), batch_size)
    assert len(layers) == 2
    for m in layers:
        xs = seen[m]
        assert len(xs) == -(-6 // batch_size)
        mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
        var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in xs]).mean(0)
        torch.testing.assert_close(m.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(m.running_var, var, rtol=1e-4, atol=1e-5)
        assert int(m.num_batches_tracked) == len(xs)
    # the first layer's input depends on no statistics: the stem's first conv of the images as
    # evaluation preprocesses them, batch after batch
    pixels, _ = preprocess(bundle, _images(6))
    with torch.no_grad():
        conv = bundle.model.visual.trunk.patch_embed.backbone[0].conv(pixels)
    torch.testing.assert_close(torch.cat(seen[layers[0]]), conv)


def test_matches_torch_update_bn(convstem):
    ours, ref = copy.deepcopy(convstem), copy.deepcopy(convstem)
    images = _images(6, seed=10)
    adapt_batchnorm(ours, images, batch_size=3)
    batches = [preprocess(ref, images[:3])[0], preprocess(ref, images[3:])[0]]
    torch.optim.swa_utils.update_bn(batches, ref.model.visual)  # the tower has no dropout
    for a, b in zip(batchnorm_layers(ours.model.visual), batchnorm_layers(ref.model.visual),
                    strict=True):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)


def test_changes_the_features_and_restores_modes_and_momenta(convstem):
    bundle = copy.deepcopy(convstem)
    bundle.model.visual.train()  # a mixed state to restore: visual train, text eval
    bundle.model.text.eval()
    modes = {name: m.training for name, m in bundle.model.named_modules()}
    pixels, _ = preprocess(bundle, _images(2, seed=30))
    bundle.model.eval()
    with torch.no_grad():
        before = bundle.model.encode_image(pixels)
    bundle.model.visual.train()
    assert adapt_batchnorm(bundle, _images(5, seed=40), batch_size=4) == 2
    assert {name: m.training for name, m in bundle.model.named_modules()} == modes
    assert all(m.momentum == 0.1 for m in batchnorm_layers(bundle.model.visual))
    bundle.model.eval()
    with torch.no_grad():
        after = bundle.model.encode_image(pixels)
    assert not torch.allclose(before, after, atol=1e-4)  # the statistics are used


def test_an_error_mid_pass_keeps_the_old_statistics(convstem):
    bundle = copy.deepcopy(convstem)
    old = [(m.running_mean.clone(), m.running_var.clone()) for m in batchnorm_layers(bundle.model.visual)]
    bad = _images(3) + [np.zeros((4, 4, 4, 4), np.float32)]  # second batch fails in preprocess
    with pytest.raises(ValueError, match="image must be HxW"):
        adapt_batchnorm(bundle, bad, batch_size=3)
    for m, (mean, var) in zip(batchnorm_layers(bundle.model.visual), old, strict=True):
        torch.testing.assert_close(m.running_mean, mean)
        torch.testing.assert_close(m.running_var, var)
        assert m.momentum == 0.1


def test_a_tower_without_batchnorm_and_empty_inputs_are_refused(tiny_clip, convstem, tmp_path):
    with pytest.raises(AdaBNError, match="no BatchNorm layer"):
        adapt_batchnorm(tiny_clip, _images(2))
    with pytest.raises(AdaBNError, match="at least one image"):
        adapt_batchnorm(copy.deepcopy(convstem), [])
    with pytest.raises(DatasetError, match="no such folder"):
        list_images(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images"):
        list_images(tmp_path)


def test_image_folder_reads_only_its_own_images(tmp_path):
    for i, image in enumerate(_images(2)):
        write_png(tmp_path / f"b{i}.png", image)
    (tmp_path / "masks").mkdir()
    write_png(tmp_path / "masks" / "a.png", np.ones((8, 8), bool))  # a subfolder is not read
    (tmp_path / "labels.csv").write_text("b0.png,tumor\n")
    assert [p.name for p in list_images(tmp_path)] == ["b0.png", "b1.png"]

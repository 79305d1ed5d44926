"""The conv-stem variant of the embedded CLIP (``embedded-convstem8``): a BiomedCLIP-shaped tower
(timm ViT blocks, patch tokens, open_clip save/load, M2IB), 16 x 16 tokens, no HF-port export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune.build import EMBEDDED_CONVSTEM_DIR, build_clip
from finetune.evaluation.clip_bundle import (
    bundle_from_open_clip,
    preprocess,
    vision_prefix,
    vision_suffix,
)
from finetune.evaluation.m2ib import M2IBConfig, m2ib_saliency
from finetune.export import export_hf_port, export_local_dir
from finetune.modeling.clip_configs import write_embedded_dir
from finetune.modeling.tokens import encode_image_tokens, patch_grid
from finetune.modeling.vit import CONVSTEM_VIT_NAME, has_single_patch_conv, image_channels


@pytest.fixture(scope="module")
def convstem():
    torch.manual_seed(0)
    bundle = build_clip("embedded-convstem8")
    bundle.model.eval()
    return bundle


def test_committed_dir_is_what_the_writer_writes(tmp_path):
    write_embedded_dir(tmp_path, CONVSTEM_VIT_NAME)
    for rel in ("open_clip_config.json", "text_config/config.json", "tokenizer_config.json",
                "tokenizer.json"):
        assert json.loads((tmp_path / rel).read_text()) == \
            json.loads((EMBEDDED_CONVSTEM_DIR / rel).read_text()), rel


def test_architecture_tokens_and_stem(convstem):
    trunk = convstem.model.visual.trunk
    assert (trunk.embed_dim, len(trunk.blocks), trunk.blocks[0].attn.num_heads) == (128, 6, 2)
    assert patch_grid(convstem.model) == (16, 16)
    assert image_channels(trunk) == 3 and not has_single_patch_conv(trunk)
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        emb, patches = encode_image_tokens(convstem.model, images)
        full = trunk.forward_features(images)
        torch.testing.assert_close(emb, convstem.model.encode_image(images))
    assert patches.shape == (2, 256, 128)
    torch.testing.assert_close(patches, full[:, 1:])
    # locality: a token depends only on its neighbourhood (receptive field of 3 stride-2 3x3 convs:
    # 15 px) before attention mixes; change one corner and the far corner's stem output is unchanged
    stem = trunk.patch_embed
    x = images[:1].clone()
    before = stem(x)
    x[..., :8, :8] += 1.0
    after = stem(x)
    assert not torch.equal(before[:, 0], after[:, 0]) and torch.equal(before[:, -1], after[:, -1])


def test_local_dir_round_trip_keeps_the_stem_buffers(convstem, tmp_path):
    with torch.no_grad():  # non-default BatchNorm statistics, so they must round-trip too
        for m in convstem.model.visual.trunk.patch_embed.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    export_local_dir(convstem.model, convstem.tokenizer, convstem.model_cfg, tmp_path / "oc")
    loaded = build_clip(f"local-dir:{tmp_path / 'oc'}").model.eval()
    images = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(images), convstem.model.encode_image(images),
                                   rtol=0, atol=0)


def test_hf_port_export_refuses_the_stem(convstem, tmp_path):
    with pytest.raises(ValueError, match="convolutional stem"):
        export_hf_port(convstem.model, tmp_path / "port", tokenizer=convstem.tokenizer)
    assert not (tmp_path / "port").exists()


def test_m2ib_hooks_the_blocks_and_maps_the_16_grid(convstem):
    bundle = bundle_from_open_clip(convstem.model, convstem.tokenizer)
    assert bundle.grid_size == (16, 16) and bundle.in_chans == 3
    rng = np.random.default_rng(0)
    images = [rng.random((128, 128)).astype(np.float32) for _ in range(2)]
    pixels, _ = preprocess(bundle, images)
    with torch.no_grad():
        full = convstem.model.encode_image(pixels)
        split = vision_suffix(bundle, vision_prefix(bundle, pixels, 2), 2)
    torch.testing.assert_close(split, full)
    maps = m2ib_saliency(bundle, images, [["a brain tumor"]] * 2,
                         M2IBConfig(layer=2, beta=1.0, steps=2, num_samples=2))
    assert len(maps) == 2 and all(m.shape == (128, 128) and np.isfinite(m).all() for m in maps)


def test_the_16_grid_gets_its_own_box_rule(convstem):
    """The box rule follows the token grid: the conv-stem tower's sharper 16 x 16 maps get the rule
    chosen for them (box_rule_val9.md), the 8 x 8 embedded tower and BiomedCLIP-sized towers keep
    theirs; an explicit per-dataset preset's rule still wins."""
    from finetune.evaluation.evaluate import BOX_RULES, PRESET_BOX_RULES, default_box_rule
    from finetune.evaluation.loading import load_clip_bundle

    bundle = bundle_from_open_clip(convstem.model, convstem.tokenizer)
    committed = load_clip_bundle("embedded-pretrained")
    assert (bundle.family, committed.family) == ("embedded-convstem8", "embedded")
    for b in (bundle, committed):
        rule = default_box_rule(b)
        assert {k: rule[k] for k in BOX_RULES[b.family]} == BOX_RULES[b.family]
    assert default_box_rule(bundle, "embedded-brain")["box_dilation_frac"] == \
        PRESET_BOX_RULES["embedded-brain"]["box_dilation_frac"]


def test_committed_pretrained_convstem_loads_back_from_fp16(convstem):
    """``embedded-convstem8-pretrained``: the committed fp16 file is what the model holds, bit for
    bit (a loader that silently kept the random init, or a file not in fp16, fails), on the
    16 x 16 token grid, and it is trained (not ``convstem``'s random init)."""
    from safetensors.torch import load_file

    from finetune.build import PRETRAINED_DIRS
    from finetune.train_loop import resolve_model_source

    folder = PRETRAINED_DIRS["embedded-convstem8-pretrained"]
    stored = load_file(str(folder / "open_clip_model.safetensors"))
    bundle = build_clip(resolve_model_source("embedded-convstem8-pretrained"))
    assert patch_grid(bundle.model) == (16, 16)
    state = bundle.model.state_dict()
    assert set(stored) <= set(state) and "visual.trunk.patch_embed.proj.weight" in stored
    for k, v in stored.items():
        assert v.dtype == torch.float16 or not v.is_floating_point(), k
        torch.testing.assert_close(state[k], v.to(state[k].dtype), rtol=0, atol=0)
    key = "visual.trunk.patch_embed.proj.weight"
    assert not torch.equal(state[key], convstem.model.state_dict()[key])


def test_missing_pretrained_weights_name_the_model(tmp_path, monkeypatch):
    from finetune import build
    from finetune.build import ModelSourceError, resolve_clip_source

    monkeypatch.setitem(build.PRETRAINED_DIRS, "embedded-convstem8-pretrained", tmp_path)
    with pytest.raises(ModelSourceError, match="embedded-convstem8-pretrained"):
        resolve_clip_source("embedded-convstem8-pretrained")


def test_install_refuses_to_train_another_architecture_into_the_convstem_folder(capsys):
    from finetune.pretrain_embedded import main

    with pytest.raises(SystemExit):
        main(["--dest", "embedded-convstem8-pretrained"])
    assert "needs --install-from" in capsys.readouterr().err


def test_install_refuses_a_run_of_the_other_architecture(tmp_path, capsys, monkeypatch):
    from finetune.build import PRETRAINED_DIRS
    from finetune.modeling.clip_configs import write_embedded_dir
    from finetune.pretrain_embedded import main

    # should the guard fail, the install lands in tmp_path, never in the committed folder
    monkeypatch.setitem(PRETRAINED_DIRS, "embedded-pretrained", tmp_path / "dest")

    write_embedded_dir(tmp_path / "run" / "model", CONVSTEM_VIT_NAME)  # a conv-stem run's export
    with pytest.raises(SystemExit):
        main(["--install-from", str(tmp_path / "run"), "--dest", "embedded-pretrained"])
    assert "not embedded-pretrained's architecture" in capsys.readouterr().err

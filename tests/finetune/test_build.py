"""Loading and exporting BiomedCLIP-family CLIPs: every format loads back to identical outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.build import (
    EMBEDDED_DIR,
    EMBEDDED_PRETRAINED_DIR,
    ModelSourceError,
    build_clip,
)
from finetune.export import export_hf_port, export_local_dir
from finetune.modeling.clip_configs import (
    BIOMEDCLIP_BERT_CONFIG,
    BIOMEDCLIP_MODEL_CFG,
    BIOMEDCLIP_PREPROCESS_CFG,
    embedded_vocab,
    write_embedded_dir,
    write_text_config,
    write_wordpiece_tokenizer,
)
from finetune.modeling.hf_port import open_clip_to_port, port_to_open_clip
from finetune.modeling.tokens import encode_image_tokens, patch_grid

CAPTIONS = ["A brain MRI showing a small, round hypointense brain tumor.",
            "A breast ultrasound showing normal breast tissue with no signs of pathology."]


@pytest.fixture(scope="module")
def embedded():
    torch.manual_seed(0)
    bundle = build_clip("embedded")
    with torch.no_grad():  # a non-default logit scale, so that it must round-trip too
        bundle.model.logit_scale.fill_(3.21)
    return bundle


def _outputs(bundle, images):
    with torch.no_grad():
        text = bundle.tokenizer(CAPTIONS)
        return bundle.model.encode_image(images), bundle.model.encode_text(text)


def _assert_same_model(a, b, images):
    ia, ta = _outputs(a, images)
    ib, tb = _outputs(b, images)
    torch.testing.assert_close(ib, ia, rtol=0, atol=0)
    torch.testing.assert_close(tb, ta, rtol=0, atol=0)
    torch.testing.assert_close(b.model.logit_scale, a.model.logit_scale, rtol=0, atol=0)
    torch.testing.assert_close(b.tokenizer(CAPTIONS), a.tokenizer(CAPTIONS), rtol=0, atol=0)


def test_committed_embedded_dir_is_what_the_writer_writes(tmp_path):
    write_embedded_dir(tmp_path)
    for rel in ("open_clip_config.json", "text_config/config.json", "tokenizer_config.json",
                "tokenizer.json"):
        assert json.loads((tmp_path / rel).read_text()) == json.loads((EMBEDDED_DIR / rel).read_text())


def test_embedded_architecture(embedded):
    model, preprocess, tokenizer = embedded
    trunk = model.visual.trunk
    assert (trunk.embed_dim, len(trunk.blocks), trunk.blocks[0].attn.num_heads) == (128, 6, 2)
    assert patch_grid(model) == (8, 8)
    assert type(model.text.transformer).__name__ == "BertModel"
    ids = tokenizer(CAPTIONS)
    assert ids.shape == (2, 64) and int(ids[0, 0]) == embedded_vocab().index("[CLS]")
    assert int((ids == embedded_vocab().index("[UNK]")).sum()) == 0


def test_encode_image_tokens_matches_encode_image(embedded):
    images = torch.randn(3, 3, 128, 128)
    with torch.no_grad():
        emb, patches = encode_image_tokens(embedded.model, images)
        full = embedded.model.visual.trunk.forward_features(images)
        torch.testing.assert_close(emb, embedded.model.encode_image(images))
    assert patches.shape == (3, 64, 128)
    torch.testing.assert_close(patches, full[:, 1:])


def test_local_dir_round_trip(embedded, tmp_path):
    export_local_dir(embedded.model, embedded.tokenizer, embedded.model_cfg, tmp_path / "oc")
    assert (tmp_path / "oc" / "open_clip_model.safetensors").is_file()
    loaded = build_clip(f"local-dir:{tmp_path / 'oc'}")
    _assert_same_model(embedded, loaded, torch.randn(2, 3, 128, 128))
    again = build_clip(tmp_path / "oc")  # a plain directory is recognised too
    _assert_same_model(embedded, again, torch.randn(1, 3, 128, 128))


def test_hf_port_round_trip(embedded, tmp_path):
    out = export_hf_port(embedded.model, tmp_path / "port", tokenizer=embedded.tokenizer,
                         cfg=embedded.model_cfg)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BiomedCLIPModel"] and config["model_type"] == "clip"
    assert config["text_projection_config"]["intermediate_size"] == (128 + 128) // 2
    keys = set(load_file(str(out / "model.safetensors")))
    assert "vision_model.encoder.layers.5.self_attn.q_proj.weight" in keys
    assert "text_model.encoder.layers.2.self_attn.k_proj.bias" in keys
    assert not any(k.startswith(("visual.", "text.")) for k in keys)
    _assert_same_model(embedded, build_clip(f"hf-port:{out}"), torch.randn(2, 3, 128, 128))


@pytest.mark.parametrize("layout", ["open_clip_train", "flat_model_prefix", "safetensors"])
def test_checkpoint_round_trip(embedded, tmp_path, layout):
    state = embedded.model.state_dict()
    if layout == "open_clip_train":  # what open_clip_train writes under DDP
        path = tmp_path / "epoch_3.pt"
        torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v
                                                             for k, v in state.items()}}, path)
    elif layout == "flat_model_prefix":  # what MedCLIP-SAMv2's convert.py reads
        path = tmp_path / "finetuned.bin"
        torch.save({f"model.{k}": v for k, v in state.items()}, path)
    else:
        from safetensors.torch import save_file
        path = tmp_path / "weights.safetensors"
        save_file({k: v.clone() for k, v in state.items()}, str(path))
    torch.manual_seed(123)  # the base is re-initialised differently: weights must come from file
    loaded = build_clip(f"ckpt:{path}", base="embedded")
    _assert_same_model(embedded, loaded, torch.randn(2, 3, 128, 128))


def test_port_mapping_is_invertible(embedded):
    state = embedded.model.state_dict()
    port = open_clip_to_port(state)
    depth = len(embedded.model.visual.trunk.blocks)
    assert len(port) == len(state) + 4 * depth  # qkv weight and bias each become q, k, v
    assert port["vision_model.embeddings.class_embedding"].shape == (128,)
    back = port_to_open_clip(port)
    assert set(back) == set(state)
    for k, v in state.items():
        torch.testing.assert_close(back[k], v, rtol=0, atol=0)


def test_hf_port_without_open_clip_cfg_needs_biomedclip_sizes(embedded, tmp_path):
    out = export_hf_port(embedded.model, tmp_path / "port", tokenizer=embedded.tokenizer)
    config = json.loads((out / "config.json").read_text())
    del config["open_clip_model_cfg"]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match="no known timm architecture"):
        build_clip(out)


def test_bad_sources_raise(embedded, tmp_path):
    with pytest.raises(ModelSourceError, match="unknown CLIP source"):
        build_clip(str(tmp_path / "nowhere"))
    path = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(3)}}, path)
    with pytest.raises(ModelSourceError, match="does not match"):
        build_clip(f"ckpt:{path}", base="embedded")


@pytest.mark.slow
def test_full_size_biomedclip_architecture_round_trip_and_backward(tmp_path):
    """The real BiomedCLIP config (ViT-B/16 + PubMedBERT-size BERT), text config local, random init."""
    src = tmp_path / "biomedclip"
    write_text_config(src / "text_config", BIOMEDCLIP_BERT_CONFIG)
    write_wordpiece_tokenizer(src, embedded_vocab())
    (src / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": BIOMEDCLIP_MODEL_CFG, "preprocess_cfg": BIOMEDCLIP_PREPROCESS_CFG}))
    torch.manual_seed(0)
    ref = build_clip(f"local-dir:{src}")
    n_params = sum(p.numel() for p in ref.model.parameters())
    assert 190e6 < n_params < 200e6, n_params
    state = ref.model.state_dict()
    assert len(state) == 351 and len(open_clip_to_port(state)) == 399  # design §10 counts
    images = torch.randn(2, 3, 224, 224)

    export_local_dir(ref.model, ref.tokenizer, ref.model_cfg, tmp_path / "oc")
    _assert_same_model(ref, build_clip(f"local-dir:{tmp_path / 'oc'}"), images)
    port = export_hf_port(ref.model, tmp_path / "port", tokenizer=ref.tokenizer)
    config = json.loads((port / "config.json").read_text())
    del config["open_clip_model_cfg"]  # as in MedCLIP-SAMv2's own config.json
    (port / "config.json").write_text(json.dumps(config))
    _assert_same_model(ref, build_clip(f"hf-port:{port}"), images)

    model = ref.model.train()
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(ref.tokenizer(CAPTIONS), normalize=True)
    logits = model.logit_scale.exp() * img @ txt.T
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(2))
    loss.backward()
    assert torch.isfinite(loss)
    for p in (model.visual.trunk.blocks[0].attn.qkv.weight, model.text.proj[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_embedded_dir_path_exists():
    assert Path(EMBEDDED_DIR, "open_clip_config.json").is_file()


def test_embedded_pretrained_loads_committed_weights(embedded):
    if not (EMBEDDED_PRETRAINED_DIR / "open_clip_model.safetensors").is_file():
        pytest.skip("no pre-trained embedded weights committed")
    stored = load_file(str(EMBEDDED_PRETRAINED_DIR / "open_clip_model.safetensors"))
    state = build_clip("embedded-pretrained").model.state_dict()
    key = "visual.trunk.blocks.0.attn.qkv.weight"
    torch.testing.assert_close(state[key], stored[key].to(state[key].dtype), rtol=0, atol=0)
    assert not torch.equal(state[key], embedded.model.state_dict()[key])

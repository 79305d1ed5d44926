"""Export an open_clip CLIP (``finetune.build``'s models) in the two layouts the project loads.

- ``export_local_dir``: an open_clip local dir (``build_clip("local-dir:OUT")``, offline);
- ``export_hf_port``: MedCLIP-SAMv2's HF-port layout (``build_clip("hf-port:OUT")``, their
  ``AutoModel`` loader).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path

import open_clip
import torch
from open_clip.model import get_model_preprocess_cfg
from safetensors.torch import save_file

from finetune.build import HF_PORT_WEIGHTS, LOCAL_DIR_WEIGHTS
from finetune.modeling.clip_configs import TEXT_CONFIG_SUBDIR, model_cfg_from_model
from finetune.modeling.hf_port import open_clip_to_port, port_config
from finetune.modeling.vit import has_single_patch_conv


def _state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone each tensor (the model has no tied weights).
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def export_local_dir(
    model: open_clip.CustomTextCLIP,
    tokenizer: Callable,
    cfg: dict | None,
    out_dir: str | Path,
) -> Path:
    """Write an open_clip local dir loadable by ``build_clip("local-dir:OUT")`` offline.

    Files: ``open_clip_config.json`` (``model_cfg`` = ``cfg`` or reconstructed from the model,
    ``preprocess_cfg``), ``open_clip_model.safetensors``, ``text_config/config.json`` (BERT config),
    tokenizer files (``tokenizer.save_pretrained``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    context_length = getattr(tokenizer, "context_length", None)
    model_cfg = deepcopy(cfg) if cfg else model_cfg_from_model(model, context_length=context_length)
    model.text.config.save_pretrained(out / TEXT_CONFIG_SUBDIR)
    tokenizer.save_pretrained(str(out))
    preprocess_cfg = {k: v for k, v in get_model_preprocess_cfg(model).items() if k != "size"}
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(_state_for_saving(model), str(out / LOCAL_DIR_WEIGHTS))
    return out


def export_hf_port(
    model: open_clip.CustomTextCLIP,
    out_dir: str | Path,
    *,
    tokenizer: Callable | None = None,
    cfg: dict | None = None,
) -> Path:
    """Write MedCLIP-SAMv2's HF-port layout: ``config.json`` + ``model.safetensors`` (+ tokenizer).

    Keys follow their ``convert.py`` (design §10). Their ``modeling_biomed_clip.py`` and
    ``configuration_biomed_clip.py`` are not ours to ship: copy them from their repo next to
    these files to load with ``AutoModel.from_pretrained(dir, trust_remote_code=True)``
    (transformers 4.35-4.47).
    """
    trunk = model.visual.trunk
    if not has_single_patch_conv(trunk):
        raise ValueError("HF-port export needs a ViT with one patch-embedding conv; this trunk has "
                         f"a convolutional stem ({type(trunk.patch_embed).__name__})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vision = {
        "width": trunk.embed_dim,
        "depth": len(trunk.blocks),
        "heads": trunk.blocks[0].attn.num_heads,
        "mlp_dim": trunk.blocks[0].mlp.fc1.out_features,
        "image_size": int(model.visual.image_size[0]),
        "patch_size": int(trunk.patch_embed.patch_size[0]),
    }
    bert = model.text.config.to_dict()
    bert_keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "hidden_act", "hidden_dropout_prob",
                 "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
                 "initializer_range", "layer_norm_eps", "pad_token_id")
    text_config = {"model_type": "bert", **{k: bert[k] for k in bert_keys}}
    model_cfg = deepcopy(cfg) if cfg else model_cfg_from_model(model)
    config = port_config(model_cfg, text_config, vision, float(model.logit_scale.detach()))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(open_clip_to_port(_state_for_saving(model)), str(out / HF_PORT_WEIGHTS))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out

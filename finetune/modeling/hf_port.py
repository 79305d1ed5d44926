"""State-dict mapping between open_clip BiomedCLIP and MedCLIP-SAMv2's Hugging Face port.

MedCLIP-SAMv2's saliency step loads ``AutoModel.from_pretrained(dir, trust_remote_code=True)``
(``saliency_maps/model/``: ``config.json`` with architectures ["BiomedCLIPModel"],
``modeling_biomed_clip.py``). Their ``convert.py`` renames open_clip keys as tabulated below and
splits the fused vision ``qkv`` into ``q_proj/k_proj/v_proj`` (design §10). Our mapping is a
renaming table applied in either direction; keys matching no rule (``logit_scale``) pass through.
The config written here follows their ``config.json``; we keep an extra ``open_clip_model_cfg``
entry so a port of a non-BiomedCLIP-size model (our embedded one) can be rebuilt exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# (open_clip key, port key); {n} = layer index, {p} = parameter name (weight/bias).
_RENAMES: tuple[tuple[str, str], ...] = (
    ("visual.head.proj.{p}", "visual_projection.{p}"),
    ("visual.trunk.norm.{p}", "vision_model.post_layernorm.{p}"),
    ("visual.trunk.patch_embed.proj.{p}", "vision_model.embeddings.patch_embedding.{p}"),
    ("visual.trunk.blocks.{n}.norm1.{p}", "vision_model.encoder.layers.{n}.layer_norm1.{p}"),
    ("visual.trunk.blocks.{n}.norm2.{p}", "vision_model.encoder.layers.{n}.layer_norm2.{p}"),
    ("visual.trunk.blocks.{n}.attn.proj.{p}", "vision_model.encoder.layers.{n}.self_attn.out_proj.{p}"),
    ("visual.trunk.blocks.{n}.mlp.fc1.{p}", "vision_model.encoder.layers.{n}.mlp.fc1.{p}"),
    ("visual.trunk.blocks.{n}.mlp.fc2.{p}", "vision_model.encoder.layers.{n}.mlp.fc2.{p}"),
    ("text.transformer.embeddings.word_embeddings.{p}", "text_model.embeddings.token_embedding.{p}"),
    ("text.transformer.embeddings.position_embeddings.{p}",
     "text_model.embeddings.position_embedding.{p}"),
    ("text.transformer.embeddings.token_type_embeddings.{p}",
     "text_model.embeddings.token_type_embedding.{p}"),
    ("text.transformer.embeddings.LayerNorm.{p}", "text_model.embeddings.layer_norm.{p}"),
    ("text.transformer.encoder.layer.{n}.attention.self.query.{p}",
     "text_model.encoder.layers.{n}.self_attn.q_proj.{p}"),
    ("text.transformer.encoder.layer.{n}.attention.self.key.{p}",
     "text_model.encoder.layers.{n}.self_attn.k_proj.{p}"),
    ("text.transformer.encoder.layer.{n}.attention.self.value.{p}",
     "text_model.encoder.layers.{n}.self_attn.v_proj.{p}"),
    ("text.transformer.encoder.layer.{n}.attention.output.dense.{p}",
     "text_model.encoder.layers.{n}.self_attn.out_proj.{p}"),
    ("text.transformer.encoder.layer.{n}.attention.output.LayerNorm.{p}",
     "text_model.encoder.layers.{n}.layer_norm1.{p}"),
    ("text.transformer.encoder.layer.{n}.intermediate.dense.{p}",
     "text_model.encoder.layers.{n}.mlp.fc1.{p}"),
    ("text.transformer.encoder.layer.{n}.output.dense.{p}", "text_model.encoder.layers.{n}.mlp.fc2.{p}"),
    ("text.transformer.encoder.layer.{n}.output.LayerNorm.{p}",
     "text_model.encoder.layers.{n}.layer_norm2.{p}"),
    ("text.proj.0.{p}", "text_projection.fc1.{p}"),
    ("text.proj.2.{p}", "text_projection.fc2.{p}"),
)
_QKV = "visual.trunk.blocks.{n}.attn.qkv.{p}"
_QKV_PORT = "vision_model.encoder.layers.{n}.self_attn.{proj}.{p}"
_CLS = ("visual.trunk.cls_token", "vision_model.embeddings.class_embedding")
_POS = ("visual.trunk.pos_embed", "vision_model.embeddings.position_embedding.weight")


def _regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{p\}", r"(?P<p>\w+)")
    return re.compile(pattern + "$")


_TO_PORT = [(_regex(src), dst) for src, dst in _RENAMES]
_TO_OPEN_CLIP = [(_regex(dst), src) for src, dst in _RENAMES]
_QKV_RE = _regex(_QKV)
_QKV_PORT_RE = re.compile(
    r"vision_model\.encoder\.layers\.(?P<n>\d+)\.self_attn\.(?P<proj>[qkv])_proj\.(?P<p>\w+)$"
)


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in rules:
        if m := pattern.match(key):
            return template.format(**m.groupdict())
    return None


def open_clip_to_port(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an open_clip BiomedCLIP state dict to the HF-port names (qkv split in 3 on dim 0)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if m := _QKV_RE.match(key):
            for proj, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[_QKV_PORT.format(n=m["n"], proj=proj, p=m["p"])] = chunk.contiguous()
        elif key == _CLS[0]:
            out[_CLS[1]] = value.reshape(value.shape[-1]).contiguous()  # (1, 1, W) -> (W,)
        elif key == _POS[0]:
            out[_POS[1]] = value.squeeze(0).contiguous()  # (1, T, W) -> (T, W)
        else:
            out[_rename(key, _TO_PORT) or key] = value
    return out


def port_to_open_clip(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`open_clip_to_port`: concatenate q,k,v, reshape CLS/pos, reverse renames."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if m := _QKV_PORT_RE.match(key):
            qkv.setdefault((m["n"], m["p"]), {})[m["proj"]] = value
        elif key == _CLS[1]:
            out[_CLS[0]] = value.reshape(1, 1, -1)  # (W,) -> (1, 1, W)
        elif key == _POS[1]:
            out[_POS[0]] = value.unsqueeze(0)  # (T, W) -> (1, T, W)
        else:
            out[_rename(key, _TO_OPEN_CLIP) or key] = value
    for (n, p), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"HF port vision layer {n} {p}: expected q, k and v, got {sorted(parts)}")
        out[_QKV.format(n=n, p=p)] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def port_config(model_cfg: dict, bert_config: dict, vision: dict, logit_scale: float) -> dict:
    """``config.json`` of the HF port, in the layout of MedCLIP-SAMv2's ``saliency_maps/model``.

    ``vision`` holds the timm trunk's sizes: width, depth, heads, mlp_dim, image_size, patch_size.
    """
    text_proj = {
        "hidden_size": bert_config["hidden_size"],
        "intermediate_size": (bert_config["hidden_size"] + model_cfg["embed_dim"]) // 2,
        "projection_dim": model_cfg["embed_dim"],
        "hidden_act": "gelu",
    }
    vision_config = {
        "attention_probs_dropout_prob": 0.0,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "hidden_size": vision["width"],
        "image_size": vision["image_size"],
        "initializer_range": 0.02,
        "intermediate_size": vision["mlp_dim"],
        "layer_norm_eps": 1e-12,  # the port's value (timm uses 1e-6; design §10)
        "model_type": "vit",
        "num_attention_heads": vision["heads"],
        "num_channels": 3,
        "num_hidden_layers": vision["depth"],
        "patch_size": vision["patch_size"],
        "qkv_bias": True,
    }
    return {
        "architectures": ["BiomedCLIPModel"],
        "auto_map": {
            "AutoConfig": "configuration_biomed_clip.BiomedCLIPConfig",
            "AutoModel": "modeling_biomed_clip.BiomedCLIPModel",
        },
        "initializer_factor": 1.0,
        "logit_scale_init_value": logit_scale,
        "model_type": "clip",
        "projection_dim": model_cfg["embed_dim"],
        "text_config": dict(bert_config),
        "text_projection_config": text_proj,
        "torch_dtype": "float32",
        "vision_config": vision_config,
        "open_clip_model_cfg": model_cfg,
    }

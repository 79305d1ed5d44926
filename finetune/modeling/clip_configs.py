"""Architecture configs of the real BiomedCLIP and of our embedded small CLIP of the same family.

Both are open_clip ``model_cfg`` dicts: a timm ViT vision tower (``vision_cfg.timm_model_name``)
and a Hugging Face BERT text tower (``text_cfg.hf_model_name``) inside open_clip's
``CustomTextCLIP``. Values of the real model come from its hub ``open_clip_config.json``
(microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224) and PubMedBERT's ``config.json``.
This module holds data, writes small config files and reads a built model's config back
(:func:`model_cfg_from_model`); it loads no weights.
"""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.modeling.vit import CONVSTEM_VIT_NAME, EMBEDDED_VIT_NAME

if TYPE_CHECKING:
    from open_clip import CustomTextCLIP

BIOMEDCLIP_HUB_ID = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
PUBMEDBERT_ID = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
# Name of the sub-directory of a local dir that holds the BERT text config (read by AutoConfig).
TEXT_CONFIG_SUBDIR = "text_config"

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

BIOMEDCLIP_MODEL_CFG: dict = {
    "embed_dim": 512,
    "vision_cfg": {
        "timm_model_name": "vit_base_patch16_224",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 224,
    },
    "text_cfg": {
        "hf_model_name": PUBMEDBERT_ID,
        "hf_tokenizer_name": PUBMEDBERT_ID,
        "hf_proj_type": "mlp",
        "hf_pooler_type": "cls_last_hidden_state_pooler",
        "context_length": 256,
    },
}
BIOMEDCLIP_PREPROCESS_CFG: dict = {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)}

# PubMedBERT (BERT-base, uncased, 30522 word pieces); the port's text_config (design §10).
BIOMEDCLIP_BERT_CONFIG: dict = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}

# Embedded model (design §8): ViT 128²/16, width 128, depth 6, 2 heads; BERT width 128, 3 layers.
EMBEDDED_MODEL_CFG: dict = {
    "embed_dim": 128,
    "vision_cfg": {
        "timm_model_name": EMBEDDED_VIT_NAME,
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": 128,
    },
    "text_cfg": {
        # Relative names are resolved against the local dir by finetune.build.
        "hf_model_name": TEXT_CONFIG_SUBDIR,
        "hf_tokenizer_name": ".",
        "hf_proj_type": "mlp",
        "hf_pooler_type": "cls_last_hidden_state_pooler",
        "context_length": 64,
    },
}
EMBEDDED_PREPROCESS_CFG: dict = {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)}

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Words of the benchmark's captions (shared.benchmark.lesions) and of common radiology prompts;
# single letters, digits and "##x" continuation pieces make every lower-case word tokenizable.
_WORDS = """
a an the of with in on at and or no not without to from by for is are as showing shows show
image images scan photograph study imaging view slice region regions area margin margins
brain mri ct chest x - ray xray lung lungs nodule nodules fields clear retina retinal fundus
breast ultrasound tumor tumors tumour lesion lesions mass masses cyst normal healthy tissue
signs sign pathology pathological abnormal abnormality benign malignant suggestive cancer
small large medium sized medium-sized round lobulated irregular irregularly shaped shape
ill-defined well-defined well defined ill circumscribed well-circumscribed opacity dense dark
bright ring-enhancing ring enhancing hypointense hyperintense hypoechoic hyperechoic
hemorrhage exudate edema surrounding upper lower left right central middle the
glioma meningioma carcinoma metastasis polyp skin melanoma organ liver kidney
""".split()
_PUNCT = list(".,;:()/'\"-+%")


def embedded_vocab() -> list[str]:
    """WordPiece vocabulary of the embedded tokenizer: specials, words, letters, pieces, punctuation."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    tokens = _SPECIAL + _WORDS + letters + ["##" + t for t in letters] + _PUNCT
    seen: dict[str, None] = {}
    for t in tokens:
        seen.setdefault(t, None)
    return list(seen)


def embedded_bert_config(vocab_size: int) -> dict:
    """Tiny BERT text-tower config of the embedded model (same fields as PubMedBERT's)."""
    cfg = deepcopy(BIOMEDCLIP_BERT_CONFIG)
    cfg.update(
        vocab_size=vocab_size,
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=512,
        max_position_embeddings=64,
    )
    return cfg


def write_text_config(out_dir: str | Path, bert_config: dict) -> Path:
    """Write ``bert_config`` as a transformers ``BertConfig`` directory (``config.json``)."""
    from transformers import BertConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in bert_config.items() if k != "model_type"}
    BertConfig(**cfg).save_pretrained(out)
    return out


def write_wordpiece_tokenizer(out_dir: str | Path, vocab: list[str]) -> Path:
    """Write a lower-casing BERT WordPiece tokenizer built offline from ``vocab``."""
    from transformers import BertTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(out)
    return out


def write_embedded_dir(out_dir: str | Path, vision: str = EMBEDDED_VIT_NAME) -> Path:
    """Write the embedded model's open_clip local dir, without weights.

    Layout: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``), ``text_config/``
    (BERT config), tokenizer files. ``finetune/modeling/embedded/`` is this function's output,
    committed; the weights (``open_clip_model.safetensors``) are added there by pre-training.
    ``vision`` names the registered timm trunk (``finetune.modeling.vit``):
    ``finetune/modeling/embedded_convstem8/`` is the output with ``CONVSTEM_VIT_NAME``.
    """
    if vision not in (EMBEDDED_VIT_NAME, CONVSTEM_VIT_NAME):
        raise ValueError(f"vision={vision!r}: expected {EMBEDDED_VIT_NAME} or {CONVSTEM_VIT_NAME}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = embedded_vocab()
    write_text_config(out / TEXT_CONFIG_SUBDIR, embedded_bert_config(len(vocab)))
    write_wordpiece_tokenizer(out, vocab)
    model_cfg = deepcopy(EMBEDDED_MODEL_CFG)
    model_cfg["vision_cfg"]["timm_model_name"] = vision
    config = {"model_cfg": model_cfg, "preprocess_cfg": EMBEDDED_PREPROCESS_CFG}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def model_cfg_from_model(
    model: CustomTextCLIP, *, context_length: int | None = None
) -> dict:
    """Reconstruct an open_clip ``model_cfg`` of a built BiomedCLIP-family model.

    The timm architecture name comes from ``trunk.pretrained_cfg``; the text tower's config is
    referenced as ``text_config`` (exports write it there). ``context_length`` is the tokenizer's
    (default: min(256, BERT max positions), BiomedCLIP's 256).
    """
    trunk = model.visual.trunk
    if context_length is None:
        context_length = min(256, int(model.text.config.max_position_embeddings))
    return {
        "embed_dim": model.visual.head.proj.out_features,
        "vision_cfg": {
            "timm_model_name": trunk.pretrained_cfg["architecture"],
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": int(model.visual.image_size[0]),
        },
        "text_cfg": {
            "hf_model_name": TEXT_CONFIG_SUBDIR,
            "hf_tokenizer_name": ".",
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": int(context_length),
        },
    }

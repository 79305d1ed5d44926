"""Load a CLIP model for evaluation through the fine-tuning package's builder.

``finetune.build.build_clip`` understands ``embedded``, ``hf-hub:ID`` (e.g. BiomedCLIP),
``local-dir:DIR``, ``hf-port:DIR`` (MedCLIP-SAMv2's HF port), ``ckpt:FILE`` and plain
directories/files; here its result is turned into the evaluation's :class:`ClipBundle`
(model + tokenizer + geometry).
"""

from __future__ import annotations

from pathlib import Path

from finetune.evaluation.adabn import adapt_batchnorm
from finetune.evaluation.clip_bundle import ClipBundle, bundle_from_open_clip, model_family
from shared.config import ConfigError
from shared.datasets import list_images
from shared.io import read_image


class ModelLoadError(ConfigError):
    """The model specification cannot be resolved to a CLIP model (a user's mistake)."""


def load_clip_bundle(spec: str | Path, *, device: str = "cpu",
                     adapt_bn: str | Path | None = None) -> ClipBundle:
    """Build the CLIP named by ``spec`` (see ``finetune.build.build_clip``) in eval mode; with
    ``adapt_bn`` (a folder of unlabelled images of the target source) its vision tower's
    BatchNorm statistics re-estimated on them (:func:`adabn.adapt_batchnorm`)."""
    from finetune.build import build_clip

    built = build_clip(str(spec), device=device)
    model, tokenizer = getattr(built, "model", None), getattr(built, "tokenizer", None)
    if model is None or tokenizer is None:
        raise ModelLoadError(f"build_clip({spec!r}) returned no model/tokenizer")
    bundle = bundle_from_open_clip(model.eval(), tokenizer)
    if adapt_bn is not None:
        adapt_batchnorm(bundle, [read_image(p) for p in list_images(adapt_bn)])
    return bundle


def clip_family(spec: str | Path) -> str:
    """``ClipBundle.family`` of the CLIP named by ``spec`` (the key of its box rule). An open_clip
    local dir (the embedded models, every fine-tune the ablation writes) is read from its
    ``open_clip_config.json``: the timm tower is built without weights, the text tower not at all;
    any other source is loaded."""
    import timm

    import finetune.modeling.vit  # noqa: F401  (registers our timm ViTs)
    from finetune.build import _model_cfg_of, _read_json, resolve_clip_source

    kind, where = resolve_clip_source(str(spec))
    if kind == "local-dir":
        path = Path(where) / "open_clip_config.json"
        vision = _model_cfg_of(_read_json(path, "open_clip config"), path)["vision_cfg"]
        if vision.get("timm_model_name") and vision.get("image_size"):
            trunk = timm.create_model(vision["timm_model_name"], pretrained=False, num_classes=0)
            return model_family(len(trunk.blocks), int(vision["image_size"]),
                                trunk.patch_embed.grid_size)
    return load_clip_bundle(spec).family

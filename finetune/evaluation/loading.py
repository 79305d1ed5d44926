"""Load a CLIP model for evaluation through the fine-tuning package's builder.

``finetune.build.build_clip`` understands ``embedded``, ``hf-hub:ID`` (e.g. BiomedCLIP),
``local-dir:DIR``, ``hf-port:DIR`` (MedCLIP-SAMv2's HF port), ``ckpt:FILE`` and plain
directories/files; here its result is turned into the evaluation's :class:`ClipBundle`
(model + tokenizer + geometry).
"""

from __future__ import annotations

from pathlib import Path

from finetune.evaluation.clip_bundle import ClipBundle, bundle_from_open_clip
from shared.config import ConfigError


class ModelLoadError(ConfigError):
    """The model specification cannot be resolved to a CLIP model (a user's mistake)."""


def load_clip_bundle(spec: str | Path, *, device: str = "cpu") -> ClipBundle:
    """Build the CLIP named by ``spec`` (see ``finetune.build.build_clip``) in eval mode."""
    from finetune.build import build_clip

    built = build_clip(str(spec), device=device)
    model, tokenizer = getattr(built, "model", None), getattr(built, "tokenizer", None)
    if model is None or tokenizer is None:
        raise ModelLoadError(f"build_clip({spec!r}) returned no model/tokenizer")
    return bundle_from_open_clip(model.eval(), tokenizer)

"""Load a CLIP model for evaluation from a name, a directory or an open_clip identifier.

- ``embedded`` (or anything else ``finetune.build.build_clip`` accepts, e.g. a fine-tuned
  checkpoint directory written by our trainer) -> the fine-tuning package's builder;
- ``hf-hub:ORG/REPO`` (e.g. ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``)
  or ``local-dir:DIR`` -> open_clip's own loader and tokenizer (hub access needed for hf-hub);
- a directory holding ``open_clip_config.json`` -> ``local-dir:`` that directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from finetune.evaluation.clip_bundle import ClipBundle, bundle_from_open_clip


class ModelLoadError(ValueError):
    """The model specification cannot be resolved to a CLIP model."""


def _from_open_clip(spec: str, device: str) -> ClipBundle:
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms(spec, device=device)
    return bundle_from_open_clip(model.eval(), open_clip.get_tokenizer(spec))


def _as_bundle(built: object) -> ClipBundle:
    """Accept what ``finetune.build.build_clip`` returns: a model, or (model, tokenizer, ...)."""
    if isinstance(built, ClipBundle):
        return built
    model, tokenizer = built, None
    if isinstance(built, tuple | list):
        model = built[0]
        tokenizer = next((x for x in built[1:] if callable(x) and not isinstance(x, torch.nn.Module)), None)
    for attr in ("model", "clip"):
        if not hasattr(model, "visual") and hasattr(model, attr):
            tokenizer = tokenizer or getattr(model, "tokenizer", None)
            model = getattr(model, attr)
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ModelLoadError("finetune.build.build_clip returned no tokenizer to encode prompts with")
    return bundle_from_open_clip(model, tokenizer)


def load_clip_bundle(spec: str | Path, *, device: str = "cpu") -> ClipBundle:
    """Resolve ``spec`` (see module docstring) to a :class:`ClipBundle` in eval mode."""
    spec = str(spec)
    if spec.startswith(("hf-hub:", "local-dir:")):
        return _from_open_clip(spec, device)
    if Path(spec).is_dir() and (Path(spec) / "open_clip_config.json").is_file():
        return _from_open_clip(f"local-dir:{spec}", device)
    try:
        from finetune import build
    except ImportError as exc:
        raise ModelLoadError(f"cannot load model {spec!r}: finetune.build is unavailable ({exc})") from exc
    built = build.build_clip(spec, device=device) if _accepts_device(build.build_clip) else build.build_clip(spec)
    bundle = _as_bundle(built)
    bundle.model.to(device).eval()
    return bundle


def _accepts_device(fn) -> bool:
    import inspect

    try:
        return "device" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False

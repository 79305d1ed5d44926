"""Zero-shot classification with a CLIP bundle: softmax over class-prompt similarities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from finetune.evaluation.clip_bundle import ClipBundle, encode_prompts, frozen_eval, preprocess


@torch.no_grad()
def zero_shot_probs(
    bundle: ClipBundle,
    images: Sequence[np.ndarray],
    class_prompts: Mapping[str, Sequence[str]],
    *,
    batch_size: int = 32,
) -> tuple[np.ndarray, list[str]]:
    """(N, C) softmax(logit_scale · cos(image, class_text)) and the C class names (dict order).

    Each class's captions are an ensemble (mean of normalised text embeddings).
    """
    classes = list(class_prompts)
    if len(classes) < 2:
        raise ValueError(f"zero-shot classification needs >= 2 classes, got {classes}")
    with frozen_eval(bundle.model):
        text = encode_prompts(bundle, [list(class_prompts[c]) for c in classes])  # (C, E)
        scale = bundle.model.logit_scale.exp() if hasattr(bundle.model, "logit_scale") else 100.0
        out = []
        for start in range(0, len(images), batch_size):
            pixels, _ = preprocess(bundle, images[start : start + batch_size])
            emb = torch.nn.functional.normalize(bundle.model.encode_image(pixels).float(), dim=-1)
            out.append((scale * emb @ text.T).softmax(dim=-1))
    return torch.cat(out).cpu().numpy(), classes

"""The demo's zero-shot row for the evaluation default: the CLIP ``python -m finetune.evaluate``
uses when none is named (``cli.DEFAULT_MODEL``, the conv-stem model), on the very test positives
of the ablation's tables, with its own box rule (``evaluate.BOX_RULES[bundle.family]``) and the
ablation's M2IB settings (block 3 alone), paired against the fine-tuning base model's "none" row.
The model's own preset (blocks 3 and 1 fused since session 40) doubles the row's M2IB work: tried,
the demo took 706 s on a fresh clone, over its 10-minute budget, so the row keeps one block.

The ablation fine-tunes the 8 x 8-token ``embedded-pretrained`` (a conv-stem fine-tune costs about
four times as much per step); this row shows what a user's unlabelled scan gets today.
"""

from __future__ import annotations

import json

from finetune.ablation import AblationConfig, results_dir
from finetune.ablation_eval import with_box_rule
from finetune.ablation_report import build_rows

LABEL = "default eval model"  # zero-shot: no fine-tune


def default_model_config(abl: AblationConfig, bundle) -> AblationConfig:
    """The ablation's settings with the model's own saliency -> box rule."""
    from finetune.evaluation.evaluate import BOX_RULES

    return with_box_rule(abl, BOX_RULES[bundle.family])


def load_default_bundle():
    from finetune.evaluation.cli import DEFAULT_MODEL
    from finetune.evaluation.loading import load_clip_bundle

    return load_clip_bundle(DEFAULT_MODEL)


def default_model_rows(abl: AblationConfig, domain: str) -> list[dict]:
    """Rows (``ablation_report.build_rows`` format, Δ vs the ablation's "none") of the default
    evaluation model on ``domain``'s evaluation set; its per-image results are kept beside the
    ablation's (``default_model__seed<eval_seed>.json``) and reused."""
    from finetune.ablation_eval import cached_segmenter, evaluate_model, load_eval_set

    folder = results_dir(abl, domain)
    path = folder / f"default_model__seed{abl.eval_seed}.json"
    if path.is_file():
        result = json.loads(path.read_text())
    else:
        bundle = load_default_bundle()
        segmenter = cached_segmenter(abl.segmenter_checkpoint, abl.embedding_cache_dir)
        result = evaluate_model(default_model_config(abl, bundle), bundle,
                                load_eval_set(abl, domain), segmenter)
        path.write_text(json.dumps(result))
    none = json.loads((folder / f"none__seed{abl.eval_seed}.json").read_text())
    rows = build_rows({"none": {abl.eval_seed: none}, LABEL: {abl.eval_seed: result}}, {},
                      n_resamples=abl.n_resamples, seed=abl.eval_seed)
    return [r for r in rows if r["variant"] == LABEL]

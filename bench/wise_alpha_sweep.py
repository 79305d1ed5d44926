"""Re-score finished ablation fine-tunes at other WiSE-FT weights α', without retraining.

A variant is exported at ``θ_α = θ0 + α (θ − θ0)`` (``finetune.train_loop.interpolate_weights``,
its training config's ``wise_alpha``). The line is linear, so from the start θ0 (the run's base
model, built as the trainer builds it) and the fp32 export θ_α the model at any α' is
``θ0 + (α'/α)(θ_α − θ0)`` — the same function with weight α'/α (> 1 extrapolates along the line;
exact up to fp32 rounding). Each re-weighted model is scored with the ablation's own evaluation
(``evaluate_model``, same positives, segmenter, M2IB settings) into ``--out/results`` as
``<variant>@a<α'>__seed<k>.json``, beside copies of the folder's α results, so that
``bench/ablation_pairs.py`` pairs them:

    python bench/wise_alpha_sweep.py --config configs/ablation/negatives.yaml domain=breast_us \
        output_dir=runs/val_s2forms_breast 'splits=[val]' 'also_domains=[]' \
        base_model=embedded-convstem8-pretrained 'variants=[stage1,stage1+2-gt]' 'seeds=[0]' \
        --alphas 0.6 1.0 --out runs/val_s2forms_breast_alpha
    python bench/ablation_pairs.py runs/val_s2forms_breast_alpha/results \
        stage1+2-gt@a1.0:stage1@a1.0 stage1@a1.0:none
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.ablation import (  # noqa: E402
    cached_segmenter,
    evaluate_model,
    load_ablation_config,
    load_eval_set,
    results_dir,
    variant_run,
)
from finetune.build import build_clip  # noqa: E402
from finetune.evaluation.clip_bundle import bundle_from_open_clip  # noqa: E402
from finetune.train_loop import EXPORT, interpolate_weights, resolve_model_source  # noqa: E402
from shared.config import ConfigError  # noqa: E402
from shared.io import write_text_atomic  # noqa: E402


def reweighted_state(start: dict[str, torch.Tensor], exported: dict[str, torch.Tensor],
                     alpha: float, new_alpha: float) -> dict[str, torch.Tensor]:
    """θ0 + (α'/α)(θ_α − θ0): the WiSE-FT model at ``new_alpha`` from one exported at ``alpha``."""
    if not 0.0 < alpha <= 1.0 or not 0.0 <= new_alpha <= 1.0:
        raise ConfigError(f"WiSE-FT weights must lie in (0, 1] (export) and [0, 1] (new); "
                          f"got {alpha} and {new_alpha}")
    return interpolate_weights(start, exported, new_alpha / alpha)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the ablation config the runs were made with")
    ap.add_argument("overrides", nargs="*", help="the same key=value overrides")
    ap.add_argument("--alphas", type=float, nargs="+", required=True, help="new WiSE-FT weights")
    ap.add_argument("--out", required=True, help="folder for results/ (created)")
    args = ap.parse_args(argv)
    cfg = load_ablation_config(args.config, args.overrides)
    torch.set_num_threads(cfg.threads)
    src, dst = results_dir(cfg), Path(args.out) / "results"
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.glob("*.json"):  # the α results and the model-independent rows, as measured
        shutil.copy2(path, dst / path.name)
    segmenter = cached_segmenter(cfg.segmenter_checkpoint, cfg.embedding_cache_dir)
    data = load_eval_set(cfg)
    starts: dict[str, dict[str, torch.Tensor]] = {}  # base model source -> θ0, built once
    for variant in cfg.variants:
        for seed in cfg.seeds:
            _, _, run = variant_run(cfg, variant, seed)
            if not (run / EXPORT).is_dir():
                raise ConfigError(f"{run / EXPORT}: no finished export; run the ablation first")
            train_cfg = json.loads((run / "config.json").read_text())
            source = resolve_model_source(train_cfg["model"])
            if source not in starts:
                starts[source] = build_clip(source).model.state_dict()
            start = starts[source]
            bundle = build_clip(f"local-dir:{run / EXPORT}")
            exported = {k: v.detach().clone() for k, v in bundle.model.state_dict().items()}
            if any(t.dtype == torch.float16 for t in exported.values()):
                raise ConfigError(f"{run / EXPORT}: fp16 export; re-weighting needs fp32 weights")
            for new_alpha in args.alphas:
                target = dst / f"{variant}@a{new_alpha}__seed{seed}.json"
                if target.is_file():
                    continue
                bundle.model.load_state_dict(
                    reweighted_state(start, exported, float(train_cfg["wise_alpha"]), new_alpha))
                result = evaluate_model(cfg, bundle_from_open_clip(bundle.model, bundle.tokenizer),
                                        data, segmenter)
                write_text_atomic(target, json.dumps(result))
                print(f"[wise-alpha] {variant} seed {seed} α {new_alpha} -> {target}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

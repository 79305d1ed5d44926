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

Layer-wise (``--early-blocks N``): the vision tower's input layers (patch / conv stem, class and
positional embeddings) and its first N transformer blocks are put back at θ0 (α' = 0 there), every
other tensor at α' (``<variant>@a<α'>e<N>``). The export rule does not touch training, so this is
the model a fine-tune exported that way would be. It asks whether what a fine-tune costs the early
blocks' M2IB map (bench/results/negatives_fused_readout.md) lives in those blocks' own weights.
``--bn-stats-at-start`` also puts the BatchNorm running statistics (buffers a fine-tune in train
mode re-estimates) back at θ0 (``…bn0``): learned weights and batch statistics, told apart.
Results are copied from the ablation's folder only when its recorded setup is this one (same
split(s), positives, readout, box rule); ``--alphas 0`` scores θ0 itself (the ``none`` row) on a new split.
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
    AblationConfig,
    cached_segmenter,
    evaluate_model,
    load_ablation_config,
    load_eval_set,
    results_dir,
    variant_run,
)
from finetune.ablation_setup import setup_diff  # noqa: E402
from finetune.build import build_clip  # noqa: E402
from finetune.evaluation.clip_bundle import bundle_from_open_clip  # noqa: E402
from finetune.train_loop import EXPORT, interpolate_weights, resolve_model_source  # noqa: E402
from shared.config import ConfigError  # noqa: E402
from shared.io import write_text_atomic  # noqa: E402


def reweighted_state(start: dict[str, torch.Tensor], exported: dict[str, torch.Tensor],
                     alpha: float, new_alpha: float, early_blocks: int = 0) -> dict[str, torch.Tensor]:
    """θ0 + (α'/α)(θ_α − θ0): the WiSE-FT model at ``new_alpha`` from one exported at ``alpha``;
    ``early_blocks`` = N > 0 puts the vision stem and blocks < N at θ0, the trainer's own rule
    (``TrainConfig.wise_early_blocks``)."""
    if not 0.0 < alpha <= 1.0 or not 0.0 <= new_alpha <= 1.0:
        raise ConfigError(f"WiSE-FT weights must lie in (0, 1] (export) and [0, 1] (new); "
                          f"got {alpha} and {new_alpha}")
    return interpolate_weights(start, exported, new_alpha / alpha, early_blocks=early_blocks)


BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def with_start_bn_stats(state: dict[str, torch.Tensor],
                        start: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every BatchNorm running statistic (buffers, not learned) back at θ0's: a
    fine-tune in train mode re-estimates them on its own domain's batches (the conv stem's move
    ~18 % on a 100-step breast fine-tune, its weights < 1 %)."""
    return {k: (start[k].to(v.dtype) if k.endswith(BN_STATS) else v) for k, v in state.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the ablation config the runs were made with")
    ap.add_argument("overrides", nargs="*", help="the same key=value overrides")
    ap.add_argument("--alphas", type=float, nargs="+", required=True, help="new WiSE-FT weights")
    ap.add_argument("--early-blocks", type=int, nargs="+", default=[0],
                    help="score each α' with the stem and the first N vision blocks at θ0 "
                         "(0: no layer at θ0, the plain line; default)")
    ap.add_argument("--bn-stats-at-start", action="store_true",
                    help="also put the BatchNorm running statistics back at θ0 (tag suffix bn0)")
    ap.add_argument("--out", required=True, help="folder for results/ (created)")
    args = ap.parse_args(argv)
    if any(n < 0 for n in args.early_blocks):
        raise SystemExit(f"--early-blocks must be >= 0, got {args.early_blocks}")
    cfg = load_ablation_config(args.config, args.overrides)
    torch.set_num_threads(cfg.threads)
    src, dst = results_dir(cfg), Path(args.out) / "results"
    dst.mkdir(parents=True, exist_ok=True)
    if _same_eval_set(cfg, Path(cfg.output_dir) / "ablation_config.json"):
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
            for new_alpha, early in [(a, n) for a in args.alphas for n in args.early_blocks]:
                tag = (f"{variant}@a{new_alpha}" + (f"e{early}" if early else "")
                       + ("bn0" if args.bn_stats_at_start else ""))
                target = dst / f"{tag}__seed{seed}.json"
                if target.is_file():
                    continue
                state = reweighted_state(start, exported, float(train_cfg["wise_alpha"]),
                                         new_alpha, early)
                bundle.model.load_state_dict(with_start_bn_stats(state, start)
                                             if args.bn_stats_at_start else state)
                result = evaluate_model(cfg, bundle_from_open_clip(bundle.model, bundle.tokenizer),
                                        data, segmenter)
                write_text_atomic(target, json.dumps(result))
                print(f"[wise-alpha] {tag} seed {seed} -> {target}", flush=True)
    return 0


def _same_eval_set(cfg: AblationConfig, recorded: Path) -> bool:
    """Whether the ablation folder's results were measured as ``cfg`` measures (same positives,
    readout and box rule: ``finetune.ablation_setup.setup_diff`` finds no difference)."""
    return setup_diff(cfg, recorded) == []


if __name__ == "__main__":
    raise SystemExit(main())

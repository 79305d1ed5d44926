"""AdaBN on a set from a source the encoder never saw (issue 17; plan and rule fixed before the
runs: bench/results/adabn_external.md).

    python bench/bench_adabn.py --set data/external_val_breast128 \
        --stats data/external_val_breast128/breast_us/test_images \
        --out runs/adabn/val_breast domain=breast_us m2ib.fuse_layer=1 threads=1

Scores the ablation config's ``base_model`` (no fine-tune) on ``--set`` (the config's domain, all
splits unless ``splits=[...]`` is given: 150 positives, their GT negatives and the normals for
AUROC) twice: with its own BatchNorm statistics (row ``none``) and with them re-estimated on the
images in ``--stats`` (row ``adabn``; unlabelled images only, ``finetune.evaluation.adabn``); the
oracle and centre boxes beside them. The evaluation is the ablation's (``finetune.ablation_eval``:
same M2IB, box rule, prompts, metrics); the per-image results land under ``--out`` in the ablation's
layout (resumable; ``bench/ablation_pairs.py OUT adabn:none``) and the table with paired
bootstrap CIs (Δ vs none) is printed and written to ``OUT/report.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from finetune.ablation import load_ablation_config  # noqa: E402
from finetune.ablation_eval import (  # noqa: E402
    cached_segmenter,
    evaluate_centre_box,
    evaluate_model,
    evaluate_oracle,
    load_eval_set,
)
from finetune.ablation_report import build_rows, render_table  # noqa: E402
from finetune.evaluation.loading import load_clip_bundle  # noqa: E402
from shared.io import write_text_atomic  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs/ablation/negatives.yaml"))
    p.add_argument("--set", required=True, type=Path,
                   help="benchmark folder scored (all splits unless splits=[...])")
    p.add_argument("--stats", required=True, type=Path, help="folder of unlabelled images (AdaBN)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("overrides", nargs="*", help="ablation config overrides (key=value)")
    args = p.parse_args(argv)
    cfg = load_ablation_config(args.config, [f"bench={args.set}", "splits=[]", *args.overrides])
    torch.set_num_threads(cfg.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_eval_set(cfg)
    segmenter = cached_segmenter(cfg.segmenter_checkpoint, cfg.embedding_cache_dir)
    for name, fn in (("oracle", evaluate_oracle), ("centre_box", evaluate_centre_box)):
        if not (args.out / f"{name}.json").is_file():
            write_text_atomic(args.out / f"{name}.json", json.dumps(fn(cfg, data, segmenter)))
    results = {}
    for row, stats in (("none", None), ("adabn", args.stats)):
        path = args.out / f"{row}__seed{cfg.eval_seed}.json"
        if not path.is_file():
            bundle = load_clip_bundle(cfg.base_model, adapt_bn=stats)
            write_text_atomic(path, json.dumps(evaluate_model(cfg, bundle, data, segmenter)))
            print(f"[adabn] {row} -> {path}", flush=True)
        results[row] = {cfg.eval_seed: json.loads(path.read_text())}
    refs = {label: json.loads((args.out / f"{name}.json").read_text())
            for name, label in (("oracle", "oracle box (GT)"), ("centre_box", "centre box"))}
    table = render_table(build_rows(results, refs, n_resamples=cfg.n_resamples, seed=cfg.eval_seed))
    text = (f"# AdaBN: `{cfg.base_model}` on `{args.set}` ({cfg.domain}, {len(data.pos)} positives, "
            f"{len(data.neg)} AUROC negatives); statistics from `{args.stats}`\n\n{table}\n")
    write_text_atomic(args.out / "report.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

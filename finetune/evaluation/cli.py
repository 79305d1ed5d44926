"""``python -m finetune.evaluate``: zero-shot segmentation on a MedCLIP-SAMv2-layout folder.

Example::

    python -m finetune.evaluate --model embedded --data data/benchmark/brain_mri \
        --segmenter litemedsam --preset embedded --out runs/eval_brain

Writes ``per_image.csv``, ``summary.json``, ``report.md`` and ``overlays/NAME.png`` under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from finetune.evaluation.evaluate import (
    MODES,
    SALIENCY_METHODS,
    EvalConfig,
    check_box_rule,
    default_box_rule,
    evaluate_classification,
    evaluate_dataset,
)
from finetune.evaluation.loading import load_clip_bundle
from finetune.evaluation.m2ib import PRESETS, M2IBConfig, default_config
from finetune.evaluation.outputs import (
    save_overlay,
    write_markdown_report,
    write_per_image_csv,
    write_summary_json,
)
from finetune.evaluation.prompts import PromptSet, load_prompts, single_prompt
from finetune.evaluation.segmenters import SEGMENTERS, build_segmenter
from shared.config import ConfigError
from shared.datasets import SPLITS, list_pairs, list_tasks

PROMPT_DIR = Path(__file__).resolve().parents[2] / "configs" / "prompts"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m finetune.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded-pretrained", help="embedded-pretrained (committed weights) | embedded (random init) | checkpoint dir | hf-hub:... | local-dir:...")
    p.add_argument("--data", required=True, type=Path, help="task folder (with <split>_images/) or a root of tasks")
    p.add_argument("--task", default=None, help="task under --data when --data is a root")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--segmenter", default="litemedsam", choices=(*SEGMENTERS, "none"))
    p.add_argument("--segmenter-checkpoint", default=None, help="SAM .pth (LiteMedSAM: optional)")
    p.add_argument("--mode", default="segmenter", choices=MODES)
    p.add_argument("--saliency", default="m2ib", choices=SALIENCY_METHODS)
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="M2IB preset, then --layer/--beta/... override it (default: 'embedded' for "
                        "the embedded model, upstream's layer 9 / beta 1 for BiomedCLIP)")
    p.add_argument("--layer", type=int, default=None, help="M2IB bottleneck after this block")
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--var", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--samples", type=int, default=None, help="M2IB noise samples per image")
    p.add_argument("--batch-size", type=int, default=None, help="images per saliency batch")
    p.add_argument("--resize-mode", default=None, choices=("pad", "stretch"))
    p.add_argument("--prompt-file", type=Path, default=None, help=".txt (see prompts.py) or upstream .json")
    p.add_argument("--prompt", default=None, help="one caption for every image")
    p.add_argument("--binarize", default="kmeans", choices=("kmeans", "threshold"))
    p.add_argument("--threshold", type=float, default=0.3)
    p.add_argument("--num-components", type=int, default=1)
    p.add_argument("--component", default=None, choices=("largest", "peak"),
                   help="coarse-mask component to prompt with: the largest (upstream) or the one "
                        "holding the saliency maximum (default: the model's rule, see "
                        "evaluate.BOX_RULES)")
    p.add_argument("--prompt-kind", default="union", choices=("union", "components", "points"))
    p.add_argument("--box-dilation", type=int, default=None,
                   help="grow box prompts by this many px (default: the model's rule)")
    p.add_argument("--box-dilation-frac", type=float, default=None,
                   help="and by this fraction of the image's longer side (default: the model's "
                        "rule; embedded: 4/128)")
    p.add_argument("--box-scale", type=float, default=None,
                   help="then scale each box about its centre (default: the model's rule)")
    p.add_argument("--num-points", type=int, default=10)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--positives-only", action="store_true",
                   help="skip images whose ground-truth mask is empty (lesion-free images)")
    p.add_argument("--no-overlays", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--classification-csv", type=Path, default=None,
                   help="also run zero-shot classification on image_path,class_label,caption")
    p.add_argument("--tsne", action="store_true", help="t-SNE + silhouettes of the model's features")
    p.add_argument("--tsne-baseline", default=None, help="a second model (e.g. before fine-tuning) for t-SNE")
    p.add_argument("--out", required=True, type=Path)
    return p.parse_args(argv)


def _resolve_task(data: Path, task: str | None, split: str) -> tuple[Path, str]:
    if task is not None:
        return data, task
    if (data / f"{split}_images").is_dir():
        return data.parent, data.name
    tasks = list_tasks(data)
    if len(tasks) != 1:
        raise ConfigError(f"--data {data} holds tasks {tasks}; choose one with --task"
                          if tasks else f"--data {data} has no {split}_images/ folder and no tasks")
    return data, tasks[0]


def _prompts(args: argparse.Namespace, task: str) -> PromptSet | None:
    if args.prompt is not None:
        return single_prompt(args.prompt)
    if args.prompt_file is not None:
        return load_prompts(args.prompt_file)
    default = PROMPT_DIR / f"{task}.txt"
    return load_prompts(default) if default.is_file() else None


def _box_rule(args: argparse.Namespace, bundle=None) -> dict:
    """The model's post-processing rule (``evaluate.default_box_rule``), then explicit flags."""
    rule = default_box_rule(bundle)
    given = {"component": args.component, "box_dilation_px": args.box_dilation,
             "box_dilation_frac": args.box_dilation_frac, "box_scale": args.box_scale}
    rule |= {k: v for k, v in given.items() if v is not None}
    try:
        check_box_rule(rule)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return rule


def _m2ib_config(args: argparse.Namespace, bundle=None) -> M2IBConfig:
    """--preset (default: the model's own, ``m2ib.default_config``), then the explicit overrides;
    the layer is checked against the model."""
    if args.preset:
        cfg = PRESETS[args.preset]
    elif bundle is not None:
        cfg = default_config(bundle)
    else:
        cfg = M2IBConfig()
    overrides = {
        "layer": args.layer, "beta": args.beta, "var": args.var, "steps": args.steps,
        "num_samples": args.samples, "batch_size": args.batch_size, "resize_mode": args.resize_mode,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if bundle is not None and args.saliency == "m2ib" and not 0 <= cfg.layer < bundle.num_blocks:
        n = bundle.num_blocks
        raise ConfigError(f"M2IB layer {cfg.layer} is out of range for --model {args.model}, whose "
                          f"vision tower has {n} blocks: pass --layer 0..{n - 1}"
                          + (" or --preset embedded" if n == 6 else ""))
    return cfg


def _feature_analysis(args, bundle, pairs, out: Path) -> dict:
    """t-SNE of the split: positives = images whose mask has foreground, negatives = the rest."""
    from finetune.evaluation.tsne import feature_analysis
    from shared.io import read_image, read_mask

    models = {"model": bundle}
    if args.tsne_baseline:
        models = {"baseline": load_clip_bundle(args.tsne_baseline, device=args.device), "model": bundle}
    pos_img, pos_mask, neg_img = [], [], []
    for p in pairs:
        image, mask = read_image(p.image_path), read_mask(p.mask_path)
        if mask.any():
            pos_img.append(image)
            pos_mask.append(mask)
        else:
            neg_img.append(image)
    if not pos_img or not neg_img:
        return {"skipped": f"needs positives and negatives; got {len(pos_img)} and {len(neg_img)}"}
    return feature_analysis(models, pos_img, pos_mask, neg_img, out / "tsne", seed=args.seed)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root, task = _resolve_task(args.data, args.task, args.split)
    pairs = list_pairs(root, task, args.split)
    if args.positives_only:
        from shared.io import read_mask

        pairs = [p for p in pairs if read_mask(p.mask_path).any()]
    pairs = pairs[: args.limit]
    if not pairs:
        raise ConfigError(f"no images to evaluate in task {task!r}, split {args.split!r} of {root}")
    prompts = _prompts(args, task)
    if args.classification_csv is not None:  # a bad CSV fails now, not after the segmentation run
        from finetune.evaluation.metrics_report import (
            check_classification_images,
            class_prompts_from_rows,
            read_classification_csv,
        )

        rows = read_classification_csv(args.classification_csv)
        check_classification_images(rows, args.classification_csv)
        class_prompts_from_rows(rows)
    needs_model = args.mode != "oracle" and args.saliency != "centre_box"
    if needs_model and args.saliency in ("m2ib", "grad_x_input") and prompts is None:
        known = sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))
        raise ConfigError(f"no text prompt for task {task!r} (built-in prompts exist for {known}): "
                          f"pass --prompt \"<a caption of the lesion>\" or --prompt-file FILE")
    bundle = load_clip_bundle(args.model, device=args.device) if needs_model else None
    cfg = EvalConfig(
        mode=args.mode, saliency=args.saliency, m2ib=_m2ib_config(args, bundle),
        binarize=args.binarize, threshold=args.threshold, num_components=args.num_components,
        prompt=args.prompt_kind, num_points=args.num_points, **_box_rule(args, bundle),
        seed=args.seed,
    )
    segmenter = None
    if args.mode != "saliency":
        if args.segmenter == "none":
            raise ConfigError(f"--mode {args.mode} needs a --segmenter (e.g. litemedsam)")
        segmenter = build_segmenter(args.segmenter, args.segmenter_checkpoint, device=args.device)
    out = args.out
    (out / "overlays").mkdir(parents=True, exist_ok=True)

    def overlay(result, image, gt):
        if not args.no_overlays:
            save_overlay(out / "overlays" / f"{Path(result.name).stem}.png", image, result, gt)

    t0 = time.perf_counter()
    results = evaluate_dataset(
        bundle, pairs, segmenter=segmenter, prompts=prompts, cfg=cfg, progress=True, on_image=overlay
    )
    results.summary.update({
        "model": args.model, "data": str(args.data), "task": task, "split": args.split,
        "segmenter": None if segmenter is None else segmenter.name,
        "seconds": round(time.perf_counter() - t0, 2),
    })
    write_per_image_csv(out / "per_image.csv", results.images)  # kept if an extra step fails
    write_summary_json(out / "summary.json", results.summary)
    extra = {}
    if args.classification_csv is not None:
        extra["classification"] = evaluate_classification(bundle or load_clip_bundle(args.model), args.classification_csv)
    if args.tsne or args.tsne_baseline:
        extra["tsne"] = _feature_analysis(args, bundle or load_clip_bundle(args.model), pairs, out)
    results.summary.update(extra)
    write_per_image_csv(out / "per_image.csv", results.images)
    write_summary_json(out / "summary.json", results.summary)
    write_markdown_report(out / "report.md", results, title=f"Zero-shot segmentation: {task} ({args.split})",
                          extra=extra or None)
    m = results.summary["metrics"]
    print(f"{task}/{args.split}: n={results.summary['n_images']} Dice {m['dice']['mean']:.3f} "
          f"IoU {m['iou']['mean']:.3f} NSD {m['nsd']['mean']:.3f} "
          f"empty coarse {results.summary['n_empty_coarse']} -> {out}")
    return results.summary

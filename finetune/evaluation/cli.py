"""``python -m finetune.evaluate``: zero-shot segmentation on a MedCLIP-SAMv2-layout folder.

Example::

    python -m finetune.evaluate --data data/benchmark/brain_mri --out runs/eval_brain

(the default model, ``embedded-convstem8-pretrained``, its M2IB preset and box rule, LiteMedSAM).

Writes ``per_image.csv``, ``summary.json``, ``report.md`` and ``overlays/NAME.png`` (not with
--no-overlays) under --out. Options are checked before any data or model is read: a bad value is
a ``ConfigError`` naming the option (``python -m finetune.evaluate`` prints it as one line).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from finetune.evaluation.adabn import AdaBNError
from finetune.evaluation.evaluate import (
    MODES,
    SALIENCY_METHODS,
    TEXT_SALIENCY,
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
from finetune.evaluation.prompts import PromptSet, check_covers, resolve_prompts
from finetune.evaluation.segmenters import SEGMENTERS, SegmenterError, build_segmenter
from shared.cli import check_torch_device
from shared.config import ConfigError
from shared.datasets import SPLITS, DatasetError, list_pairs, list_tasks

PROMPT_DIR = Path(__file__).resolve().parents[2] / "configs" / "prompts"
# The CLIP a user's scan gets when none is named: the conv-stem model, which sees lesions on every
# training domain (test AUROC 0.97-0.99) and points into them on an unseen head-MR source
# (bench/results/clip_protocol_convstem.md); its box rule: evaluate.BOX_RULES["embedded-convstem8"]
DEFAULT_MODEL = "embedded-convstem8-pretrained"
HEALTHY_SUFFIX = "_healthy"  # <task>_healthy.txt: the task's lesion-free caption (--saliency dense)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m finetune.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"{DEFAULT_MODEL} (default: committed weights, 16 x 16 tokens) | "
                        "embedded-pretrained (committed, 8 x 8 tokens: the fine-tuning default) | "
                        "embedded (random init) | checkpoint dir | hf-hub:... | local-dir:...")
    p.add_argument("--data", required=True, type=Path, help="task folder (with <split>_images/) or a root of tasks")
    p.add_argument("--task", default=None, help="task under --data when --data is a root")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--segmenter", default="litemedsam", choices=(*SEGMENTERS, "none"))
    p.add_argument("--segmenter-checkpoint", default=None, help="SAM .pth (LiteMedSAM: optional)")
    p.add_argument("--mode", default="segmenter", choices=MODES)
    p.add_argument("--saliency", default="m2ib", choices=SALIENCY_METHODS)
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="M2IB preset, then --layer/--beta/... override it (default: 'convstem8' "
                        "for the default model, blocks 3 and 1 fused; 'embedded' for "
                        "embedded-pretrained; upstream's layer 9 / beta 1 for BiomedCLIP); "
                        "per dataset: embedded-brain|retina|breast for embedded-pretrained, "
                        "convstem8-retina for the default model; these also set their box "
                        "margin (evaluate.PRESET_BOX_RULES), which --box-* flags override")
    p.add_argument("--layer", type=int, default=None,
                   help="M2IB bottleneck after this block alone (0-based, < the model's block "
                        "count; replaces a preset's two fused blocks)")
    p.add_argument("--beta", type=float, default=None, help="M2IB weight of the KL term (> 0)")
    p.add_argument("--var", type=float, default=None, help="M2IB noise prior variance (> 0)")
    p.add_argument("--steps", type=int, default=None, help="M2IB optimisation steps (>= 1)")
    p.add_argument("--samples", type=int, default=None, help="M2IB noise samples per image (>= 1)")
    p.add_argument("--batch-size", type=int, default=None, help="images per saliency batch (>= 1)")
    p.add_argument("--resize-mode", default=None, choices=("pad", "stretch"))
    p.add_argument("--prompt-file", type=Path, default=None, help=".txt (see prompts.py) or upstream .json")
    p.add_argument("--prompt", default=None, help="one caption for every image")
    p.add_argument("--neg-prompt-file", type=Path, default=None,
                   help="--saliency dense: the lesion-free caption(s), same format as "
                        "--prompt-file (default: configs/prompts/<task>_healthy.txt)")
    p.add_argument("--neg-prompt", default=None,
                   help="--saliency dense: one lesion-free caption for every image")
    p.add_argument("--binarize", default=None, choices=("kmeans", "threshold"),
                   help="saliency -> coarse mask (default: the rule's; kmeans, threshold 0.7 for "
                        "--saliency dense)")
    p.add_argument("--threshold", type=float, default=None,
                   help="with --binarize threshold: pixels of the [0, 1] saliency map strictly "
                        "above it are foreground, 0 <= T < 1 (default 0.3; 0.7 for dense)")
    p.add_argument("--num-components", type=int, default=1, help="components kept (>= 1)")
    p.add_argument("--component", default=None, choices=("largest", "peak"),
                   help="coarse-mask component to prompt with: the largest (upstream) or the one "
                        "holding the saliency maximum (default: the model's rule, see "
                        "evaluate.BOX_RULES)")
    p.add_argument("--prompt-kind", default="union", choices=("union", "components", "points"))
    p.add_argument("--box-dilation", type=int, default=None,
                   help="grow box prompts by this many px (default: the model's rule)")
    p.add_argument("--box-dilation-frac", type=float, default=None,
                   help="and by this fraction of the image's longer side (default: the model's "
                        "rule; embedded-convstem8-pretrained: 12/128, embedded-pretrained: 4/128)")
    p.add_argument("--box-scale", type=float, default=None,
                   help="then scale each box about its centre (default: the model's rule)")
    p.add_argument("--num-points", type=int, default=10, help="point prompts per image (>= 1)")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate only the first N >= 1 images (default: all)")
    p.add_argument("--positives-only", action="store_true",
                   help="skip images whose ground-truth mask is empty (lesion-free images)")
    p.add_argument("--no-overlays", action="store_true", help="write no overlays/ folder")
    p.add_argument("--seed", type=int, default=0, help=">= 0")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads, >= 1 (default: torch's)")
    p.add_argument("--classification-csv", type=Path, default=None,
                   help="also run zero-shot classification on image_path,class_label,caption")
    p.add_argument("--tsne", action="store_true", help="t-SNE + silhouettes of the model's features")
    p.add_argument("--tsne-baseline", default=None, help="a second model (e.g. before fine-tuning) for t-SNE")
    p.add_argument("--adapt-bn", type=Path, default=None, metavar="FOLDER",
                   help="AdaBN: re-estimate --model's BatchNorm statistics on FOLDER's images "
                        "(unlabelled, of the target source) first")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    return p.parse_args(argv)


def _check_args(args: argparse.Namespace) -> None:
    """Every option that can be checked without data or models, before any work: ConfigError
    naming the option and its value."""
    at_least = {"--limit": (args.limit, 1), "--threads": (args.threads, 1),
                "--steps": (args.steps, 1), "--samples": (args.samples, 1),
                "--batch-size": (args.batch_size, 1), "--num-components": (args.num_components, 1),
                "--num-points": (args.num_points, 1), "--layer": (args.layer, 0),
                "--seed": (args.seed, 0)}
    for option, (value, low) in at_least.items():
        if value is not None and value < low:
            hint = " (omit it to evaluate every image)" if option == "--limit" else ""
            raise ConfigError(f"{option} must be >= {low}, got {value}{hint}")
    for option, value in {"--beta": args.beta, "--var": args.var}.items():
        if value is not None and not value > 0:  # also refuses nan
            raise ConfigError(f"{option} must be > 0, got {value}")
    if args.threshold is not None and not 0 <= args.threshold < 1:  # maps are min-max normalised
        raise ConfigError(f"--threshold must be in [0, 1) (the saliency map is normalised to "
                          f"[0, 1]), got {args.threshold}")
    rule = _box_rule(args)  # the --box-* flags, by the rule check the pipeline itself uses
    if args.threshold is not None and rule["binarize"] != "threshold":
        raise ConfigError(f"--threshold {args.threshold} applies to --binarize threshold only "
                          f"(binarize is {rule['binarize']})")
    check_torch_device(args.device, "--device")
    _check_out(args.out)
    if args.prompt is not None and args.prompt_file is not None:
        raise ConfigError("--prompt and --prompt-file exclude each other: pass one")
    if args.neg_prompt is not None and args.neg_prompt_file is not None:
        raise ConfigError("--neg-prompt and --neg-prompt-file exclude each other: pass one")
    if (args.neg_prompt is not None or args.neg_prompt_file is not None) and args.saliency != "dense":
        raise ConfigError(f"--neg-prompt/--neg-prompt-file apply to --saliency dense only "
                          f"(--saliency is {args.saliency})")
    if args.mode != "saliency":
        if args.segmenter == "none":
            raise ConfigError(f"--mode {args.mode} needs a --segmenter (e.g. litemedsam)")
        ckpt = args.segmenter_checkpoint  # (SAM without one: build_segmenter says so, first)
        if ckpt is not None and not Path(ckpt).is_file():
            raise ConfigError(f"--segmenter-checkpoint {ckpt}: no such file")
    if _needs_model(args) or args.classification_csv is not None or args.tsne or args.tsne_baseline:
        _check_model_source(args.model, "--model")
    if args.tsne_baseline:
        _check_model_source(args.tsne_baseline, "--tsne-baseline")
    if args.adapt_bn is not None and not args.adapt_bn.is_dir():
        raise ConfigError(f"--adapt-bn {args.adapt_bn}: no such folder")


def _check_out(out: Path) -> None:
    """--out is a directory or can become one (no file in its place or above it)."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "" if path == out else f" ({path} is a file)"
                raise ConfigError(f"--out {out}: not a directory{where}")
            return


def _needs_model(args: argparse.Namespace) -> bool:
    return args.mode != "oracle" and args.saliency != "centre_box"


def _check_model_source(spec: str, option: str) -> None:
    from finetune.build import resolve_clip_source

    try:
        resolve_clip_source(spec)
    except ConfigError as err:
        raise ConfigError(f"{option}: {err}") from None


def _load_model(spec: str, option: str, device: str, adapt_bn: Path | None = None):
    try:
        return load_clip_bundle(spec, device=device, adapt_bn=adapt_bn)
    except (AdaBNError, DatasetError) as err:  # only --adapt-bn's images are listed here
        raise ConfigError(f"--adapt-bn: {err}") from None
    except ConfigError as err:  # finetune.build.ModelSourceError, loading.ModelLoadError, ...
        raise ConfigError(f"{option}: {err}") from None


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


def _prompts(args: argparse.Namespace, task: str, negative: bool = False) -> PromptSet | None:
    """--prompt / --prompt-file, else the task's built-in file (``negative``: the lesion-free
    captions, --neg-prompt / --neg-prompt-file / ``<task>_healthy.txt``)."""
    if negative:
        return resolve_prompts(args.neg_prompt, args.neg_prompt_file,
                               PROMPT_DIR / f"{task}{HEALTHY_SUFFIX}.txt", "--neg-prompt")
    return resolve_prompts(args.prompt, args.prompt_file, PROMPT_DIR / f"{task}.txt", "--prompt")


def _require_prompts(prompts: PromptSet | None, args: argparse.Namespace, task: str, pairs,
                     negative: bool = False) -> PromptSet:
    """``prompts`` (from :func:`_prompts`) must exist and cover every image: ConfigError /
    PromptError saying what to pass, before any work."""
    if prompts is None and negative:
        raise ConfigError(f"--saliency dense needs a lesion-free caption for task {task!r} "
                          f"(no {task}{HEALTHY_SUFFIX}.txt built in): pass --neg-prompt "
                          "\"<a caption of healthy tissue>\" or --neg-prompt-file FILE")
    if prompts is None:
        known = sorted(p.stem for p in PROMPT_DIR.glob("*.txt") if not p.stem.endswith(HEALTHY_SUFFIX))
        raise ConfigError(f"no text prompt for task {task!r} (built-in prompts exist for {known}): "
                          f"pass --prompt \"<a caption of the lesion>\" or --prompt-file FILE")
    flag, file = ("--neg-prompt-file", args.neg_prompt_file) if negative else ("--prompt-file", args.prompt_file)
    kind = "healthy prompt" if negative else "prompt"
    check_covers(prompts, [p.name for p in pairs], f"{flag} {file}" if file else f"the task's {kind} file")
    return prompts


def _box_rule(args: argparse.Namespace, bundle=None) -> dict:
    """The preset's or the model's post-processing rule (``evaluate.default_box_rule``), then
    explicit flags."""
    rule = default_box_rule(bundle, args.preset, args.saliency)
    given = {"binarize": args.binarize, "threshold": args.threshold, "component": args.component,
             "box_dilation_px": args.box_dilation, "box_dilation_frac": args.box_dilation_frac,
             "box_scale": args.box_scale}
    rule |= {k: v for k, v in given.items() if v is not None}
    try:
        check_box_rule(rule)
    except ValueError as err:
        raise ConfigError(f"--binarize/--threshold/--component/--box-*: {err}") from None
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
    if args.layer is not None:  # an explicit block is one bottleneck
        cfg = dataclasses.replace(cfg, fuse_layer=None)
    if bundle is not None and args.saliency == "m2ib" and not 0 <= cfg.layer < bundle.num_blocks:
        n = bundle.num_blocks
        raise ConfigError(f"M2IB layer {cfg.layer} is out of range for --model {args.model}, whose "
                          f"vision tower has {n} blocks: pass --layer 0..{n - 1}"
                          + (" or --preset embedded" if n == 6 else ""))
    return cfg


def _feature_analysis(args, bundle, pairs, out: Path) -> dict:
    """t-SNE of the split (``tsne.feature_analysis_of_pairs``), beside --tsne-baseline if given."""
    from finetune.evaluation.tsne import feature_analysis_of_pairs

    models = {"model": bundle}
    if args.tsne_baseline:
        models = {"baseline": _load_model(args.tsne_baseline, "--tsne-baseline", args.device),
                  "model": bundle}
    return feature_analysis_of_pairs(models, pairs, out / "tsne", seed=args.seed)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    _check_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    root, task = _resolve_task(args.data, args.task, args.split)
    pairs = list_pairs(root, task, args.split)
    if not pairs:
        raise ConfigError(f"no images to evaluate in task {task!r}, split {args.split!r} of {root}")
    if args.positives_only:
        from shared.io import read_mask

        kept = [p for p in pairs if read_mask(p.mask_path).any()]
        if kept and len(kept) < len(pairs):  # none kept: the error below says so
            print(f"--positives-only: {len(pairs) - len(kept)} of {len(pairs)} image(s) with an "
                  "empty mask left out", file=sys.stderr)
        pairs = kept
        if not pairs:
            raise ConfigError(f"--positives-only: no image of task {task!r}, split {args.split!r} "
                              f"of {root} has a lesion in its mask")
    pairs = pairs[: args.limit]
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
    needs_model = _needs_model(args)
    if needs_model and args.saliency in TEXT_SALIENCY:
        _require_prompts(prompts, args, task, pairs)
    dense = needs_model and args.saliency == "dense"
    neg_prompts = _require_prompts(_prompts(args, task, True), args, task, pairs, True) if dense else None
    segmenter = None
    if args.mode != "saliency":
        try:
            segmenter = build_segmenter(args.segmenter, args.segmenter_checkpoint, device=args.device)
        except SegmenterError as err:
            given = f" --segmenter-checkpoint {args.segmenter_checkpoint}" if args.segmenter_checkpoint else ""
            raise SegmenterError(f"--segmenter {args.segmenter}{given}: {err}") from None
    bundle = _load_model(args.model, "--model", args.device, args.adapt_bn) if needs_model else None
    cfg = EvalConfig(
        mode=args.mode, saliency=args.saliency, m2ib=_m2ib_config(args, bundle),
        num_components=args.num_components, prompt=args.prompt_kind, num_points=args.num_points,
        **_box_rule(args, bundle), seed=args.seed,
    )
    out = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        # an earlier run's overlays and t-SNE plots would sit beside this run's summary (sixth
        # sweep): the PNGs this command writes there are removed first, nothing else
        for folder in ("overlays", "tsne"):
            for old in (out / folder).glob("*.png") if (out / folder).is_dir() else ():
                old.unlink()
        if not args.no_overlays:
            (out / "overlays").mkdir(exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot create it ({err.strerror or err})") from None

    def overlay(result, image, gt):
        if not args.no_overlays:
            # a.png -> a.png, a.tif -> a.tif.png: a.png and a.tif in one split keep both overlays
            name = result.name if result.name.lower().endswith(".png") else f"{result.name}.png"
            save_overlay(out / "overlays" / name, image, result, gt)

    t0 = time.perf_counter()
    results = evaluate_dataset(
        bundle, pairs, segmenter=segmenter, prompts=prompts, cfg=cfg, progress=True,
        on_image=overlay, neg_prompts=neg_prompts,
    )
    results.summary.update({
        "model": args.model, "data": str(args.data), "task": task, "split": args.split,
        "adapt_bn": None if args.adapt_bn is None else str(args.adapt_bn),
        "segmenter": None if segmenter is None else segmenter.name,
        "seconds": round(time.perf_counter() - t0, 2),
    })
    write_per_image_csv(out / "per_image.csv", results.images)  # kept if an extra step fails
    write_summary_json(out / "summary.json", results.summary)
    extra = {}
    if args.classification_csv is not None:
        bundle = bundle or _load_model(args.model, "--model", args.device, args.adapt_bn)
        extra["classification"] = evaluate_classification(bundle, args.classification_csv)
    if args.tsne or args.tsne_baseline:
        bundle = bundle or _load_model(args.model, "--model", args.device, args.adapt_bn)
        extra["tsne"] = _feature_analysis(args, bundle, pairs, out)
    results.summary.update(extra)
    write_per_image_csv(out / "per_image.csv", results.images)
    write_summary_json(out / "summary.json", results.summary)
    write_markdown_report(out / "report.md", results, title=f"Zero-shot segmentation: {task} ({args.split})",
                          extra=extra or None)
    m = results.summary["metrics"]
    if results.summary["n_empty_gt"]:
        print(f"warning: {results.summary['n_empty_gt']} image(s) have an empty ground-truth mask; "
              "each scores Dice 1 for an empty prediction and 0 otherwise (--positives-only "
              "leaves them out)", file=sys.stderr)
    print(f"{task}/{args.split}: n={results.summary['n_images']} Dice {m['dice']['mean']:.3f} "
          f"IoU {m['iou']['mean']:.3f} NSD {m['nsd']['mean']:.3f} "
          f"empty coarse {results.summary['n_empty_coarse']} -> {out}")
    return results.summary

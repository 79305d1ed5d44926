"""The zero-shot segmentation pipeline as a Python API: saliency -> coarse mask -> prompts ->
segmenter -> Dice/IoU/NSD, per image and summarised. The CLI lives in
:mod:`finetune.evaluation.cli` (``python -m finetune.evaluate``).

Modes: ``segmenter`` (the MedCLIP-SAMv2 pipeline), ``saliency`` (the coarse mask itself is the
prediction) and ``oracle`` (prompts from the ground-truth mask: the segmenter's upper bound).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from finetune.evaluation.clip_bundle import ClipBundle
from finetune.evaluation.m2ib import M2IBConfig, m2ib_saliency
from finetune.evaluation.metrics_report import ImageScore, score_pair, summarize, summarize_scores
from finetune.evaluation.postprocess import coarse_mask, mask_to_boxes, sample_points, scale_boxes
from finetune.evaluation.prompts import PromptSet
from finetune.evaluation.saliency_baselines import (
    centre_box,
    cls_attention,
    dense_contrast,
    grad_x_input,
)
from finetune.evaluation.segmenters import Segmenter
from shared.datasets import Pair
from shared.io import check_pair, read_image, read_mask
from shared.metrics import dice
from shared.progress import progress as progress_bar

SALIENCY_METHODS = ("m2ib", "dense", "cls_attention", "grad_x_input", "centre_box")
TEXT_SALIENCY = ("m2ib", "dense", "grad_x_input")  # the methods that read the image's caption
MODES = ("segmenter", "saliency", "oracle")
PROMPT_KINDS = ("union", "components", "points")


@dataclass(frozen=True)
class EvalConfig:
    """What to run and how to turn maps into prompts."""

    mode: Literal["segmenter", "saliency", "oracle"] = "segmenter"  # see module docstring
    saliency: str = "m2ib"  # m2ib | dense (needs negative prompts) | cls_attention | grad_x_input | centre_box
    m2ib: M2IBConfig = field(default_factory=M2IBConfig)  # bottleneck settings (and batch size)
    binarize: Literal["kmeans", "threshold"] = "kmeans"  # saliency -> coarse mask
    threshold: float = 0.3  # used when binarize == "threshold" (upstream default)
    num_components: int = 1  # keep this many largest components of the coarse mask
    component: Literal["largest", "peak"] = "largest"  # or the component holding the map's max
    prompt: Literal["union", "components", "points"] = "union"  # one box, a box each, or points
    box_dilation_px: int = 0  # grow boxes (M2IB maps are peaky -> boxes too small)
    box_dilation_frac: float = 0.0  # and by this fraction of the image's longer side (rounded)
    box_scale: float = 1.0  # then scale each box about its centre (1.5: 1.5× width and height)
    num_points: int = 10  # point prompts sampled from the coarse mask (prompt == "points")
    nsd_tolerance_px: float = 2.0  # NSD boundary tolerance
    seed: int = 0  # saliency noise (image i: seed + i), k-means init and point sampling


@dataclass
class ImageResult:
    """Everything measured on one image (maps kept only when asked for)."""

    name: str  # image file name
    score: ImageScore  # prediction vs ground truth
    coarse_dice: float  # coarse mask vs ground truth (how good the saliency alone is)
    coarse_empty: bool  # coarse mask empty -> no prompt -> empty prediction
    pred_empty: bool  # the prediction has no foreground pixel
    boxes: list[list[int]]  # the box prompts used (XYXY inclusive), [] for points / none
    saliency: np.ndarray | None = None  # (H, W) float [0, 1]
    coarse: np.ndarray | None = None  # (H, W) bool
    pred: np.ndarray | None = None  # (H, W) bool
    gt_empty: bool = False  # the ground truth has no lesion pixel (Dice 1 only for an empty pred)


@dataclass
class EvalResults:
    images: list[ImageResult]  # sorted by name, as the pairs
    summary: dict  # per-metric {n, mean, std, ci_low, ci_high}, counts, config


def _check_config(cfg: EvalConfig, bundle: ClipBundle | None, segmenter: Segmenter | None) -> None:
    if cfg.mode not in MODES:
        raise ValueError(f"unknown mode {cfg.mode!r}; expected one of {MODES}")
    if cfg.saliency not in SALIENCY_METHODS:
        raise ValueError(f"unknown saliency {cfg.saliency!r}; expected one of {SALIENCY_METHODS}")
    if cfg.prompt not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt kind {cfg.prompt!r}; expected one of {PROMPT_KINDS}")
    if cfg.mode in ("segmenter", "oracle") and segmenter is None:
        raise ValueError(f"mode {cfg.mode!r} needs a segmenter")
    if cfg.mode != "oracle" and cfg.saliency != "centre_box" and bundle is None:
        raise ValueError(f"saliency {cfg.saliency!r} needs a CLIP model")


def compute_saliency(
    bundle: ClipBundle | None,
    images: Sequence[np.ndarray],
    prompts: Sequence[Sequence[str]],
    cfg: EvalConfig,
    *,
    first_index: int = 0,
    neg_prompts: Sequence[Sequence[str]] | None = None,
) -> list[np.ndarray]:
    """Saliency maps (H, W) in [0, 1] for a batch with the configured method (``neg_prompts``:
    each image's lesion-free caption(s), for ``dense``)."""
    if cfg.saliency == "m2ib":
        seeds = [cfg.seed + first_index + i for i in range(len(images))]
        return m2ib_saliency(bundle, images, prompts, cfg.m2ib, seed=seeds)
    if cfg.saliency == "dense":
        if neg_prompts is None:
            raise ValueError("saliency 'dense' needs negative prompts (each image's lesion-free caption)")
        return dense_contrast(bundle, images, prompts, neg_prompts, resize_mode=cfg.m2ib.resize_mode)
    if cfg.saliency == "cls_attention":
        return cls_attention(bundle, images, resize_mode=cfg.m2ib.resize_mode)
    if cfg.saliency == "grad_x_input":
        return grad_x_input(bundle, images, prompts, resize_mode=cfg.m2ib.resize_mode)
    return centre_box(images)


# Post-processing rules per model family, as the M2IB presets (m2ib.default_config): upstream's
# for any model; for the embedded model the rule chosen on the validation split by
# bench/select_box_rule.py (bench/results/box_rule_val.md): the 2-means component holding the
# saliency maximum, its box grown by 4 px per 128 px of image side (4 px at the model's 128²).
# The conv-stem tower's 16 x 16-token maps are sharper: its rule is the same with the box grown by
# 12 px per 128 (box_rule_val9.md, round 9; training-domain validation Dice 0.427 -> 0.578).
# A per-dataset M2IB preset (m2ib.PRESETS, "embedded-<domain>") carries its own rule, chosen with
# that preset's maps on its own domain's validation positives (box_rule_val6.md, round 6).
_EMBEDDED = {"component": "peak", "box_dilation_px": 0, "box_dilation_frac": 4 / 128,
             "box_scale": 1.0}
BOX_RULES: dict[str, dict] = {
    "upstream": {"component": "largest", "box_dilation_px": 0, "box_dilation_frac": 0.0,
                 "box_scale": 1.0},
    "embedded": _EMBEDDED,
    "embedded-convstem8": _EMBEDDED | {"box_dilation_frac": 12 / 128},
}
PRESET_BOX_RULES: dict[str, dict] = {
    "embedded-brain": _EMBEDDED | {"box_dilation_frac": 12 / 128},
    "embedded-retina": _EMBEDDED,
    "embedded-breast": _EMBEDDED,
    "convstem8-retina": _EMBEDDED | {"box_dilation_frac": 8 / 128},  # box_rule_val10.md, round 10
}
# The dense caption-contrast map (saliency "dense") is broad where M2IB's is peaky: its 2-means
# region is too wide for a box; thresholded at 0.7 of its range, the component holding the peak,
# box +4 px per 128 (box_rule_val8.md, round 8: chosen on retina's validation positives, the one
# domain where it beat M2IB; brain and breast keep M2IB).
DENSE_BOX_RULE = {"binarize": "threshold", "threshold": 0.7} | _EMBEDDED
_BINARIZE_DEFAULT = {"binarize": "kmeans", "threshold": 0.3}  # EvalConfig's (upstream's)


def check_box_rule(rule: dict) -> None:
    """ValueError naming the first bad field of a box rule (EvalConfig's binarize / threshold /
    component / box_* keys)."""
    if rule.get("binarize", "kmeans") not in ("kmeans", "threshold"):
        raise ValueError(f"binarize {rule['binarize']!r}; expected kmeans | threshold")
    if not 0 <= rule.get("threshold", 0.3) < 1:  # maps are min-max normalised: >= 1 is empty
        raise ValueError(f"threshold must be in [0, 1) (the saliency map is normalised to "
                         f"[0, 1]), got {rule['threshold']}")
    if rule.get("component", "largest") not in ("largest", "peak"):
        raise ValueError(f"box component {rule['component']!r}; expected largest | peak")
    if not (rule.get("box_dilation_px", 0) >= 0 and rule.get("box_dilation_frac", 0.0) >= 0):
        raise ValueError("box dilation must be >= 0 (pixels and fraction of the image side)")
    if not rule.get("box_scale", 1.0) > 0:  # also NaN
        raise ValueError(f"box scale must be > 0, got {rule['box_scale']}")


def default_box_rule(bundle: ClipBundle | None, preset: str | None = None,
                     saliency: str = "m2ib") -> dict:
    """The post-processing a model gets when none is named (EvalConfig fields, binarisation
    included): the dense map's own rule for saliency ``dense``; else the M2IB preset's own rule
    where it has one (the per-dataset presets), else the model family's."""
    if saliency == "dense":
        rule = DENSE_BOX_RULE
    elif preset in PRESET_BOX_RULES:
        rule = PRESET_BOX_RULES[preset]
    else:
        rule = BOX_RULES["upstream" if bundle is None else bundle.family]
    return _BINARIZE_DEFAULT | rule


def saliency_to_coarse(saliency: np.ndarray, cfg: EvalConfig) -> np.ndarray:
    """A saliency map (H, W) -> the coarse bool mask the prompts are drawn from (cfg's rule)."""
    return coarse_mask(saliency, method=cfg.binarize, threshold=cfg.threshold,
                       num_components=cfg.num_components, component=cfg.component, seed=cfg.seed)


def prompts_from_mask(mask: np.ndarray, cfg: EvalConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (K, 4), points (P, 2)) from a bool mask per the prompt kind."""
    if cfg.prompt == "points":
        return np.zeros((0, 4), dtype=np.int64), sample_points(mask, cfg.num_points, seed=seed)
    if cfg.box_dilation_px < 0 or cfg.box_dilation_frac < 0:
        raise ValueError("box dilation must be >= 0 (pixels and fraction of the image side)")
    dilation = cfg.box_dilation_px + round(cfg.box_dilation_frac * max(mask.shape))
    boxes = mask_to_boxes(mask, mode=cfg.prompt, dilation_px=dilation)
    boxes = scale_boxes(boxes, cfg.box_scale, mask.shape)
    return boxes, np.zeros((0, 2))


def evaluate_dataset(
    bundle: ClipBundle | None,
    pairs: Sequence[Pair],
    *,
    segmenter: Segmenter | None,
    prompts: PromptSet | None,
    cfg: EvalConfig = EvalConfig(),
    keep_maps: bool = False,
    progress: bool = False,
    on_image: Callable[[ImageResult, np.ndarray, np.ndarray], None] | None = None,
    neg_prompts: PromptSet | None = None,
) -> EvalResults:
    """Run the pipeline on image/mask pairs and score every image.

    Args:
        bundle: CLIP model for the saliency (None allowed for oracle / centre_box).
        pairs: from :func:`shared.datasets.list_pairs` (name, image_path, mask_path).
        segmenter: LiteMedSAM / SAM (None allowed in saliency mode).
        prompts: text prompts per image (None allowed when the method needs no text).
        neg_prompts: each image's lesion-free caption(s), for saliency ``dense`` only.
        cfg: pipeline settings.
        keep_maps: keep saliency / coarse / prediction arrays in the results.
        progress: show a tqdm progress bar.
        on_image: called as ``on_image(result, image, gt)`` after each image (overlays etc.);
            the result carries its maps during the call even when ``keep_maps`` is False.
    """
    _check_config(cfg, bundle, segmenter)
    needs_text = cfg.mode != "oracle" and cfg.saliency in TEXT_SALIENCY
    if needs_text and prompts is None:
        raise ValueError(f"saliency {cfg.saliency!r} needs text prompts")
    needs_neg = cfg.mode != "oracle" and cfg.saliency == "dense"
    if needs_neg and neg_prompts is None:
        raise ValueError("saliency 'dense' needs negative prompts (each image's lesion-free caption)")
    results: list[ImageResult] = []
    step = cfg.m2ib.batch_size
    bar = progress_bar(total=len(pairs), desc=f"evaluate ({cfg.mode}, {cfg.saliency})",
                       every=10, disable=not progress)
    for start in range(0, len(pairs), step):
        chunk = pairs[start : start + step]
        images = [read_image(p.image_path) for p in chunk]
        gts = [read_mask(p.mask_path) for p in chunk]
        for p, image, gt in zip(chunk, images, gts, strict=True):
            check_pair(image, gt, p.name)
        if cfg.mode == "oracle":
            maps = [None] * len(chunk)
        else:
            texts = [prompts.for_image(p.name) for p in chunk] if needs_text else [[""]] * len(chunk)
            negs = [neg_prompts.for_image(p.name) for p in chunk] if needs_neg else None
            maps = compute_saliency(bundle, images, texts, cfg, first_index=start, neg_prompts=negs)
        for i, (p, image, gt, sal) in enumerate(zip(chunk, images, gts, maps, strict=True)):
            seed = cfg.seed + start + i
            coarse = gt if sal is None else saliency_to_coarse(sal, cfg)
            boxes, points = prompts_from_mask(coarse, cfg, seed)
            if cfg.mode == "saliency":
                pred = coarse
            elif len(boxes) or len(points):
                pred = segmenter.segment(image, boxes=boxes, points=points)
            else:  # empty coarse mask: nothing to prompt with (upstream crashes here)
                pred = np.zeros(gt.shape, dtype=bool)
            result = ImageResult(
                name=p.name,
                score=score_pair(p.name, pred, gt, tolerance_px=cfg.nsd_tolerance_px),
                coarse_dice=dice(coarse, gt),
                coarse_empty=not coarse.any(),
                pred_empty=not pred.any(),
                boxes=boxes.tolist(),
                saliency=sal, coarse=coarse, pred=pred, gt_empty=not gt.any(),
            )
            if on_image is not None:
                on_image(result, image, gt)
            if not keep_maps:
                result.saliency = result.coarse = result.pred = None
            results.append(result)
            bar.update(1)
    bar.close()
    return EvalResults(results, _summary(results, cfg))


def _summary(results: Sequence[ImageResult], cfg: EvalConfig) -> dict:
    if not results:
        raise ValueError("no images to evaluate")
    summary: dict = {"n_images": len(results), "metrics": summarize_scores([r.score for r in results], seed=cfg.seed)}
    summary["coarse_dice"] = summarize([r.coarse_dice for r in results], seed=cfg.seed)
    summary["n_empty_coarse"] = int(sum(r.coarse_empty for r in results))
    summary["n_empty_prediction"] = int(sum(r.pred_empty for r in results))
    summary["n_empty_gt"] = int(sum(r.gt_empty for r in results))
    summary["config"] = asdict(cfg)
    return summary


def evaluate_classification(bundle: ClipBundle, csv_path, *, class_prompts=None) -> dict:
    """Zero-shot classification on the researcher's CSV (``image_path,class_label,caption``):
    one-vs-rest AUROC and FPR@TPR95 per class, macro means. Class prompts default to each
    class's captions in the CSV."""
    from finetune.evaluation.metrics_report import (
        class_prompts_from_rows,
        classification_metrics,
        read_classification_csv,
    )
    from finetune.evaluation.zero_shot import zero_shot_probs

    rows = read_classification_csv(csv_path)
    prompts = class_prompts or class_prompts_from_rows(rows)
    probs, classes = zero_shot_probs(bundle, [read_image(r.image_path) for r in rows], prompts)
    return classification_metrics([r.class_label for r in rows], probs, classes)

"""Per-image segmentation scores, their summaries, and zero-shot classification metrics.

The per-pixel metrics themselves live in :mod:`shared.metrics` (Dice, IoU, NSD via MONAI,
bootstrap CIs via scipy); this module pairs predictions with ground truth by name and
aggregates. Zero-shot classification follows the researcher's ``a1_inference``: softmax over
class-prompt similarities, one-vs-rest AUROC and FPR at the first threshold with TPR >= 0.95,
macro-averaged over classes.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from shared.io import IMAGE_SUFFIXES, InputError, read_mask
from shared.metrics import bootstrap_ci, dice, iou, nsd

SEGMENTATION_METRICS = ("dice", "iou", "nsd")


class MissingPredictionError(ValueError):
    """A ground-truth image has no prediction (or a prediction has no ground truth)."""


class ClassificationCsvError(InputError):
    """The classification CSV is malformed or names an image that cannot be read."""


@dataclass(frozen=True)
class ImageScore:
    """Segmentation scores of one image."""

    name: str  # image file name (the pairing key)
    dice: float  # 2|P∩G|/(|P|+|G|); 1.0 if both empty
    iou: float  # |P∩G|/|P∪G|; 1.0 if both empty
    nsd: float  # normalised surface Dice at the tolerance; 1.0 if both empty


def score_pair(name: str, pred: np.ndarray, gt: np.ndarray, *, tolerance_px: float = 2.0) -> ImageScore:
    """Scores of one (H, W) bool prediction against its (H, W) bool ground truth."""
    return ImageScore(name, dice(pred, gt), iou(pred, gt), nsd(pred, gt, tolerance_px=tolerance_px))


def score_predictions(
    preds: Mapping[str, np.ndarray], gts: Mapping[str, np.ndarray], *, tolerance_px: float = 2.0
) -> list[ImageScore]:
    """Pair by name (sorted) and score; a name on one side only is an error naming it."""
    missing = sorted(set(gts) - set(preds))
    extra = sorted(set(preds) - set(gts))
    if missing:
        raise MissingPredictionError(
            f"no prediction for {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    if extra:
        raise MissingPredictionError(f"prediction {extra[0]!r} has no ground truth")
    return [score_pair(n, preds[n], gts[n], tolerance_px=tolerance_px) for n in sorted(gts)]


def score_folders(pred_dir: str | Path, gt_dir: str | Path, *, tolerance_px: float = 2.0) -> list[ImageScore]:
    """Score a folder of predicted mask PNGs against a folder of ground-truth masks, by name; a
    name in one folder only is an error naming it (as :func:`score_predictions`)."""
    def masks(folder: str | Path) -> dict[str, Path]:
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingPredictionError(f"{folder}: no such folder")
        return {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in (".png", ".bmp", ".tif", ".tiff", ".jpg")}

    preds, gts = masks(pred_dir), masks(gt_dir)
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise MissingPredictionError(f"{Path(pred_dir) / missing[0]}: prediction missing for this ground truth")
    extra = sorted(set(preds) - set(gts))
    if extra:  # as score_predictions: a stray file means the folders do not pair up
        raise MissingPredictionError(f"{Path(pred_dir) / extra[0]}: prediction has no ground truth "
                                     f"in {gt_dir}" + (f" ({len(extra) - 1} more)" if len(extra) > 1 else ""))
    return [
        score_pair(n, read_mask(preds[n]), read_mask(gts[n]), tolerance_px=tolerance_px)
        for n in sorted(gts)
    ]


def summarize(values: Sequence[float], *, seed: int = 0) -> dict[str, float]:
    """``{n, mean, std, ci_low, ci_high}``: sample std (ddof=1) and 95% percentile bootstrap CI."""
    values = np.asarray(values, dtype=np.float64)
    mean, lo, hi = bootstrap_ci(values, confidence=0.95, seed=seed)
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return {"n": int(values.size), "mean": mean, "std": std, "ci_low": lo, "ci_high": hi}


def summarize_scores(scores: Sequence[ImageScore], *, seed: int = 0) -> dict[str, dict[str, float]]:
    """Summary per metric (dice, iou, nsd)."""
    if not scores:
        raise ValueError("no scores to summarise")
    return {m: summarize([getattr(s, m) for s in scores], seed=seed) for m in SEGMENTATION_METRICS}


# ---------------------------------------------------------------- zero-shot classification

@dataclass(frozen=True)
class ClassificationRow:
    """One row of the researcher's classification CSV."""

    image_path: Path  # resolved against the CSV's folder when relative
    class_label: str  # e.g. "benign", "malignant", "normal"
    caption: str  # the class caption used as this class's prompt


def read_classification_csv(path: str | Path) -> list[ClassificationRow]:
    """Read ``image_path,class_label,caption`` (header required; a UTF-8 byte-order mark, as
    spreadsheet programs write one, is accepted)."""
    path = Path(path)
    if not path.is_file():
        raise ClassificationCsvError(f"{path}: no such classification CSV")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        need = ("image_path", "class_label", "caption")
        if any(c not in fields for c in need):
            raise ClassificationCsvError(f"{path}: header must contain {', '.join(need)}; got {fields}")
        rows = []
        for i, raw in enumerate(reader, 2):
            raw = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            if not raw["image_path"] or not raw["class_label"]:
                raise ClassificationCsvError(f"{path}:{i}: empty image_path or class_label")
            p = Path(raw["image_path"])
            rows.append(ClassificationRow(p if p.is_absolute() else path.parent / p, raw["class_label"],
                                          raw["caption"]))
    if not rows:
        raise ClassificationCsvError(f"{path}: no rows")
    return rows


def check_classification_images(rows: Sequence[ClassificationRow], csv_path: str | Path) -> None:
    """Every row's image exists and has a suffix the image reader takes; else one
    :class:`ClassificationCsvError` naming the CSV, the data row and the file (a command-line run
    checks this before its segmentation pass, so a typo does not cost the run)."""
    for k, r in enumerate(rows, 1):
        if not r.image_path.is_file():
            raise ClassificationCsvError(f"{csv_path}: row {k}: image {r.image_path} does not exist")
        if r.image_path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ClassificationCsvError(f"{csv_path}: row {k}: {r.image_path.name} is not an image "
                                         f"this reader takes ({', '.join(IMAGE_SUFFIXES)})")


def class_prompts_from_rows(rows: Sequence[ClassificationRow]) -> dict[str, list[str]]:
    """Each class's distinct captions (in order of appearance) form its prompt ensemble."""
    prompts: dict[str, list[str]] = {}
    for r in rows:
        caps = prompts.setdefault(r.class_label, [])
        if r.caption and r.caption not in caps:
            caps.append(r.caption)
    empty = [c for c, caps in prompts.items() if not caps]
    if empty:
        raise ClassificationCsvError(f"class {empty[0]!r} has no caption to use as its prompt")
    return prompts


def fpr_at_tpr(y_true: np.ndarray, score: np.ndarray, *, tpr_target: float = 0.95) -> float:
    """False-positive rate at the first ROC threshold whose TPR reaches ``tpr_target``."""
    fpr, tpr, _ = roc_curve(y_true, score)
    return float(fpr[np.argmax(tpr >= tpr_target)])


def classification_metrics(
    labels: Sequence[str], probs: np.ndarray, classes: Sequence[str]
) -> dict[str, object]:
    """One-vs-rest AUROC and FPR@TPR95 per class and their macro means.

    Args:
        labels: N true class names.
        probs: (N, C) class scores (columns in ``classes`` order).
        classes: C class names.
    Classes absent from ``labels`` (or present in every row) are skipped (AUROC undefined).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.shape != (len(labels), len(classes)):
        raise ValueError(f"probs must be ({len(labels)}, {len(classes)}), got {probs.shape}")
    per_class = {}
    for j, c in enumerate(classes):
        y = labels == c
        if y.all() or not y.any():
            continue
        per_class[c] = {"auroc": float(roc_auc_score(y, probs[:, j])), "fpr_at_tpr95": fpr_at_tpr(y, probs[:, j])}
    if not per_class:
        raise ValueError("need at least two classes among the labels to compute AUROC")
    accuracy = float(np.mean(np.asarray(classes)[probs.argmax(1)] == labels))
    return {
        "per_class": per_class,
        "macro_auroc": float(np.mean([v["auroc"] for v in per_class.values()])),
        "macro_fpr_at_tpr95": float(np.mean([v["fpr_at_tpr95"] for v in per_class.values()])),
        "accuracy": accuracy,
        "n": int(len(labels)),
    }

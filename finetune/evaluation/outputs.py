"""Writers for an evaluation run: per-image CSV, summary JSON, overlay PNGs, Markdown report."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from finetune.evaluation.evaluate import EvalResults, ImageResult

CSV_FIELDS = ("name", "dice", "iou", "nsd", "coarse_dice", "coarse_empty", "pred_empty", "boxes")


def write_per_image_csv(path: str | Path, results: Sequence[ImageResult]) -> Path:
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_FIELDS)
        for r in results:
            w.writerow([
                r.name, f"{r.score.dice:.6f}", f"{r.score.iou:.6f}", f"{r.score.nsd:.6f}",
                f"{r.coarse_dice:.6f}", int(r.coarse_empty), int(r.pred_empty), json.dumps(r.boxes),
            ])
    return path


def write_summary_json(path: str | Path, summary: dict) -> Path:
    path = Path(path)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def save_overlay(path: str | Path, image: np.ndarray, result: ImageResult, gt: np.ndarray) -> Path:
    """Five panels: image (with boxes), saliency, coarse mask, prediction, ground truth."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    panels = [
        ("image + prompts", image, None),
        ("saliency", result.saliency, "inferno"),
        (f"coarse (Dice {result.coarse_dice:.2f})", result.coarse, "gray"),
        (f"prediction (Dice {result.score.dice:.2f})", result.pred, "gray"),
        ("ground truth", gt, "gray"),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.3))
    for ax, (title, arr, cmap) in zip(axes, panels, strict=True):
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)
        if arr is None:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            continue
        arr = np.asarray(arr, dtype=np.float32)
        ax.imshow(arr, cmap=cmap if arr.ndim == 2 and cmap else "gray" if arr.ndim == 2 else None,
                  vmin=0, vmax=1, interpolation="nearest")
    for x0, y0, x1, y1 in result.boxes:
        axes[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                                    edgecolor="lime", linewidth=1.2))
    if min(np.shape(gt)[:2]) >= 2:  # matplotlib's contour needs a 2 × 2 grid (a 1 × N strip has none)
        axes[0].contour(np.asarray(gt, dtype=float), levels=[0.5], colors="red", linewidths=0.8)
    fig.suptitle(result.name, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _fmt(m: dict) -> str:
    return f"{m['mean']:.3f} ± {m['std']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def write_markdown_report(path: str | Path, results: EvalResults, *, title: str, extra: dict | None = None) -> Path:
    s = results.summary
    cfg = s["config"]
    lines = [
        f"# {title}", "",
        f"- images: {s['n_images']}; mode `{cfg['mode']}`; saliency `{cfg['saliency']}`; "
        f"prompt `{cfg['prompt']}` (box dilation {cfg['box_dilation_px']} px + "
        f"{cfg.get('box_dilation_frac', 0.0):g} of the image side, scale "
        f"{cfg.get('box_scale', 1.0):g}); "
        f"binarize `{cfg['binarize']}`, "
        + ("the component holding the saliency maximum" if cfg.get("component") == "peak"
           else f"{cfg['num_components']} largest component(s)"),
        f"- empty coarse masks: {s['n_empty_coarse']} (their prediction is empty and scores 0 "
        f"unless the ground truth is empty too); empty predictions: {s['n_empty_prediction']}; "
        f"empty ground truths: {s.get('n_empty_gt', 0)}",
        "", "| metric | mean ± std [95% bootstrap CI] |", "|---|---|",
    ]
    for name, m in s["metrics"].items():
        lines.append(f"| {name} | {_fmt(m)} |")
    lines.append(f"| coarse-mask Dice | {_fmt(s['coarse_dice'])} |")
    if cfg["saliency"] == "m2ib" and cfg["mode"] != "oracle":
        m = cfg["m2ib"]
        fused = f" fused with layer {m['fuse_layer']}" if m.get("fuse_layer") is not None else ""
        lines += ["", f"M2IB: layer {m['layer']}{fused}, β {m['beta']}, var {m['var']}, {m['steps']} steps, "
                  f"lr {m['lr']}, {m['num_samples']} samples, noise `{m['noise_stats']}`, "
                  f"resize `{m['resize_mode']}`."]
    if extra:
        lines += ["", "## Extra", "", "```json", json.dumps(extra, indent=2, default=str), "```"]
    worst = sorted(results.images, key=lambda r: r.score.dice)[:5]
    lines += ["", "## Lowest Dice", "", "| image | Dice | IoU | NSD | coarse empty |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.score.dice:.3f} | {r.score.iou:.3f} | {r.score.nsd:.3f} | {r.coarse_empty} |"
              for r in worst]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

"""Choose the embedded model's M2IB settings on the *validation* split (never on test images).

    OMP_NUM_THREADS=1 python bench/select_m2ib.py --model embedded-pretrained \
        --bench data/bench128_n750 --n 60 --out bench/results/m2ib_selection.md

For every (bottleneck layer, β) of the grid, M2IB saliency of the first ``--n`` validation
positives of each training domain (their own caption as the prompt, the evaluation's noise seeds)
is scored by the pointing game (argmax inside the lesion) and the saliency mass inside the lesion.
The rule, fixed before looking: the highest mean pointing over the training domains, ties broken
by lesion mass. The held-out domain is not used for the choice (its numbers are printed only).
No segmenter runs here: saliency alone, so the sweep costs seconds per setting. The report also
gives each domain's validation zero-shot AUROC (positives vs their GT negatives + normals), so
the same script compares candidate models on validation images. For the chosen setting, a second
table gives the IoU of the saliency's box (binarised by 2-means or a threshold, largest
component) with the GT mask's box: how good a prompt the pipeline hands the segmenter.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_clip_protocol import external_sets  # noqa: E402
from finetune.ablation_eval import lesion_mass, pointing_hit  # noqa: E402
from finetune.ablation_report import auroc  # noqa: E402
from finetune.build import build_clip  # noqa: E402
from finetune.evaluation.clip_bundle import bundle_from_open_clip  # noqa: E402
from finetune.evaluation.m2ib import PRESETS, m2ib_saliency  # noqa: E402
from finetune.evaluation.postprocess import coarse_mask, mask_to_boxes  # noqa: E402
from finetune.evaluation.zero_shot import zero_shot_probs  # noqa: E402
from finetune.train_loop import resolve_model_source  # noqa: E402
from shared.benchmark import DOMAINS, HELD_OUT_DOMAIN, load_manifest  # noqa: E402
from shared.io import read_image, read_mask  # noqa: E402

BINARIZE = {"2-means": {"method": "kmeans"},
            **{f"threshold {t:g}": {"method": "threshold", "threshold": t} for t in (0.3, 0.5, 0.7)}}


def box_iou(boxes: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the first XYXY box (inclusive pixels) with the GT mask's box; 0 without a box."""
    if len(boxes) == 0:
        return 0.0
    a, g = boxes[0], mask_to_boxes(mask)[0]
    iw = max(0, min(a[2], g[2]) - max(a[0], g[0]) + 1)
    ih = max(0, min(a[3], g[3]) - max(a[1], g[1]) + 1)
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1)
    return float(iw * ih / (area - iw * ih))


def validation_sets(bench: str, externals: list[str], error) -> dict[str, list]:
    """{set label: manifest items}: each benchmark domain's validation split, then every external
    set (``DOMAIN=DIR``: all its items of DOMAIN; labels from ``external_sets``)."""
    items = load_manifest(bench)
    sets = {d: [it for it in items if it.domain == d and it.split == "val"] for d in DOMAINS}
    for domain, root, label, _ in external_sets(externals, error):
        sets[label] = [it for it in load_manifest(root) if it.domain == domain]
    return sets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded-pretrained")
    p.add_argument("--bench", default="data/bench128_n750")
    p.add_argument("--n", type=int, default=60, help="validation positives per domain")
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--betas", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0])
    p.add_argument("--external", action="append", default=[], metavar="DOMAIN=DIR",
                   help="also score an external set (python -m shared.benchmark --external; all its "
                        "images) under DOMAIN's prompts: shown, never used for the choice")
    p.add_argument("--out", default="bench/results/m2ib_selection.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    clip = build_clip(resolve_model_source(args.model))
    bundle = bundle_from_open_clip(clip.model.eval(), clip.tokenizer)
    sets = validation_sets(args.bench, args.external, p.error)
    columns = list(sets)
    data, aurocs = {}, {}
    for d, val in sets.items():
        tumors = sorted((it for it in val if it.label == "tumor"), key=lambda it: it.id)
        normals = [read_image(it.image) for it in val if it.label == "normal"]
        pos = [read_image(it.image) for it in tumors]
        neg = [read_image(it.gt_negative) for it in tumors] + normals
        classes = {"normal": [tumors[0].caption_neg], "tumor": sorted({it.caption for it in tumors})}
        probs, names = zero_shot_probs(bundle, pos + neg, classes)
        p_tumor = probs[:, names.index("tumor")]
        aurocs[d] = auroc(p_tumor[: len(pos)], p_tumor[len(pos):])
        tumors = tumors[: args.n]
        data[d] = (pos[: args.n], [read_mask(it.mask) for it in tumors],
                   [[it.caption] for it in tumors])
    print("validation AUROC", aurocs, flush=True)
    rows, maps_of = [], {}
    for layer in args.layers:
        for beta in args.betas:
            cfg = dataclasses.replace(PRESETS["embedded"], layer=layer, beta=beta)
            row = {"layer": layer, "beta": beta}
            for d, (images, masks, prompts) in data.items():
                maps = m2ib_saliency(bundle, images, prompts, cfg, seed=0)
                maps_of[(layer, beta, d)] = maps
                row[d] = (float(np.mean([pointing_hit(s, m) for s, m in zip(maps, masks, strict=True)])),
                          float(np.mean([lesion_mass(s, m) for s, m in zip(maps, masks,
                                                                           strict=True)])))
            train = [d for d in DOMAINS if d != HELD_OUT_DOMAIN]
            row["score"] = (float(np.mean([row[d][0] for d in train])),
                            float(np.mean([row[d][1] for d in train])))
            rows.append(row)
            print(row, flush=True)
    best = max(rows, key=lambda r: r["score"])
    train = [d for d in DOMAINS if d != HELD_OUT_DOMAIN]
    lines = ["## M2IB settings of the embedded model, chosen on the validation split", "",
             f"Command: `python bench/select_m2ib.py {' '.join(argv or sys.argv[1:])}`", "",
             f"Model `{args.model}`; first {args.n} validation positives per domain, own caption; "
             "cells: pointing game / saliency mass inside the lesion. Rule: highest mean pointing "
             f"over the training domains ({', '.join(train)}), ties by lesion mass; "
             f"{HELD_OUT_DOMAIN} (held out) shown, not used.", "",
             "| layer | β | " + " | ".join(columns) + " | training-domain mean |",
             "|---|---|" + "---|" * (len(columns) + 1),
             "| zero-shot AUROC (all val positives vs GT negatives + normals) | | "
             + " | ".join(f"{aurocs[d]:.3f}" for d in columns) + " | |"]
    for r in rows:
        mark = " **(chosen)**" if r is best else ""
        lines.append(f"| {r['layer']} | {r['beta']:g} | " + " | ".join(
            f"{r[d][0]:.2f} / {r[d][1]:.2f}" for d in columns)
            + f" | {r['score'][0]:.3f} / {r['score'][1]:.3f}{mark} |")
    lines += ["", f"Box IoU with the GT box at the chosen setting (layer {best['layer']}, β "
              f"{best['beta']:g}), saliency binarised then the largest component boxed:", "",
              "| binarisation | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, kw in BINARIZE.items():
        ious = {d: np.mean([box_iou(mask_to_boxes(coarse_mask(s, **kw)), m) for s, m in zip(
            maps_of[(best["layer"], best["beta"], d)], data[d][1], strict=True)]) for d in columns}
        lines.append(f"| {name} | " + " | ".join(f"{ious[d]:.3f}" for d in columns) + " |")
    lines.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"chosen: layer {best['layer']}, beta {best['beta']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

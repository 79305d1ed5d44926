"""Diagnostic (issue 17): do a CLIP's own patch tokens point into lesions where its M2IB map does not?

    OMP_NUM_THREADS=2 python bench/diag_dense_pointing.py \
        --model committed=embedded-pretrained --model conv8=local-dir:runs/pt_convstem8_warm/model \
        --out bench/results/dense_pointing.md

M2IB (the MedCLIP-SAMv2 saliency) reads an intermediate block through an information bottleneck;
the pre-training's dense term trains something else: the last block's patch tokens, through the
image head, scored between the image's lesion caption T and its lesion-free caption T⁻,
``z_n = cos(p_n, T) − cos(p_n, T⁻)`` (``finetune.patch_losses.patch_text_loss``, MaskCLIP-style).
This script scores that map on the validation sets of ``bench/diag_local_detector.py`` with its
protocol, so the rows compare with the mask-supervised detectors of ``local_detector.md``:
150 positives and their exact negatives per set; pointing (the map, bilinearly upsampled, peaks in
the lesion), mass (the share of σ(z/τ)'s sum inside the lesion, τ = the dense term's 0.1, as the
detectors' σ(logit)), AUROC (each image's maximum z, positive vs its exact negative,
both scored with the positive's captions). Validation sets only, never test images.

Reading fixed before the numbers: if a model's dense map points into lesions on the held-out rows
clearly better than its M2IB map does (≥ +0.10 mean pointing, M2IB from ``select_m2ib.py``), the
saliency, not the tower, loses what it knows there, and a dense-score saliency is worth a pipeline
option; if not, the tower does not know it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from bench.bench_clip_protocol import external_sets  # noqa: E402
from bench.diag_local_detector import (  # noqa: E402
    EVAL_SETS,
    HELD_OUT_ROWS,
    N_EVAL,
    TRAINING_ROWS,
    _u8,
    map_metrics,
    to_input,
)
from finetune.build import build_clip  # noqa: E402
from finetune.evaluation.clip_bundle import bundle_from_open_clip  # noqa: E402
from finetune.evaluation.saliency_baselines import dense_token_scores  # noqa: E402
from finetune.train_loop import resolve_model_source  # noqa: E402
from shared.benchmark import load_manifest  # noqa: E402
from shared.io import read_mask  # noqa: E402

TAU = 0.1  # the dense term's temperature (configs/embedded/pretrain_clip.yaml: dense_tau)


def dense_maps(bundle, images: torch.Tensor, captions: list[str],
               captions_neg: list[str]) -> torch.Tensor:
    """z maps (B, G, G) of uint8 images (B, S, S) under caption pairs
    (``finetune.evaluation.saliency_baselines.dense_token_scores``, the pipeline's ``dense``
    saliency before upsampling); B may be a multiple k of the number of pairs (image i is scored
    with pair i mod the number of pairs: positives, then their negatives; identical caption lists
    are encoded once)."""
    k = len(images) // len(captions)
    return dense_token_scores(bundle, to_input(images), [[c] for c in captions] * k,
                              [[c] for c in captions_neg] * k)


def evaluate(source: str, sets: dict = EVAL_SETS) -> dict[str, dict[str, float]]:
    clip = build_clip(resolve_model_source(source))
    bundle = bundle_from_open_clip(clip.model.float().eval(), clip.tokenizer)
    out = {}
    for name, (root, domain, split) in sets.items():
        es = [e for e in load_manifest(Path(root))
              if e.domain == domain and e.split == split and e.label == "tumor"][:N_EVAL]
        hits, mass, scores, labels = [], [], [], []
        for i in range(0, len(es), 50):
            chunk = es[i:i + 50]
            caps, caps_neg = [e.caption for e in chunk], [e.caption_neg for e in chunk]
            pos = torch.from_numpy(np.stack([_u8(e.image) for e in chunk]))
            neg = torch.from_numpy(np.stack([_u8(e.gt_negative) for e in chunk]))
            m = torch.from_numpy(np.stack([read_mask(e.mask) for e in chunk])).bool()
            z = dense_maps(bundle, torch.cat([pos, neg]), caps, caps_neg)
            scores += z.flatten(1).amax(1).tolist()
            labels += [1] * len(chunk) + [0] * len(chunk)
            h, ms = map_metrics(z[: len(chunk)], m, temperature=TAU)
            hits, mass = hits + h, mass + ms
        out[name] = {"pointing": float(np.mean(hits)), "mass": float(np.mean(mass)),
                     "auroc": float(roc_auc_score(labels, scores)), "n": len(es)}
        print(source, name, out[name], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=SOURCE")
    p.add_argument("--external", action="append", default=[], metavar="DOMAIN=DIR",
                   help="one more held-out set (python -m shared.benchmark --external; its test "
                        "split, the first 150 positives); repeat")
    p.add_argument("--out", default="bench/results/dense_pointing.md")
    args = p.parse_args(argv)
    models = dict(spec.split("=", 1) for spec in args.model)
    sets = dict(EVAL_SETS) | {label: (root, domain, "test") for domain, root, label, _
                              in external_sets(args.external, p.error)}
    held_out = HELD_OUT_ROWS + [label for label in sets if label not in EVAL_SETS]
    rows = {name: evaluate(source, sets) for name, source in models.items()}
    cols = list(sets)
    lines = ["| model | " + " | ".join(cols) + " | training mean | held-out mean |",
             "|---|" + "---|" * (len(cols) + 2)]
    for name, res in rows.items():
        cells = [f"{res[c]['pointing']:.3f} / {res[c]['mass']:.3f} / {res[c]['auroc']:.3f}"
                 for c in cols]
        means = [np.mean([res[c]["pointing"] for c in group])
                 for group in (TRAINING_ROWS, held_out)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {means[0]:.3f} | {means[1]:.3f} |")
    command = "python bench/diag_dense_pointing.py " + " ".join(
        [f"--model {s}" for s in args.model] + [f"--external {s}" for s in args.external]
    ) + f" --out {args.out}"
    doc = __doc__.split("\n\n")
    text = ["## Diagnostic: the CLIP's dense caption-contrast map on validation sets (issue 17)", "",
            f"Command: `{command}`", "", doc[2].replace("\n", " "), "", doc[3].replace("\n", " "),
            "", "Cells: pointing / mass / AUROC (max z, positive vs exact negative); "
            f"{N_EVAL} positives a set.", "", *lines, ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(text))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

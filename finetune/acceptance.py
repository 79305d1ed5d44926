"""Acceptance numbers of the trainer (issue 7), written to ``bench/results/trainer.md``.

On the held-out benchmark domain (never trained on), for the embedded CLIP before fine-tuning,
after a control run (same steps, plain CLIP loss) and after ``stage1+2`` with generated negatives:

- tumor-vs-background patch silhouette (cosine, last-block patch tokens of the positives;
  ``finetune.evaluation.tsne.patch_features`` + scikit-learn), and
- zero-shot positive/negative classification AUROC (``finetune.evaluation.zero_shot``; positives =
  lesion images, negatives = their exact lesion-free versions and the domain's normal images;
  class prompts = the domain's negative caption vs the ensemble of its positive captions).

``python -m finetune.acceptance --bench data/bench128 --out runs/acceptance [--skip-train]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, silhouette_score

from finetune.build import build_clip
from finetune.config import load_train_config
from finetune.evaluation.clip_bundle import bundle_from_open_clip
from finetune.evaluation.tsne import patch_features
from finetune.evaluation.zero_shot import zero_shot_probs
from finetune.train_loop import resolve_model_source, train
from shared.benchmark import HELD_OUT_DOMAIN, load_manifest
from shared.config import ConfigError
from shared.io import read_image, read_mask

RUNS = {"control": "configs/embedded/control.yaml", "stage12": "configs/embedded/stage12.yaml"}


def domain_eval_set(bench: Path, domain: str, splits: tuple[str, ...]) -> dict:
    """Positives (image, mask, caption), GT negatives and normal images of one domain."""
    items = [it for it in load_manifest(bench) if it.domain == domain and it.split in splits]
    tumors = [it for it in items if it.label == "tumor"]
    normals = [it for it in items if it.label == "normal"]
    return {
        "pos": [read_image(it.image) for it in tumors],
        "masks": [read_mask(it.mask) for it in tumors],
        "gt_neg": [read_image(it.gt_negative) for it in tumors],
        "normal": [read_image(it.image) for it in normals],
        "captions": sorted({it.caption for it in tumors}),
        "caption_neg": tumors[0].caption_neg if tumors else normals[0].caption_neg,
    }


def evaluate_model(source: str, data: dict, *, max_patches: int = 1500, seed: int = 0) -> dict:
    """Patch silhouette and zero-shot AUROC of one CLIP on one domain's evaluation set."""
    clip = build_clip(source)
    bundle = bundle_from_open_clip(clip.model, clip.tokenizer)
    feats, labels = patch_features(bundle, data["pos"], data["masks"])
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:max_patches]
                           for c in (0, 1)])
    sil = float(silhouette_score(feats[keep], labels[keep], metric="cosine"))
    negatives = data["gt_neg"] + data["normal"]
    images = data["pos"] + negatives
    y = np.array([1] * len(data["pos"]) + [0] * len(negatives))
    prompts = {"normal": [data["caption_neg"]], "tumor": data["captions"]}
    probs, classes = zero_shot_probs(bundle, images, prompts)
    p_tumor = probs[:, classes.index("tumor")]
    n_pos = len(data["pos"])
    auroc_gt = float(roc_auc_score(np.r_[np.ones(n_pos), np.zeros(n_pos)],
                                   np.r_[p_tumor[:n_pos], p_tumor[n_pos:2 * n_pos]]))
    return {"patch_silhouette": sil, "auroc": float(roc_auc_score(y, p_tumor)),
            "auroc_vs_gt_negatives": auroc_gt, "n_pos": n_pos, "n_neg": len(negatives),
            "n_patches": int(len(keep))}


def render_report(payload: dict, command: str) -> str:
    """Markdown table of ``acceptance.json``'s results."""
    lines = ["## Trainer acceptance (issue 7)", "",
             f"Command: `{command}`", "",
             "Models: **before** = committed embedded CLIP (`finetune/weights/embedded`); "
             "**control** = same steps, plain CLIP loss; **stage12** = Stage 1+2 with generated "
             "negatives. Silhouette: tumor vs background last-block patch tokens of the positives "
             "(cosine). AUROC: zero-shot p(tumor) of positives vs GT negatives + normal images; "
             "`AUROC gt` = positives vs their exact lesion-free versions only.", "",
             "| eval set | model | patch silhouette | AUROC | AUROC gt | n pos / neg |",
             "|---|---|---|---|---|---|"]
    for split, models in payload["results"].items():
        for name, r in models.items():
            lines.append(f"| {split} | {name} | {r['patch_silhouette']:.3f} | {r['auroc']:.3f} | "
                         f"{r['auroc_vs_gt_negatives']:.3f} | {r['n_pos']} / {r['n_neg']} |")
    lines += ["", "Run configs: " + "; ".join(f"{k}: `{v}`" for k, v in payload["configs"].items()),
              "", "Training wall time (s, shared 2-core CPU, one thread): "
              + ", ".join(f"{k} {v:.0f}" for k, v in payload.get("timings_s", {}).items()), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m finetune.acceptance", description=__doc__)
    p.add_argument("--bench", default="data/bench128", help="benchmark folder (manifest.jsonl)")
    p.add_argument("--out", default="runs/acceptance", help="run outputs")
    p.add_argument("--report", default="bench/results/trainer.md")
    p.add_argument("--skip-train", action="store_true", help="reuse finished runs under --out")
    p.add_argument("--report-only", action="store_true",
                   help="render --report from OUT/acceptance.json without training or evaluating")
    p.add_argument("overrides", nargs="*", help="key=value overrides for both runs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    bench, out = Path(args.bench), Path(args.out)
    command = "python -m finetune.acceptance " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.report_only:
        if not (out / "acceptance.json").is_file():
            raise ConfigError(f"--report-only: {out} holds no acceptance.json yet; run "
                              "python -m finetune.acceptance first")
        payload = json.loads((out / "acceptance.json").read_text())
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(render_report(payload, command))
        return 0
    models = {"before": resolve_model_source("embedded-pretrained")}
    timings, configs = {}, {}
    for name, path in RUNS.items():
        overrides = [f"data.root={bench}", f"output_dir={out / name}", "resume=none",
                     *args.overrides]
        cfg = load_train_config(path, overrides)
        configs[name] = f"{path} " + " ".join(overrides)
        if not args.skip_train:
            start = time.perf_counter()
            train(cfg)
            timings[name] = time.perf_counter() - start
        models[name] = f"local-dir:{out / name / 'model'}"
    results = {}
    for split_name, domain, splits in (("held-out", HELD_OUT_DOMAIN, ("train", "val", "test")),):
        data = domain_eval_set(bench, domain, splits)
        results[split_name] = {m: evaluate_model(src, data) for m, src in models.items()}
    train_domains = sorted({it.domain for it in load_manifest(bench)} - {HELD_OUT_DOMAIN})
    for domain in train_domains:
        data = domain_eval_set(bench, domain, ("test",))
        results[f"{domain} (test)"] = {m: evaluate_model(src, data) for m, src in models.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "acceptance.json").write_text(json.dumps(
        {"results": results, "timings_s": timings, "configs": configs}, indent=2) + "\n")
    print(json.dumps({"results": results, "timings_s": timings}, indent=2))
    payload = {"results": results, "timings_s": timings, "configs": configs}
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(render_report(payload, command))
    return 0


if __name__ == "__main__":
    from shared.cli import run

    run(main)

"""The demo's Markdown report: contact sheet, ablation table, overlays, t-SNE, timings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shared.benchmark import HELD_OUT_DOMAIN, BenchmarkItem
from shared.io import read_image, read_mask

N_OVERLAYS = 4  # test images drawn with saliency / coarse mask / prediction / GT


def _models(abl, ablation_dir: Path, seed: int) -> dict[str, str]:
    from finetune.evaluation.cli import DEFAULT_MODEL
    from finetune.train_loop import resolve_model_source

    return {"no fine-tune": resolve_model_source(abl.base_model),
            "stage1+2": f"local-dir:{ablation_dir / 'train' / 'stage1+2' / f'seed{seed}' / 'model'}",
            "default eval model": resolve_model_source(DEFAULT_MODEL)}


def _overlays_and_tsne(cfg, out: Path, ablation_dir: Path, items: list[BenchmarkItem]) -> dict:
    """Overlays of the pipeline on a few test positives of the ablation's domain and t-SNE of
    both models."""
    from demo.default_model import default_model_config
    from finetune.ablation import load_ablation_config
    from finetune.ablation_eval import cached_segmenter, eval_config
    from finetune.build import build_clip
    from finetune.evaluation.clip_bundle import bundle_from_open_clip
    from finetune.evaluation.evaluate import evaluate_dataset
    from finetune.evaluation.outputs import save_overlay
    from finetune.evaluation.prompts import PromptSet
    from finetune.evaluation.tsne import feature_analysis
    from shared.datasets import Pair

    abl = load_ablation_config(ablation_dir / "ablation_config.json")
    held = [it for it in items if it.domain == abl.domain and it.label == "tumor"
            and (not abl.splits or it.split in abl.splits)]
    held = sorted(held, key=lambda it: it.id)[: abl.n_positives]
    bundles = {}
    for name, source in _models(abl, ablation_dir, cfg.seed).items():
        clip = build_clip(source)
        bundles[name] = bundle_from_open_clip(clip.model.eval(), clip.tokenizer)
    segmenter = cached_segmenter(abl.segmenter_checkpoint)
    shown = held[:N_OVERLAYS]
    pairs = [Pair(f"{it.id}.png", it.image, it.mask) for it in shown]
    prompts = PromptSet((), {f"{it.id}.png": (it.caption,) for it in shown})
    overlays = []
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    for name, bundle in bundles.items():
        tag = name.replace(" ", "_").replace("+", "")
        # the evaluation default draws its box by its own rule (demo.default_model)
        model_cfg = default_model_config(abl, bundle) if name == "default eval model" else abl

        def save(result, image, gt, tag=tag):
            overlays.append(str(save_overlay(out / "overlays" / f"{tag}_{result.name}",
                                             image, result, gt).relative_to(out)))

        evaluate_dataset(bundle, pairs, segmenter=segmenter, prompts=prompts,
                         cfg=eval_config(model_cfg, "segmenter"), on_image=save)
    pos = [read_image(it.image) for it in held]
    masks = [read_mask(it.mask) for it in held]
    negs = [read_image(it.gt_negative) for it in held]
    tsne = feature_analysis({k.replace(" ", "_").replace("+", ""): b for k, b in bundles.items()},
                            pos, masks, negs, out / "tsne", max_patches_per_class=300,
                            seed=cfg.seed)
    return {"overlays": overlays, "tsne": tsne,
            "tsne_pngs": sorted(str(p.relative_to(out)) for p in (out / "tsne").glob("*.png"))}


def _summary_table(rows: list[dict], title: str) -> str:
    """Fixed-width text table: one line per variant, means and Dice − none with its 95% CI."""
    by_variant: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], {})[r["metric"]] = r
    cols = (("dice", "Dice"), ("auroc", "AUROC"), ("pointing", "point"), ("faithfulness", "faith"))
    head = f"{'variant':<20}" + "".join(f" {name:>6}" for _, name in cols)
    lines = [title, head + "   Dice − none [95% CI]"]
    for variant, metrics in by_variant.items():
        def mean(m: str, metrics: dict = metrics) -> str:
            return f"{metrics[m]['mean']:6.3f}" if m in metrics else f"{'—':>6}"

        d = metrics.get("dice", {}).get("delta", {}).get("none")
        ci = f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" if d and variant != "none" else ""
        lines.append(f"{variant:<20}" + "".join(f" {mean(m)}" for m, _ in cols) + f"   {ci}")
    return "\n".join(lines)


def write_demo_report(cfg, out: Path, *, bench: Path, ablation_dir: Path, sheet: Path,
                      sheet_stats: list[dict], items: list[BenchmarkItem], timings: dict,
                      ablation_report: Path, default_rows: dict[str, list[dict]]) -> Path:
    """Write ``out/report.md`` and ``out/summary.txt``; returns the report path."""
    extras_path = ablation_dir / "figures.json"  # figures belong to one set of trained models
    if extras_path.is_file():
        extras = json.loads(extras_path.read_text())
    else:
        extras = _overlays_and_tsne(cfg, out, ablation_dir, items)
        extras_path.write_text(json.dumps(extras, indent=1) + "\n")
    from finetune.ablation import load_ablation_config
    from finetune.ablation_report import render_table
    from finetune.evaluation.cli import DEFAULT_MODEL

    abl = load_ablation_config(ablation_dir / "ablation_config.json")
    rows = json.loads((ablation_dir / "rows.json").read_text())
    summary = _summary_table(rows + default_rows.get(abl.domain, []),
                             f"{abl.domain}, test split (fine-tuned on its training split)")
    also_path = ablation_dir / "rows_also.json"
    for domain, also_rows in (json.loads(also_path.read_text()) if also_path.is_file() else {}
                              ).items():
        summary += "\n\n" + _summary_table(
            also_rows + default_rows.get(domain, []),
            f"{domain}, the same models (left out of fine-tuning: forgetting row)")
    utility = [line for line in ablation_report.read_text().splitlines()
               if line.startswith("Negative utility")] if ablation_report.is_file() else []
    summary += "\n\n" + "\n".join(utility) if utility else ""
    (out / "summary.txt").write_text(summary + "\n")
    psnr = np.mean([s["psnr_in_mask"] for s in sheet_stats])
    psnr0 = np.mean([s["psnr_untouched"] for s in sheet_stats])
    tex = np.mean([s["texture_ratio"] for s in sheet_stats])
    lines = [
        "# Demo report", "",
        f"Benchmark: `{bench}` ({cfg.n_per_domain} positives per domain, {cfg.size}², seed "
        f"{cfg.bench_seed}: new lesions, not the pre-training images). The researcher's protocol: "
        f"fine-tune on **{abl.domain}**'s training split, evaluate on its test split; the held-out "
        f"domain **{HELD_OUT_DOMAIN}** (never trained on) is the forgetting row. Fine-tuning: "
        f"{cfg.steps} steps, batch {cfg.batch_size}, seed {cfg.seed}. Single seed: read "
        "differences as direction, and trust them only where the CI excludes 0.", "",
        "## Negatives from the generator service", "",
        "Rows: positive (lesion outlined) | negative generated by the service | exact GT negative.",
        "", f"![negatives]({sheet.relative_to(out)})", "",
        f"Inside the mask, PSNR vs the GT negative: generated {psnr:.2f} dB vs untouched "
        f"positive {psnr0:.2f} dB; texture ratio {tex:.2f} (1 = as textured as real tissue); "
        "outside the dilated mask the max abs difference to the input is "
        f"{max(s['outside_mask_max_diff'] for s in sheet_stats):.0f}.", "",
        "## Small ablation in the researcher's protocol", "",
        (ablation_report.read_text().split("\n", 1)[1] if ablation_report.is_file() else ""), "",
        "## The evaluation default, zero-shot", "",
        f"`python -m finetune.evaluate` without `--model` uses `{DEFAULT_MODEL}` (16 × 16 tokens, "
        "its own box rule); the ablation fine-tunes `" + abl.base_model + "`. The same test "
        "positives, Δ against the ablation's `none` row:", "",
        *[f"**{d}**\n\n{render_table(r)}\n" for d, r in default_rows.items()],
        "## Pipeline overlays (image, saliency, coarse mask, prediction, GT)", "",
        *[f"![{p}]({p})" for p in extras["overlays"]], "",
        "## t-SNE of tumor vs background patches and positives vs negatives", "",
        *[f"![{p}]({p})" for p in extras["tsne_pngs"]], "",
        "Silhouette (cosine) per model: " + "; ".join(
            f"{m}: patches {v['patches']['silhouette_features']:.3f}, "
            f"images {v['images']['silhouette_features']:.3f}"
            for m, v in extras["tsne"].items()), "",
        "## Timings (s)", "", *[f"- {k}: {v:.0f}" for k, v in timings.items()], "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report

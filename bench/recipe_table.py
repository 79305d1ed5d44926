"""One table over several ablation runs of the same setup that differ in the fine-tuning recipe
(learning rate, WiSE-FT α, ...): per run and variant the mean of each metric and its difference
to no fine-tune, plus Stage 1+2 (GT negatives) − Stage 1. Meant for the *validation* split, where
a recipe may be chosen; the test split is then run once with the chosen recipe.

    python bench/recipe_table.py runs/sweep_lr1e4 runs/sweep_a05 --out bench/results/finetune_recipe.md

AUROC: zero-shot p(tumour) of the positives against the negatives (their exact lesion-free
versions + the domain's normals), per seed, averaged over seeds (as the ablation report).
Δ columns: mean over images of the
per-image difference (seeds averaged first), 95 % paired bootstrap CI over images (2000, seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.ablation_report import auroc  # noqa: E402
from shared.metrics import bootstrap_ci  # noqa: E402

METRICS = ("dice", "pointing", "faithfulness")


def _runs(run: Path, variant: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "results").glob(f"{variant}__seed*.json"))]


def _auroc(results: list[dict]) -> float:
    """Zero-shot AUROC of each seed's model (``finetune.ablation_report.auroc``), averaged over
    seeds as the ablation report does."""
    return float(np.mean([auroc(np.asarray(r["p_pos"]), np.asarray(r["p_neg"])) for r in results]))


def _delta(a: list[dict], b: list[dict], m: str) -> str:
    """b − a per image (each side averaged over its seeds), with its bootstrap CI."""
    d = np.mean([r[m] for r in b], 0) - np.mean([r[m] for r in a], 0)
    mean, lo, hi = bootstrap_ci(d, seed=0)
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]{' *' if lo > 0 or hi < 0 else ''}"


def table(runs: list[Path], variants: list[str]) -> str:
    head = ("| run | variant | seeds | dice | pointing | faithfulness | auroc | "
            "Δ dice vs none | Δ pointing vs none | Δ auroc vs none |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    gains = []
    for run in runs:
        none = _runs(run, "none")
        for v in variants:
            res = _runs(run, v)
            if not res:
                continue
            means = [f"{np.mean([np.mean(r[m]) for r in res]):.3f}" for m in METRICS]
            auc = _auroc(res)
            deltas = (["—"] * 2 if v == "none" or not none else
                      [_delta(none, res, "dice"), _delta(none, res, "pointing")])
            d_auc = f"{auc - _auroc(none):+.3f}" if none and v != "none" else "—"
            lines.append(f"| {run.name} | {v} | {len(res)} | {' | '.join(means)} | {auc:.3f} | "
                         f"{' | '.join(deltas)} | {d_auc} |")
        s1, gt = _runs(run, "stage1"), _runs(run, "stage1+2-gt")
        if s1 and gt:
            gains.append(f"- {run.name}: Stage 1+2 (GT) − Stage 1: dice {_delta(s1, gt, 'dice')}, "
                         f"pointing {_delta(s1, gt, 'pointing')}, "
                         f"faithfulness {_delta(s1, gt, 'faithfulness')}")
    return "\n".join(lines + [""] + gains) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--variants", nargs="+",
                   default=["none", "control", "stage1", "stage1+2-gt", "stage1+2"])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    text = table(args.runs, args.variants)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

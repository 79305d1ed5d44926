"""Per-variant difference between two ablation runs of the same setup (a lever on vs off).

    python bench/compare_ablations.py --a runs/negatives_brain_mri --b runs/anchor_brain_mri \
        --label-a unanchored --label-b "anchored (weight 1)" --out bench/results/anchor_experiment.md

Per variant and metric: the mean over seeds in each run, and b − a with a 95% bootstrap CI over
images (per-image values averaged over each run's seeds first; 2000 resamples, seed 0). The
``none`` row (no fine-tune) is the reference both runs share. Also for each ``also_*`` domain.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.metrics import bootstrap_ci  # noqa: E402


def _load(run: Path, variant: str, sub: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run / "results" / sub).glob(f"{variant}__seed*.json"))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", type=Path, required=True)
    p.add_argument("--b", type=Path, required=True)
    p.add_argument("--label-a", default="a")
    p.add_argument("--label-b", default="b")
    p.add_argument("--variants", nargs="+", default=["control", "stage1", "stage1+2-gt", "stage1+2-cf-gt"])
    p.add_argument("--metrics", nargs="+", default=["pointing", "dice", "faithfulness", "auroc_p"])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    subs = [""] + sorted(d.name for d in (args.a / "results").glob("also_*") if d.is_dir())
    lines = [f"| domain | variant | metric | {args.label_a} | {args.label_b} | "
             f"{args.label_b} − {args.label_a} [95% CI] | none |", "|---|---|---|---|---|---|---|"]
    for sub in subs:
        domain = sub.removeprefix("also_") or "evaluated domain"
        none = _load(args.a, "none", sub)
        for v in args.variants:
            a, b = _load(args.a, v, sub), _load(args.b, v, sub)
            if not a or not b:
                continue
            for m in args.metrics:
                if m not in a[0] or not isinstance(a[0][m], list):
                    continue
                x = np.mean([r[m] for r in a], 0)
                y = np.mean([r[m] for r in b], 0)
                mean, lo, hi = bootstrap_ci(y - x, seed=0)
                star = " *" if lo > 0 or hi < 0 else ""
                ref = f"{np.mean(none[0][m]):.3f}" if none and m in none[0] else "—"
                lines.append(f"| {domain} | {v} ({len(a)}/{len(b)} seeds) | {m} | {x.mean():.3f} | "
                             f"{y.mean():.3f} | {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]{star} | {ref} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

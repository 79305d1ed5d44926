"""Paired differences between any two variants of a finished ablation folder, beyond the rows the
report prints (Δ vs none, vs control, GT − Stage 1, U): e.g. generated vs biharmonic negatives.

    python bench/ablation_pairs.py runs/negatives_convstem_breast_us/results \
        stage1+2:stage1+2-biharmonic stage2-gt:stage1+2-gt

A side written ``FOLDER/VARIANT`` is read from another results folder (same evaluation set and
seed, e.g. a variant trained with other weights in its own output_dir):

    python bench/ablation_pairs.py runs/s1w_val/w070_100/results \
        runs/s1w_val/w000_100/results/stage1:control

``--pool FOLDER`` pools another evaluation set of the same models (e.g. a second draw of one
source) with the positional folder: per variant and seed, the per-image values of both sets are
concatenated (AUROC: the positives' and the negatives' scores), keeping the seeds both sets hold.

Per-image values are averaged over each variant's finished seeds first, then a paired bootstrap
over images (``finetune.ablation_report.compare``, 2000 resamples; AUROC: stratified); ``*`` = the
95 % CI excludes 0.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from finetune.ablation_report import compare

METRICS = ("dice", "pointing", "faithfulness", "auroc")


def load_results(folder: Path) -> dict[str, dict[int, dict]]:
    """``<variant>__seed<k>.json`` files -> {variant: {seed: per-image results}}."""
    out: dict[str, dict[int, dict]] = {}
    for path in sorted(folder.glob("*__seed*.json")):
        variant, seed = path.stem.rsplit("__seed", 1)
        out.setdefault(variant, {})[int(seed)] = json.loads(path.read_text())
    return out


def pooled(sets: list[dict[str, dict[int, dict]]]) -> dict[str, dict[int, dict]]:
    """:func:`load_results` of several evaluation sets -> one: for each variant and seed held by
    every set, each per-image list concatenated in the sets' order (other keys dropped)."""
    out: dict[str, dict[int, dict]] = {}
    for variant in sorted(set.intersection(*(set(s) for s in sets))):
        for seed in sorted(set.intersection(*(set(s[variant]) for s in sets))):
            runs = [s[variant][seed] for s in sets]
            keys = [k for k, v in runs[0].items() if isinstance(v, list) and all(k in r for r in runs)]
            out.setdefault(variant, {})[seed] = {k: [x for r in runs for x in r[k]] for k in keys}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="an ablation results folder (results/ or results/also_<domain>)")
    p.add_argument("pairs", nargs="+", help="A:B, read as variant A minus variant B; a side "
                   "FOLDER/VARIANT comes from another results folder")
    p.add_argument("--pool", type=Path, action="append", default=[], metavar="FOLDER",
                   help="pool another evaluation set's results (same models, e.g. a second draw "
                   "of one source) with the folder's, image by image")
    args = p.parse_args(argv)
    folders = {args.folder: pooled([load_results(f) for f in (args.folder, *args.pool)])}

    def side(spec: str) -> dict[int, dict] | None:  # "VARIANT" or "FOLDER/VARIANT"
        folder, _, variant = spec.rpartition("/")
        if folder and args.pool:
            p.error(f"{spec!r}: --pool pools the positional folder only; a FOLDER/VARIANT side "
                    "cannot be pooled")
        folder = Path(folder) if folder else args.folder
        if folder not in folders:
            folders[folder] = load_results(folder)
        return folders[folder].get(variant)

    for pair in args.pairs:
        a, sep, b = pair.partition(":")
        ra, rb = side(a), side(b)
        missing = [v for v, r in ((a, ra), (b, rb)) if r is None]
        if not sep or missing:
            p.error(f"{pair!r}: expected A:B of finished variants (missing {missing}); "
                    f"finished in {args.folder}{' and every --pool folder' if args.pool else ''}: "
                    f"{sorted(folders[args.folder])}")
        for metric in METRICS:
            mean, lo, hi = compare(ra, rb, metric)
            star = " *" if lo > 0 or hi < 0 else ""
            print(f"{a} ({len(ra)} seeds) − {b} ({len(rb)} seeds), {metric}: "
                  f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]{star}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

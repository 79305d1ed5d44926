"""CLI: ``python -m shared.benchmark --out DIR [--domains ...] [--n-per-domain N] [--size S]
[--seed S] [--preview]``."""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from shared.benchmark.build import DOMAINS, build_benchmark, load_manifest
from shared.benchmark.external import EXTERNAL_ALTERNATES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m shared.benchmark", description=__doc__)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    p.add_argument("--n-per-domain", type=int, default=100, help="positives per domain")
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preview", action="store_true", help="also write preview.png (contact sheet)")
    p.add_argument("--external", action="store_true",
                   help="anatomy from each domain's external source (never trained on), all test")
    p.add_argument("--external-source", default=None, choices=sorted(EXTERNAL_ALTERNATES),
                   help="an external set by name (implies --external), replacing its domain's default "
                        "(dipy_t2_head: whole T2 slices of another head, brain_mri; "
                        "dipy_t2_head_hyperintense: the same with T2-looking, hyperintense lesions)")
    p.add_argument("--aux-per-source", type=int, default=0,
                   help="also N training-only positives on each auxiliary anatomy source "
                        "(leg X-ray, shoulder MR, abdominal CT)")
    p.add_argument("--multi-source", type=int, default=0,
                   help="also N training-only positives on every real training source at many "
                        "scales and on procedural textures (shared.benchmark.multisource)")
    p.add_argument("--multi-source-extra", action="store_true",
                   help="with --multi-source: also the sources found later (a chest CT, a cardiac "
                        "cine, a lymph-node ultrasound; shared.benchmark.sources.EXTRA_TRAIN)")
    p.add_argument("--multi-source-t2-look", action="store_true",
                   help="with --multi-source: half the brain-look lesions drawn as T2 shows a "
                        "tumour (bright core and edema): brain lesions of both polarities")
    p.add_argument("--train-t2-look", type=float, default=0.0, metavar="SHARE",
                   help="that share of the brain_mri training positives drawn with the T2 look "
                        "(bright); validation and test unchanged")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.external = args.external or args.external_source is not None
    if Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"error: --out {args.out} is a file, not a folder", file=sys.stderr)
        return 2
    try:
        manifest = build_benchmark(args.out, domains=args.domains, n_per_domain=args.n_per_domain,
                                   size=args.size, seed=args.seed, progress=True,
                                   external=args.external, aux_per_source=args.aux_per_source,
                                   multi_source=args.multi_source,
                                   multi_source_extra=args.multi_source_extra,
                                   multi_source_t2_look=args.multi_source_t2_look,
                                   external_source=args.external_source,
                                   train_t2_look=args.train_t2_look)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    items = load_manifest(manifest)
    counts = collections.Counter((it.domain, it.split, it.label) for it in items)
    print(f"benchmark written to {manifest.parent} ({len(items)} images, size {args.size})")
    print(f"{'domain':<12} {'split':<6} {'tumor':>6} {'normal':>7}")
    for domain in list(args.domains) + sorted({it.domain for it in items} - set(args.domains)):
        for split in ("train", "val", "test"):
            print(f"{domain:<12} {split:<6} {counts[(domain, split, 'tumor')]:>6} "
                  f"{counts[(domain, split, 'normal')]:>7}")
    splits = ("test",) if args.external else ("train", "val", "test")  # an external set is all test
    empty = [f"{d}/{split}" for d in args.domains for split in splits
             if not counts[(d, split, "tumor")]]
    if empty:
        print(f"warning: no positives in {', '.join(empty)} (--n-per-domain {args.n_per_domain} is "
              "too few to fill every split; 3 or more fill each)", file=sys.stderr)
    if args.preview:
        from shared.benchmark.preview import contact_sheet

        print(f"contact sheet: {contact_sheet(manifest.parent, manifest.parent / 'preview.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Held-out sanity numbers of the committed embedded models, per benchmark domain.

    OMP_NUM_THREADS=1 python bench/bench_embedded_models.py --clip committed=embedded-pretrained \
        [--clip NAME=SOURCE ...] [--scorers [NAME=]DIR ...] [--no-clip] \
        --out bench/results/embedded_models.md

- CLIP (``finetune.acceptance.evaluate_model``): zero-shot tumor-vs-lesion-free AUROC (all
  lesion-free images, and the positives' own GT negatives only) and the tumor/background patch
  silhouette, on the test split of each training domain and on every split of the held-out one.
- Scorers: the share of positive/GT-negative pairs where the lesion (ranking) and audit scorers
  give the positive the higher logit, and their mean probabilities, on the 64² benchmark (test
  split of every domain). Region-conditioned scorers get the lesion mask dilated by 2 px as the
  region of both images; whole-image ones (the scorers committed before region conditioning,
  which ``load_scorers`` builds with ``WHOLE_IMAGE_CONFIGS``) get the image alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from finetune.acceptance import domain_eval_set, evaluate_model  # noqa: E402
from finetune.train_loop import resolve_model_source  # noqa: E402
from generator.masks import dilate  # noqa: E402
from generator.modeling.scorers import ConvScorer  # noqa: E402
from generator.scoring import SCORERS_DIR, load_scorers, scorer_logits  # noqa: E402
from shared.benchmark import HELD_OUT_DOMAIN, load_manifest  # noqa: E402
from shared.io import read_image, read_mask  # noqa: E402

DOMAINS = ("chest_xray", "brain_mri", "breast_us", "retina")
REGION_DILATION_PX = 2  # region = lesion mask dilated by this (as the generator's default hole)


def _splits(domain: str) -> tuple[str, ...]:
    return ("train", "val", "test") if domain == HELD_OUT_DOMAIN else ("test",)


def clip_rows(models: dict[str, str], bench: Path) -> list[str]:
    lines = ["| domain (splits) | model | AUROC | AUROC vs GT negatives | patch silhouette | pos / neg |",
             "|---|---|---|---|---|---|"]
    for domain in DOMAINS:
        data = domain_eval_set(bench, domain, _splits(domain))
        for name, source in models.items():
            r = evaluate_model(resolve_model_source(source), data)
            lines.append(f"| {domain} ({', '.join(_splits(domain))}) | {name} | {r['auroc']:.3f} | "
                         f"{r['auroc_vs_gt_negatives']:.3f} | {r['patch_silhouette']:.3f} | "
                         f"{r['n_pos']} / {r['n_neg']} |")
    return lines


def pair_logits(model: ConvScorer, pos, neg, regions) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N,) of positives and of their GT negatives, both with ``regions`` when the
    scorer is region-conditioned (in_channels 2), else with the image alone."""
    return scorer_logits(model, pos, regions), scorer_logits(model, neg, regions)


def scorer_rows(scorer_dirs: dict[str, Path], bench: Path, n: int) -> list[str]:
    """Per domain and scorer set: share of test pairs with logit(positive) > logit(GT negative)
    for lesion and audit, and the lesion scorer's mean probabilities."""
    lines = ["| domain (test split) | scorers | pairs | lesion: pos > GT neg | audit: pos > GT neg "
             "| lesion p (pos / GT neg) |", "|---|---|---|---|---|---|"]
    sets = {label: load_scorers(d) for label, d in scorer_dirs.items()}
    manifest = load_manifest(bench)
    for domain in DOMAINS:
        items = [it for it in manifest if it.domain == domain and it.split == "test"
                 and it.label == "tumor"][:n]
        pos = [read_image(it.image) for it in items]
        neg = [read_image(it.gt_negative) for it in items]
        regions = [dilate(read_mask(it.mask), REGION_DILATION_PX) for it in items]
        for label, models in sets.items():
            cells = []
            for name in ("lesion", "audit"):
                a, b = pair_logits(getattr(models, name), pos, neg, regions)
                cells.append(float((a > b).float().mean()))
                if name == "lesion":
                    probs = (float(torch.sigmoid(a).mean()), float(torch.sigmoid(b).mean()))
            lines.append(f"| {domain} | {label} | {len(items)} | {cells[0]:.2f} | {cells[1]:.2f} | "
                         f"{probs[0]:.2f} / {probs[1]:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clip", action="append", default=[], help="NAME=SOURCE (finetune.build)")
    p.add_argument("--bench128", type=Path, default=Path("data/bench128"))
    p.add_argument("--bench64", type=Path, default=Path("data/bench64"))
    p.add_argument("--scorers", action="append", default=[],
                   help="[NAME=]DIR of scorers (repeatable; default: the committed ones)")
    p.add_argument("--no-clip", action="store_true", help="scorer table only")
    p.add_argument("--n-pairs", type=int, default=60)
    p.add_argument("--out", type=Path, default=Path("bench/results/embedded_models.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    models = dict(spec.split("=", 1) for spec in (args.clip or ["committed=embedded-pretrained"]))
    repo = Path(__file__).resolve().parents[1]
    specs = [s if "=" in s else f"{s}={s}" for s in args.scorers]
    scorer_dirs = dict(s.split("=", 1) for s in specs) or {
        str(SCORERS_DIR.relative_to(repo)): SCORERS_DIR}
    scorer_dirs = {label: Path(d) for label, d in scorer_dirs.items()}
    shown = " ".join(f"--scorers {s}" for s in args.scorers)
    clip = ([] if args.no_clip else ["### Embedded CLIP: zero-shot lesion detection", "",
                                     *clip_rows(models, args.bench128), ""])
    lines = ["## Embedded models: per-domain sanity numbers", "",
             f"Command: `python bench/bench_embedded_models.py "
             f"{' '.join('--clip ' + s for s in args.clip)} {shown}"
             f"{' --no-clip' if args.no_clip else ''}`", "",
             f"Held-out domain: `{HELD_OUT_DOMAIN}` (never trained on by either model).", "",
             *clip, "### Scorers: positive vs its own GT negative", "",
             f"Region (region-conditioned scorers): the lesion mask dilated by "
             f"{REGION_DILATION_PX} px.", "",
             *scorer_rows(scorer_dirs, args.bench64, args.n_pairs)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

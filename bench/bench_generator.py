"""Acceptance numbers of the embedded reference generator on the held-out benchmark domain.

``python bench/bench_generator.py --data data/bench64 --domain chest_xray --split test``

Compares, on the same images and masks (dilated by ``--dilation-px``): the untouched positive,
scikit-image's biharmonic inpainting, and the generator. Inside the dilated mask vs the GT
negative: PSNR, SSIM, MSE (BraTS local-synthesis protocol); texture ratio vs the GT
(``shared.metrics.texture_ratio``); outside-mask max |diff| vs the input; when embedded scorers
exist, flip rates, the fill detector's rate at p ≥ 0.5 and ``fill_above_gt``: how often it finds
the region more fill-like than the GT negative's real tissue there (0.5 = indistinguishable from
real tissue, independent of the detector's threshold). Writes ``bench/results/generator.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generator.build import load_generator  # noqa: E402
from generator.masks import dilate  # noqa: E402
from generator.modeling import pixel_unet  # noqa: E402
from generator.scoring import (  # noqa: E402
    SCORERS_DIR,
    load_scorers,
    scorer_flags,
    scores_with_gt,
)
from shared.benchmark import load_manifest  # noqa: E402
from shared.io import read_image, read_mask  # noqa: E402
from shared.metrics import bootstrap_ci, paired_bootstrap_ci  # noqa: E402

READING_MARKER = "<!-- reading: written by hand, kept when this script rewrites the file -->"


def _kept_reading(out: Path) -> str:
    """The hand-written reading below ``READING_MARKER`` in an existing results file, or ''."""
    if not out.is_file():
        return ""
    text = out.read_text()
    at = text.find(READING_MARKER)
    return "" if at < 0 else "\n" + text[at:]


def tumor_items(data: Path, domain: str, split: str = "test", n: int = 0) -> list:
    """The first ``n`` (0 = all) tumor items of ``domain``/``split`` in the benchmark manifest."""
    items = [it for it in load_manifest(data)
             if it.domain == domain and it.split == split and it.label == "tumor"]
    return items[:n] if n else items


def see_through_biharmonic(image: np.ndarray, biharmonic: np.ndarray, region: np.ndarray,
                           sigma: float) -> np.ndarray:
    """The see-through priors without a model: biharmonic + the hole's own high-pass (σ px),
    ``b + H(x − b)`` with the sampler's operator ``pixel_unet.hole_high_pass``, clipped to at
    most the input inside the region (grayscale)."""
    x, b = gray(image), gray(biharmonic)
    as_t = lambda a: torch.from_numpy(a)[None, None]  # noqa: E731
    high = pixel_unet.hole_high_pass(as_t(x - b), as_t(region.astype(np.float64)), sigma)[0, 0]
    fill = b + high.numpy()
    return np.where(region, np.minimum(np.clip(fill, 0.0, 1.0), x), x)


def gray(x: np.ndarray) -> np.ndarray:
    """A float64 single-channel view (channel mean of RGB), as the texture metrics see images."""
    return np.asarray(x if x.ndim == 2 else x.mean(axis=2), np.float64)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/bench64"))
    p.add_argument("--domain", nargs="+", default=["chest_xray"],
                   help="first = the held-out domain of the acceptance goals; more = extra sections")
    p.add_argument("--split", default="test")
    p.add_argument("--generator", default=None, help="checkpoint (default: embedded)")
    p.add_argument("--n", type=int, default=0, help="first n tumor items (0 = all)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dilation-px", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--see-through-px", type=float, default=0.0,
                   help="σ > 0: the generator keeps the input's high-pass in the hole (projection "
                        "radiographs only; NegativeGenerator.generate)")
    p.add_argument("--scorers", default="embedded",
                   help="scorer directory, 'embedded' (default, when present) or 'none'")
    p.add_argument("--out", type=Path, default=Path("bench/results/generator.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    gen = load_generator(args.generator)
    if args.scorers == "none":
        scorers = None
    elif args.scorers == "embedded":
        scorers = load_scorers() if (SCORERS_DIR / "lesion.safetensors").is_file() else None
    else:
        scorers = load_scorers(args.scorers)
    command = (f"Command: `python bench/bench_generator.py --data {args.data} --domain "
               f"{' '.join(args.domain)} --split {args.split} --n {args.n} --steps {args.steps} "
               f"--dilation-px {args.dilation_px} --seed {args.seed}"
               + (f" --generator {args.generator}" if args.generator else "")
               + (f" --see-through-px {args.see_through_px:g}" if args.see_through_px else "")
               + (f" --scorers {args.scorers}" if args.scorers != "embedded" else "") + "`")
    lines = ["# Generator acceptance (held-out domain)", "", command, ""]
    for k, domain in enumerate(args.domain):
        if k:
            lines += ["", f"## Training domain `{domain}` (test split; the scorers are valid here)",
                      ""]
        lines += _domain_section(args, domain, gen, scorers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    reading = _kept_reading(args.out)
    args.out.write_text("\n".join(lines) + "\n" + reading)
    print("\n".join(lines))


def _domain_section(args, domain: str, gen, scorers) -> list[str]:
    items = tumor_items(args.data, domain, args.split, args.n)
    classical = "biharmonic + see-through priors (no model)"
    names = ["untouched positive", "biharmonic"] + ([classical] if args.see_through_px else []) + [
        "reference model", "GT negative (ceiling)"]
    rows: dict[str, list[dict]] = {name: [] for name in names}
    outputs: dict[str, list] = {k: [] for k in rows}
    regions, t_model = [], 0.0
    for it in items:
        image, mask, gt = read_image(it.image), read_mask(it.mask), read_image(it.gt_negative)
        region = dilate(mask, args.dilation_px)
        regions.append(region)
        bh = gen.generate([image], [mask], method="biharmonic", dilation_px=args.dilation_px)[0][0]
        t = time.time()
        ours = gen.generate([image], [mask], seed=args.seed, steps=args.steps,
                            dilation_px=args.dilation_px, see_through_px=args.see_through_px)[0][0]
        t_model += time.time() - t
        outs = {"untouched positive": image, "biharmonic": bh.image, "reference model": ours.image,
                "GT negative (ceiling)": gt}
        if args.see_through_px:
            outs[classical] = see_through_biharmonic(image, bh.image, region, args.see_through_px)
        for name in rows:
            out = outs[name]
            rows[name].append(scores_with_gt(out, gt, image, region))
            outputs[name].append(out)
    if scorers is not None:
        probs_of = {name: scorers.probabilities(outputs[name], regions) for name in rows}
        fill_gt = probs_of["GT negative (ceiling)"]["fill"]
        for name, probs in probs_of.items():
            for r, flags in zip(rows[name], scorer_flags(probs, fill_gt), strict=True):
                r.update(flags)  # fill_above_gt: 2AFC vs the GT's real tissue, 0.5 = indistinguishable
    metrics = ["psnr", "ssim", "mse", "texture_ratio_gt", "outside_max_abs_diff"]
    if scorers is not None:
        metrics += ["lesion_flip", "audit_flip", "fill_detected", "fill_above_gt"]
    lines = [
        f"{len(items)} tumor images of `{domain}` ({args.split} split, never trained on); "
        f"metrics inside the mask dilated by {args.dilation_px} px vs the GT negative; "
        f"mean [95% bootstrap CI]. Generator checkpoint `{gen.checkpoint_hash[:12]}`, "
        f"{args.steps} DDIM steps (eta from its config)"
        + (f", see-through σ = {args.see_through_px:g} px" if args.see_through_px else "")
        + f", {t_model / max(1, len(items)):.2f} s/image "
        "on the shared CPU.",
        "",
        "| method | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for name, rs in rows.items():
        cells = []
        for m in metrics:
            vals = np.array([r[m] for r in rs], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            if vals.size == 0:
                cells.append("inf")
                continue
            mean, lo, hi = bootstrap_ci(vals)
            cells.append(f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" if m != "outside_max_abs_diff"
                         else f"{vals.max():.3g} (max)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for m in ("psnr", "ssim", "texture_ratio_gt"):
        a = np.array([r[m] for r in rows["reference model"]])
        b = np.array([r[m] for r in rows["biharmonic"]])
        d, lo, hi = paired_bootstrap_ci(a, b)
        lines.append(f"\nReference − biharmonic, {m}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired bootstrap)")
    if classical in rows:
        for m in ("psnr", "ssim"):
            a = np.array([r[m] for r in rows["reference model"]])
            b = np.array([r[m] for r in rows[classical]])
            d, lo, hi = paired_bootstrap_ci(a, b)
            lines.append(f"\nReference − {classical}, {m}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired bootstrap)")
    if scorers is None:
        lines.append("\nScorers: not available (generator/weights/scorers missing) — flip rates and "
                     "fill-detector accuracy not measured.")
    return lines


if __name__ == "__main__":
    main()

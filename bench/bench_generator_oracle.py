"""Where does the held-out PSNR gap come from: the fill's coarse shape or its texture?

``python bench/bench_generator_oracle.py --generator embedded generator/weights/pixel_reference_biharmonic``

Same images, masks (dilated by 2 px) and metrics as ``bench_generator.py`` on the held-out
domain. Each fill's error inside the region, e = fill − GT, is split into a low-frequency part
``G_2 * e`` (Gaussian σ = 2 px: the coarse shape of the fill) and the rest (texture); both are
reported as MSE ×1e3 with the mean signed error (bias). Beside biharmonic inpainting and the
generators, oracle fills answer "what would a fill that got the shape right score?":

* ``GT low-pass σ``: the GT negative blurred by σ — the right shape, no texture;
* ``... + foreign texture r``: plus the high-pass (x − G_1 * x, as in the texture ratio) of another
  test image's GT negative (image i + n/2) at the same pixels, scaled so the texture ratio vs the GT is exactly r.
  That texture is real tissue of the domain but uncorrelated with the truth — what a generator
  that samples plausible texture adds at best;
* ``biharmonic + foreign texture r``: biharmonic's shape with such texture;
* ``biharmonic + the input's own high-pass``: not an oracle but a classical see-through fill, the
  positive's own x − G_1 * x inside the region added to biharmonic (lesion texture included) —
  what a generator with ``model.see_through`` can get from the lesion-bearing pixels for free.

If a right-shaped fill with foreign texture clears the goal (PSNR ≥ biharmonic + 1 dB, texture
≥ 0.7) while the generator does not, the generator's gap is its coarse prediction, not the price
of texture. Writes ``--out`` (a hand-written reading below the marker is kept).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from bench.bench_generator import _kept_reading, gray, tumor_items  # noqa: E402
from generator.build import load_generator  # noqa: E402
from generator.masks import dilate  # noqa: E402
from shared.io import read_image, read_mask  # noqa: E402
from shared.metrics import high_pass, masked_psnr, masked_ssim, texture_ratio  # noqa: E402

LOW_PASS_SIGMA = 2.0  # px: the split of the error into shape (below) and texture (above)


def with_texture(base: np.ndarray, texture: np.ndarray, gt: np.ndarray, region: np.ndarray,
                 ratio: float) -> np.ndarray:
    """``base + s·texture`` inside ``region`` (``gt`` outside), s ≥ 0 chosen so that
    ``texture_ratio(fill, gt, region) == ratio``.

    The fill is affine in s and the high-pass is linear, so the texture ratio is an exact
    quadratic in s: three evaluations give its coefficients.
    """
    def fill(s: float) -> np.ndarray:
        return np.where(region, base + s * texture, gt)

    a, b, c = np.polyfit([0.0, 1.0, 2.0], [texture_ratio(fill(s), gt, region) for s in (0, 1, 2)], 2)
    roots = np.roots([a, b, c - ratio])
    roots = roots[np.isreal(roots)].real
    roots = roots[roots >= 0]
    if roots.size == 0:
        raise ValueError(f"no texture scale reaches ratio {ratio} (base alone: {c:.2f})")
    return fill(float(roots.min()))


def error_split(fill: np.ndarray, gt: np.ndarray, region: np.ndarray) -> tuple[float, float, float]:
    """(bias, low-frequency MSE, high-frequency MSE) of ``fill − gt`` inside ``region``."""
    e = fill - gt
    low = ndimage.gaussian_filter(e, LOW_PASS_SIGMA)
    return float(e[region].mean()), float(np.mean(low[region] ** 2)), float(np.mean((e - low)[region] ** 2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/bench64"))
    p.add_argument("--generator", nargs="+", default=["embedded"],
                   help="checkpoint directories or 'embedded'")
    p.add_argument("--domain", default="chest_xray")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--ratio", type=float, default=0.7, help="texture ratio of the oracle fills")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dilation-px", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench/results/generator_oracle.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    items = tumor_items(args.data, args.domain, "test", args.n)
    if len(items) < 2:
        raise SystemExit(f"need at least 2 test tumor images of {args.domain!r}, found {len(items)}")
    images = [read_image(it.image) for it in items]
    masks = [read_mask(it.mask) for it in items]
    gts = [gray(read_image(it.gt_negative)) for it in items]
    regions = [dilate(m, args.dilation_px) for m in masks]
    # foreign texture for image i: the high-pass of image (i + n/2)'s GT negative, another crop
    shift = len(gts) // 2
    foreign = [high_pass(g) for g in gts[shift:] + gts[:shift]]

    gens = {name: load_generator(None if name == "embedded" else name) for name in args.generator}
    first = next(iter(gens.values()))
    biharmonic = [gray(r[0].image) for r in first.generate(images, masks, method="biharmonic",
                                                           dilation_px=args.dilation_px)]
    fills: dict[str, list[np.ndarray]] = {"biharmonic": biharmonic}
    for name, gen in gens.items():
        out = gen.generate(images, masks, seed=args.seed, steps=args.steps, dilation_px=args.dilation_px)
        fills[f"generator `{name}` (`{gen.checkpoint_hash[:12]}`)"] = [gray(r[0].image) for r in out]
    for sigma in (1.0, 2.0):
        lows = [ndimage.gaussian_filter(g, sigma) for g in gts]
        fills[f"oracle: GT low-pass σ={sigma:g}"] = [np.where(r, lo, g) for lo, g, r in
                                                   zip(lows, gts, regions, strict=True)]
        fills[f"oracle: GT low-pass σ={sigma:g} + foreign texture {args.ratio:g}"] = [
            with_texture(lo, t, g, r, args.ratio) for lo, t, g, r in zip(lows, foreign, gts, regions, strict=True)]
    fills["biharmonic + the input's own high-pass (see-through, no model)"] = [
        np.where(r, b + high_pass(x), g) for b, x, g, r in zip(biharmonic, images, gts, regions, strict=True)]
    fills[f"biharmonic + foreign texture {args.ratio:g}"] = [
        with_texture(b, t, g, r, args.ratio) for b, t, g, r in zip(biharmonic, foreign, gts, regions, strict=True)]

    lines = [
        "# Generator: shape vs texture of the held-out error (oracle fills)", "",
        f"Command: `python bench/bench_generator_oracle.py --generator {' '.join(args.generator)} "
        f"--domain {args.domain} --n {args.n} --ratio {args.ratio:g} --steps {args.steps} "
        f"--dilation-px {args.dilation_px} --seed {args.seed}`", "",
        f"{len(items)} test tumor images of `{args.domain}` (never trained on); inside the mask "
        f"dilated by {args.dilation_px} px vs the GT negative; means over images. Error split at a "
        f"Gaussian of σ = {LOW_PASS_SIGMA:g} px: low = coarse shape, high = texture (MSE ×1e3).", "",
        "| fill | PSNR | images below biharmonic | SSIM | texture ratio | bias | low-freq MSE "
        "| high-freq MSE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    psnr_bh = np.array([masked_psnr(f, g, r) for f, g, r in zip(biharmonic, gts, regions, strict=True)])
    for name, fs in fills.items():
        z = list(zip(fs, gts, regions, strict=True))
        split = np.array([error_split(f, g, r) for f, g, r in z])
        psnr = np.array([masked_psnr(f, g, r) for f, g, r in z])
        lines.append(
            f"| {name} | {psnr.mean():.2f} | {int((psnr < psnr_bh).sum())} / {len(z)} "
            f"| {np.mean([masked_ssim(f, g, r) for f, g, r in z]):.3f} "
            f"| {np.mean([texture_ratio(f, g, r) for f, g, r in z]):.2f} "
            f"| {split[:, 0].mean():+.4f} | {split[:, 1].mean() * 1e3:.3f} | {split[:, 2].mean() * 1e3:.3f} |")
    text = "\n".join(lines) + "\n" + _kept_reading(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

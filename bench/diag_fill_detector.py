"""What does the fill detector see: the fill's low frequencies or its grain? (issue 18; training
sources only; a diagnostic, no decision)

Issue 18 asks each sample's fill detector 2AFC against the GT's real tissue to be 0.5 ± 0.1; on
held-out sources the committed fill scores 0.62–0.93. Three texture sources have been tried on
the same coarse prior — the learned residual, white noise, the image's own translated tissue
(``noise_texture_rule.md``, ``texture_lowcut_rule.md``, ``copy_texture_rule.md``) — and the 2AFC
barely moves between them. This diagnostic splits the fill into its low band (the σ = 1 px blur)
and its grain (the σ = 1 high-pass) and swaps each for the truth's, one at a time:

- ``biharmonic`` — scikit-image, no grain;
- ``prior`` — the committed coarse prior (``generator.kriging.stacked_fill``), no grain;
- ``prior + noise`` — the prior + high-passed white noise at the ring's texture energy
  (``generator.masks.ring_texture_gain``): the composition of the benchmark's noise twin;
- ``prior + GT grain`` — the prior + the lesion-free truth's own high-pass (its exact grain);
- ``GT low`` — the truth's σ = 1 blur, no grain;
- ``GT low + noise`` — the truth's blur + ring-matched high-passed noise;
- calibration rows, added after the first run (whose reading below matched neither pattern): the
  truth itself barely perturbed — ``GT σ=0.5 blur`` and ``GT + noise 0.005`` / ``0.02`` (white
  Gaussian noise of that standard deviation, images in [0, 1]).

Column added with the calibration rows: *unpaired AUROC* — the detector's fill scores of the row's
outputs against those of the truths, all items of the source (or the pool) together: a two-sample
test that asks whether fills as a population score apart from real tissue, where the paired 2AFC
counts the sign of each item's difference however small. Whether it enters the real-size
benchmark is decided on the calibration rows alone, before the generators' rows are read: iff
``GT σ=0.5 blur`` and ``GT + noise 0.005`` both lie within 0.5 ± 0.1 pooled at both sizes.

Every row keeps the input outside the region (lesion dilated by 2 px) and is clipped to [0, 1].
The 2AFC is ``bench_generator_realsize``'s: the embedded fill detector (64² input) on the lesion
window (≥ 64², context 4), P(the row's fill score > the GT's) + ½ P(equal); one noise draw per item.
Low PSNR: both images blurred at σ = 2 px, inside the region, dB.

Reading, decided before the run: if ``GT low + noise`` is near 0.5 while ``prior + GT grain``
stays near ``prior + noise``, the detector keys on the low band, so realism and the
low-frequency fidelity goal are one problem (the prior's), not a texture problem; the reverse
pattern says the grain is what gives fills away.

    python bench/diag_fill_detector.py --sizes 256 512 --n 15 --seed 12 --out bench/results/fill_detector_bands.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from bench.bench_generator_realsize import (  # noqa: E402
    low,
    psnr,
    scorer_metrics,
    unpaired_auroc,
)
from bench.diag_sources import main as diag_main  # noqa: E402
from bench.realsize_methods import DILATION_PX, GT  # noqa: E402
from generator.compose import TEXTURE_SIGMA  # noqa: E402
from generator.kriging import prior_fill  # noqa: E402
from generator.masks import dilate, ring_texture_gain  # noqa: E402
from generator.scoring import load_scorers  # noqa: E402
from shared.benchmark.realsize import build_realsize  # noqa: E402
from shared.metrics import high_pass, paired_bootstrap_ci  # noqa: E402

ROWS = ("biharmonic", "prior", "prior + noise", "prior + GT grain", "GT low", "GT low + noise",
        "GT σ=0.5 blur", "GT + noise 0.005", "GT + noise 0.02")
REFERENCE = "prior + noise"
_SCORERS = []


def scorers():
    if not _SCORERS:
        _SCORERS.append(load_scorers())
    return _SCORERS[0]


def rows_for(image: np.ndarray, gt: np.ndarray, region: np.ndarray, rng) -> dict[str, np.ndarray]:
    """Every row's output (float64 HxW, the input outside ``region``)."""
    noise = np.where(region, high_pass(rng.standard_normal(region.shape), TEXTURE_SIGMA), 0.0)
    prior = prior_fill(image, region, "stacked")
    gt_low = np.where(region, ndimage.gaussian_filter(gt, TEXTURE_SIGMA), image)

    def textured(base):
        return base + ring_texture_gain(base, noise, image, region, sigma=TEXTURE_SIGMA) * noise

    out = {"biharmonic": prior_fill(image, region, "biharmonic"), "prior": prior,
           "prior + noise": textured(prior),
           "prior + GT grain": prior + np.where(region, high_pass(gt, TEXTURE_SIGMA), 0.0),
           "GT low": gt_low, "GT low + noise": textured(gt_low),
           "GT σ=0.5 blur": ndimage.gaussian_filter(gt, 0.5)}
    white = rng.standard_normal(region.shape)
    for std in (0.005, 0.02):
        out[f"GT + noise {std}"] = gt + std * white
    return {k: np.where(region, np.clip(v, 0.0, 1.0), image) for k, v in out.items()}


def measure(source: str, size: int, n: int, seed: int) -> dict:
    """Per row: per-item 2AFC, fill score and low PSNR; ``gt``: the truths' fill scores; ``s``:
    seconds per item."""
    res = {r: {"afc": [], "low": [], "p": []} for r in ROWS}
    res["s"], res["gt"] = [], []
    for k, item in enumerate(build_realsize(source, size, n, seed=seed)):
        t0 = time.perf_counter()
        image, gt = item.image.astype(np.float64), item.gt_negative.astype(np.float64)
        region = dilate(item.mask, DILATION_PX)
        outs = rows_for(image, gt, region, np.random.default_rng(seed * 100_003 + k))
        scored = scorer_metrics(scorers(), {**{r: [v] for r, v in outs.items()}, GT: [gt]}, region)
        res["gt"].append(scored[GT]["fill_scores"][0])
        for r in ROWS:
            res[r]["p"].append(scored[r]["fill_scores"][0])
            res[r]["afc"].append(scored[r]["fill_above_gt"])
            res[r]["low"].append(psnr(low(outs[r]), low(gt), region))
        res["s"].append(time.perf_counter() - t0)
    return res


def _delta(a, b) -> str:
    mean, lo, hi = paired_bootstrap_ci(np.asarray(a), np.asarray(b))
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def table(size: int, results: dict[str, dict]) -> list[str]:
    lines = [f"### {size}²", "", "| source | row | n | fill 2AFC | Δ 2AFC vs prior + noise [95 % CI] | "
             "unpaired AUROC | low PSNR | s/item |", "|---|---|---|---|---|---|---|---|"]
    pooled = {r: {"afc": [], "low": [], "p": []} for r in ROWS}
    pooled_gt = [p for res in results.values() for p in res["gt"]]
    for source, res in results.items():
        for r in ROWS:
            for key in ("afc", "low", "p"):
                pooled[r][key].extend(res[r][key])
            d = "—" if r == REFERENCE else _delta(res[r]["afc"], res[REFERENCE]["afc"])
            lines.append(f"| {source} | {r} | {len(res[r]['afc'])} | {np.mean(res[r]['afc']):.3f} | "
                         f"{d} | {unpaired_auroc(res[r]['p'], res['gt']):.3f} | "
                         f"{np.mean(res[r]['low']):.2f} | {np.mean(res['s']):.2f} |")
    for r in ROWS:
        d = "—" if r == REFERENCE else _delta(pooled[r]["afc"], pooled[REFERENCE]["afc"])
        lines.append(f"| **pooled** | {r} | {len(pooled[r]['afc'])} | {np.mean(pooled[r]['afc']):.3f} | "
                     f"{d} | {unpaired_auroc(pooled[r]['p'], pooled_gt):.3f} | "
                     f"{np.mean(pooled[r]['low']):.2f} | — |")
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    diag_main(__doc__, "diag_fill_detector.py",
              "## What the fill detector sees: low band or grain (issue 18, diagnostic)",
              "Rows (module docstring of `bench/diag_fill_detector.py`): the fill split into its"
              " σ = 1 px blur and its high-pass, each swapped for the lesion-free truth's in turn."
              " Items `shared.benchmark.realsize` (seed {seed}), region = lesion dilated by"
              f" {DILATION_PX} px; fill 2AFC = the embedded fill detector on the lesion window,"
              " P(row > GT) (0.5 = indistinguishable); low PSNR: σ = 2 px blur, dB.",
              measure, table, argv)


if __name__ == "__main__":
    main()

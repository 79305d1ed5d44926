"""A hole across a tissue edge: does filling each side from its own context help? (issue 18;
training sources only; a diagnostic, round 4 of the coarse prior)

Every stationary prior (biharmonic, kriging with any variogram) assumes one random field around
the hole. A lesion at the edge of the brain, the body or an ultrasound fan — or a lung nodule on
the pleura — straddles two: bright tissue and dark background. There a stationary fill draws a ramp
from one level to the other across the hole (the demo's contact sheet shows the smear,
``demo.md``). ``generator.kriging.two_phase_fill`` splits the hole's context in two (Otsu's
classes, cut at the midpoint of their means; only when each holds ≥ 10 % of the context and the
split explains ≥ 75 % of its variance), continues the boundary into the hole with a quadratic
logistic fit on the context's coordinates, and krigs each side (α = 1) from its own phase only.

It enters ``stationary_fill`` as one more candidate of the hidden-ring check
(``two_phase=True``): it fills only where it predicts the ring better than biharmonic and the
three power variograms. Rows: ``committed`` = ``stationary_fill`` as adopted in round 3
(biharmonic or α ∈ {0.5, 1, 1.5}); ``+ two-phase`` = the same check with the fifth candidate.
Items: ``shared.benchmark.realsize`` at seed 5 (fresh: rounds 1–3 and the texture diagnostic used
seeds 1–4), training sources only, region = lesion dilated by 2 px; low PSNR = both images blurred
at σ = 2 px, dB, inside the region.

Decision (written before any number; the gate's 10 % / 75 %, the quadratic boundary and α = 1 were
fixed on synthetic fields only): ``two_phase=True`` becomes the default iff at both sizes (256²,
512²) the pooled Δ low PSNR vs committed is ≥ +0.1 dB with the paired bootstrap CI's lower end
> 0 and no source's mean Δ is below −0.1 dB. Then the held-out test table of the default generator
is run once and reported as it comes.

    python bench/diag_two_phase.py --sizes 256 512 --n 15 --seed 5 --out bench/results/kriging_prior_round4.md

Outcome (``kriging_prior_round4.md``): fails at 512² (+0.08 [−0.05, +0.25] dB pooled; +0.18
[+0.01, +0.41] at 256²): ``two_phase`` stays off by default.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.bench_generator_realsize import low, psnr  # noqa: E402
from bench.diag_sources import ci  # noqa: E402
from bench.diag_sources import main as diag_main  # noqa: E402
from generator.kriging import prior_fill, stationary_fill  # noqa: E402
from generator.masks import dilate  # noqa: E402
from shared.benchmark.realsize import build_realsize  # noqa: E402

DILATION_PX = 2


def measure(source: str, size: int, n: int, seed: int) -> dict:
    out = {"bh": [], "committed": [], "two": [], "chosen": [], "s": []}
    for item in build_realsize(source, size, n, seed=seed):
        region, gt = dilate(item.mask, DILATION_PX), item.gt_negative
        image = item.image.astype(np.float64)
        out["bh"].append(psnr(low(prior_fill(image, region, "biharmonic")), low(gt), region))
        out["committed"].append(psnr(low(stationary_fill(image, region)[0]), low(gt), region))
        t0 = time.perf_counter()
        fill, chosen = stationary_fill(image, region, two_phase=True)
        out["s"].append(time.perf_counter() - t0)
        out["two"].append(psnr(low(fill), low(gt), region))
        out["chosen"].append(chosen)
    return out


def table(size: int, results: dict[str, dict]) -> list[str]:
    lines = [f"### {size}²", "",
             "| source | n | committed low PSNR | + two-phase | Δ vs committed dB [95 % CI] | worst / best Δ | "
             "two-phase picked | Δ where picked (mean) | Δ committed vs biharmonic | s/img |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    pooled = {"committed": [], "two": []}
    for source, res in results.items():
        com, two = np.asarray(res["committed"]), np.asarray(res["two"])
        pooled["committed"].extend(com)
        pooled["two"].extend(two)
        picked = np.array([c == "two-phase" for c in res["chosen"]])
        where = f"{np.mean((two - com)[picked]):+.2f}" if picked.any() else "—"
        lines.append(f"| {source} | {len(com)} | {com.mean():.2f} | {two.mean():.2f} | {ci(two, com)} | "
                     f"{np.min(two - com):+.2f} / {np.max(two - com):+.2f} | {picked.sum()} | {where} | "
                     f"{ci(com, res['bh'])} | {np.mean(res['s']):.2f} |")
    lines.append(f"| **pooled** | {len(pooled['two'])} | {np.mean(pooled['committed']):.2f} | "
                 f"{np.mean(pooled['two']):.2f} | {ci(pooled['two'], pooled['committed'])} | — | — | — | — | — |")
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    diag_main(__doc__, "diag_two_phase.py",
              "## Two-phase fill as a fifth candidate of the ring check, training sources "
              "(issue 18, diagnostic round 4)",
              "Rows (module docstring of `bench/diag_two_phase.py`): committed ="
              " `generator.kriging.stationary_fill` (round 3: biharmonic or kriging α ∈ {0.5, 1, 1.5} by"
              " the hidden ring); + two-phase = the same with `two_phase=True`."
              f" Items `shared.benchmark.realsize` (seed {{seed}}), region = lesion dilated by"
              f" {DILATION_PX} px; low PSNR = both images blurred at σ = 2 px, dB, inside the region;"
              " Δ paired over items (bootstrap 95 % CI); s/img = the two-phase check's time.",
              measure, table, argv)


if __name__ == "__main__":
    main()

"""Does sampling explain the held-out gap? Single samples vs the mean of K, and η = 1 vs η = 0.

``python bench/bench_generator_sampling.py --generator embedded --domain chest_xray --n 30 -k 4``

Same images, masks (dilated by 2 px) and metrics as ``bench_generator.py``: PSNR / SSIM / texture
ratio inside the region vs the GT negative, for (a) one DDIM sample at the checkpoint's η, (b) the
pixel mean of K such samples (an estimate of the posterior mean, the PSNR-optimal fill), (c) one
deterministic DDIM sample (η = 0). If (b) is still below biharmonic inpainting, the gap is in what
the model predicts, not in its sampling noise. Appends a section to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_generator import gray, tumor_items  # noqa: E402
from generator.build import load_generator  # noqa: E402
from generator.masks import dilate  # noqa: E402
from shared.io import read_image, read_mask  # noqa: E402
from shared.metrics import masked_psnr, masked_ssim, texture_ratio  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/bench64"))
    p.add_argument("--generator", default="embedded", help="checkpoint directory or 'embedded'")
    p.add_argument("--domain", default="chest_xray")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("-k", type=int, default=4, help="samples averaged in (b)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dilation-px", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/results/generator_sampling.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    items = tumor_items(args.data, args.domain, "test", args.n)
    images = [gray(read_image(it.image)) for it in items]
    gts = [gray(read_image(it.gt_negative)) for it in items]
    masks = [read_mask(it.mask) for it in items]
    regions = [dilate(m, args.dilation_px) for m in masks]
    gen = load_generator(None if args.generator == "embedded" else args.generator)
    backend = gen.backend
    eta = backend.cfg.eta

    def run(k: int) -> list[list[np.ndarray]]:
        res = gen.generate(images, masks, num_samples=k, seed=0, steps=args.steps,
                           dilation_px=args.dilation_px)
        return [[s.image for s in r] for r in res]

    samples = run(args.k)
    backend.cfg = dataclasses.replace(backend.cfg, eta=0.0)
    deterministic = run(1)
    backend.cfg = dataclasses.replace(backend.cfg, eta=eta)
    rows = {f"one sample (η = {eta:g})": [s[0] for s in samples],
            f"mean of {args.k} samples": [np.mean(s, axis=0) for s in samples],
            "one sample (η = 0)": [s[0] for s in deterministic]}
    lines = [f"## Sampling check: `{args.generator}` on `{args.domain}`", "",
             f"Command: `python bench/bench_generator_sampling.py --generator {args.generator} "
             f"--domain {args.domain} --n {args.n} -k {args.k} --steps {args.steps}` "
             f"({len(items)} test images, region = mask dilated by {args.dilation_px} px).", "",
             "| fill | PSNR | SSIM | texture ratio vs GT |", "|---|---|---|---|"]
    for name, fills in rows.items():
        ps = np.mean([masked_psnr(f, g, r) for f, g, r in zip(fills, gts, regions, strict=True)])
        ss = np.mean([masked_ssim(f, g, r) for f, g, r in zip(fills, gts, regions, strict=True)])
        tx = np.mean([texture_ratio(f, g, r) for f, g, r in zip(fills, gts, regions, strict=True)])
        lines.append(f"| {name} | {ps:.2f} | {ss:.3f} | {tx:.2f} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = "" if args.out.exists() else "# Generator: sampling checks\n\n"
    with args.out.open("a") as fh:
        fh.write(header + text + "\n")
    print(text)


if __name__ == "__main__":
    main()

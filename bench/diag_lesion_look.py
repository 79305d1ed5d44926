"""Is the default CLIP's brain-lesion concept tied to the lesion's look or to the anatomy? (issue 17)

On whole T2 slices of an unseen head the default's M2IB map misses dark (T1-style) lesions and
avoids bright (T2-style) ones (``bench/results/clip_external_t2.md``). Two things changed at once
there: the anatomy (the training MNI template, T1, smooth → a real T2 head, sharp gyri) and, in the
second set, the lesion's look. This crosses them, 2 × 2 (and a third row, below), paired: the same backgrounds, lesion
centres and boundary shapes (one seed per item for both looks; sizes from the same range — the
dark look's rim draw shifts the stream), only the rendering differs —

* anatomy: the benchmark's brain source (``anatomy.BrainMRI``: the MNI template, seen in
  training) or the held-out T2 head (``external.ExternalBrainT2``);
* look: the training lesion model (``brain_mri``: hypointense core, optional rim) or the test-only
  T2 look (``brain_mri_t2``: hyperintense core and edema).

A third look keeps the bright rendering but captions it with the training look's word
("hypointense" for "hyperintense", a word no training caption has): an unfamiliar word and an
unfamiliar look are told apart (added after the first run's four rows; it reads the same rule).

Scored as ``bench/select_m2ib.py`` scores a set: M2IB (the default's block 3, β 1) with each
positive's own caption; pointing (the map's peak in the lesion) and the saliency mass inside it.

    OMP_NUM_THREADS=1 python bench/diag_lesion_look.py --n 60 --out bench/results/lesion_look.md

``--saliency dense`` scores the pipeline's ``dense`` saliency instead (the last block's patch
tokens between the caption and the lesion-free caption, ``saliency_baselines.dense_contrast``):
where M2IB misses a lesion the dense map finds, the tower knows where and the readout loses it.

Reading, fixed before the run: if on the MNI template the bright look points ≥ 0.3 below the dark
one, the tower's concept is the training look (rim / dark core), whatever the anatomy; if both
looks point alike on the template (within 0.1) and both fail on the T2 head, it is the anatomy.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from finetune.ablation_eval import lesion_mass, pointing_hit  # noqa: E402
from finetune.build import build_clip  # noqa: E402
from finetune.evaluation.clip_bundle import bundle_from_open_clip  # noqa: E402
from finetune.evaluation.m2ib import PRESETS, m2ib_saliency  # noqa: E402
from finetune.evaluation.saliency_baselines import dense_contrast  # noqa: E402
from finetune.train_loop import resolve_model_source  # noqa: E402
from shared.benchmark.anatomy import BrainMRI  # noqa: E402
from shared.benchmark.external import ExternalBrainT2  # noqa: E402
from shared.benchmark.lesions import caption, caption_negative, render, sample_lesion  # noqa: E402

ANATOMY = {"MNI template (seen)": BrainMRI, "dipy T2 head (held out)": ExternalBrainT2}
# look name -> (appearance, caption word replaced): the third row keeps the bright look but
# captions it with the training look's word, to tell an unfamiliar word from an unfamiliar look
LOOKS = {"dark, T1-style (training)": ("brain_mri", None),
         "bright, T2-style (test-only)": ("brain_mri_t2", None),
         "bright, captioned 'hypointense'": ("brain_mri_t2", ("hyperintense", "hypointense"))}


def draw(source, look: str, n: int, size: int, seed: int, swap: tuple[str, str] | None = None):
    """``n`` (positive uint8, mask, caption) of ``look`` on ``source``; item ``i`` uses one seed
    for its background and one for its lesion, whatever the look (a paired design)."""
    out = []
    for i in range(n):
        bg, tissue = source.sample(np.random.default_rng([seed, 1, i]), size)
        lesion = sample_lesion(look, np.random.default_rng([seed, 2, i]), tissue)
        positive, mask = render(look, bg, lesion, np.random.default_rng([seed, 3, i]))
        text = caption("brain_mri", lesion)
        out.append((positive, mask, text.replace(*swap) if swap else text))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded-convstem8-pretrained")
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--saliency", choices=["m2ib", "dense"], default="m2ib")
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", default="bench/results/lesion_look.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    clip = build_clip(resolve_model_source(args.model))
    bundle = bundle_from_open_clip(clip.model.eval(), clip.tokenizer)
    cfg = dataclasses.replace(PRESETS["embedded"], layer=args.layer, beta=1.0)
    rows = []
    for aname, cls in ANATOMY.items():
        source = cls()
        for lname, (look, swap) in LOOKS.items():
            items = draw(source, look, args.n, args.size, args.seed, swap)
            images, prompts = [x / 255.0 for x, _, _ in items], [[c] for _, _, c in items]
            if args.saliency == "dense":
                maps = dense_contrast(bundle, images, prompts,
                                      [[caption_negative("brain_mri")]] * len(items))
            else:
                maps = m2ib_saliency(bundle, images, prompts, cfg, seed=0)
            masks = [m for _, m, _ in items]
            rows.append((aname, lname,
                         float(np.mean([pointing_hit(s, m) for s, m in zip(maps, masks, strict=True)])),
                         float(np.mean([lesion_mass(s, m) for s, m in zip(maps, masks, strict=True)])),
                         float(np.mean([m.mean() for m in masks]))))
            print(rows[-1], flush=True)
    lines = ["## The default CLIP's brain-lesion concept: the lesion's look or the anatomy? (issue 17)", "",
             f"Command: `python bench/diag_lesion_look.py {' '.join(argv or sys.argv[1:])}`", "",
             f"Model `{args.model}`, "
             + (f"M2IB block {args.layer}, β 1" if args.saliency == "m2ib" else "dense saliency")
             + f"; {args.n} positives a cell, paired "
             "across looks (same backgrounds, lesion centres and shapes); see the module "
             "docstring of `bench/diag_lesion_look.py` for the design and the reading fixed before "
             "the run.", "",
             "| anatomy | lesion look | pointing | lesion mass | mask share of the image |",
             "|---|---|---|---|---|"]
    lines += [f"| {a} | {lk} | {pt:.3f} | {ms:.3f} | {sh:.3f} |" for a, lk, pt, ms, sh in rows]
    lines += ["", f"Wall time {time.time() - t0:.0f} s (one thread).", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

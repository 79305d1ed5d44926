"""Which saliency -> box rule hands LiteMedSAM the best prompt? Chosen on validation only.

    OMP_NUM_THREADS=2 python bench/select_box_rule.py --split val --n 60 \
        --external brain_mri=data/external_val_brain128 \
        --external breast_us=data/external_val_breast128 \
        --out bench/results/box_rule_val.md

The embedded CLIP's M2IB peak lands in the lesion on most in-domain positives (pointing 0.93 brain,
0.70 breast on test) while its saliency-prompted Dice stays at 0.61 / 0.41 × the oracle box's
(``clip_protocol.md``): the step from map to box loses what the map knows. The pipeline's rule
(MedCLIP-SAMv2's) binarises by 2-means and boxes the *largest* component, which need not be the
one holding the peak. Each rule here is a :class:`~finetune.evaluation.evaluate.EvalConfig`
(binarisation × component kept × box dilation) run through the pipeline's own functions
(``saliency_to_coarse`` -> ``prompts_from_mask`` -> LiteMedSAM), on the same M2IB maps (the
committed model's preset, the pipeline's per-image noise seeds), so the rules differ only in the
post-processing. Reference rows on the same images: the oracle box and the fixed centre box.

The rule (written before any number of this script was seen; bench/results/box_rule_rule.md):
score = mean validation Dice over the training domains; the best rule is adopted as the embedded
pipeline's default iff (a) its score ≥ the current rule's + 0.02, (b) no training domain loses
more than 0.02 Dice against the current rule, (c) the held-out rows' mean Dice (held-out domain,
external validation sets) loses at most 0.01. ``--split test`` then runs once, on the test split
and the external test sets, with ``--rules`` the current and the chosen one.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_clip_protocol import external_sets  # noqa: E402
from finetune.ablation_eval import cached_segmenter, pointing_hit  # noqa: E402
from finetune.build import build_clip  # noqa: E402
from finetune.evaluation import saliency_baselines as sb  # noqa: E402
from finetune.evaluation.cli import PROMPT_DIR  # noqa: E402
from finetune.evaluation.clip_bundle import bundle_from_open_clip  # noqa: E402
from finetune.evaluation.evaluate import EvalConfig, prompts_from_mask, saliency_to_coarse  # noqa: E402
from finetune.evaluation.m2ib import PRESETS, M2IBConfig, default_config, m2ib_saliency, minmax_map  # noqa: E402
from finetune.evaluation.postprocess import mask_to_boxes  # noqa: E402
from finetune.evaluation.prompts import load_prompts  # noqa: E402
from finetune.train_loop import resolve_model_source  # noqa: E402
from shared.benchmark import DOMAINS, HELD_OUT_DOMAIN, load_manifest  # noqa: E402
from shared.io import read_image, read_mask  # noqa: E402
from shared.metrics import dice  # noqa: E402

CURRENT = "2-means/largest/+0"
BINARIZE = {"2-means": {"binarize": "kmeans"},
            "thr0.3": {"binarize": "threshold", "threshold": 0.3},
            "thr0.5": {"binarize": "threshold", "threshold": 0.5},
            "thr0.7": {"binarize": "threshold", "threshold": 0.7}}


SELECT = {"iou": "iou", "stab": "stability"}  # ScoredMasks field a selecting rule maximises


# Round 5: the map the rule binarises. "m2ib" is the pipeline's (the positive caption's M2IB map);
# "contrast" / "contrast0.5" subtract 1 / 0.5 × the healthy caption's map (same image, same noise
# seed), so structure both captions highlight (edges, bright anatomy) cancels.
MAPS = {"m2ib": 0.0, "contrast": 1.0, "contrast0.5": 0.5}
# Round 7: not M2IB at all — the CLIP's own last-block caption contrast
# (finetune.evaluation.saliency_baselines.dense_contrast; bench/results/dense_pointing.md).
DENSE = "dense"
# Session 40: M2IB at block 1 too (it finds the unseen head's bright lesions, block 3 the dark
# ones), alone or fused with the preset's map per image (saliency_baselines.fuse_block_maps).
FUSE_BLOCK = 1
FUSED = ("block1", "fuse-mean", "fuse-conc")


def map_of(name: str) -> tuple[str, str]:
    """``[MAP:]RULE`` -> (MAP, RULE); MAP defaults to the pipeline's ``m2ib``."""
    key, sep, rule = name.rpartition(":")
    if not sep:
        return "m2ib", name
    if key not in (*MAPS, DENSE, *FUSED):
        raise ValueError(f"box rule {name!r}: unknown map {key!r}; expected one of "
                         f"{[*MAPS, DENSE, *FUSED]}")
    return key, rule


def contrast_map(pos: np.ndarray, neg: np.ndarray, weight: float) -> np.ndarray:
    """min–max of ``pos − weight · neg`` to [0, 1] (``m2ib.minmax_map``: a constant difference ->
    zeros)."""
    return minmax_map(pos.astype(np.float64) - weight * neg.astype(np.float64))


def parse_rule(name: str) -> tuple[EvalConfig, str | None, tuple[int, ...]]:
    """``[MAP:]BINARIZE/COMPONENT/GROWTH`` -> (the pipeline's EvalConfig, selection, candidate
    dilations). GROWTH is ``+PX`` (a fixed dilation, e.g. ``thr0.3/peak/+4``), ``xF`` (the box
    scaled F× about its centre) or ``iou+0,4,8`` / ``stab+0,4,8``: one box per dilation (px at
    128², scaled with the image side), the segmenter's mask with the highest predicted IoU /
    stability score kept (round 4: the segmenter chooses the margin). MAP: see ``MAPS`` and ``DENSE``."""
    name = map_of(name)[1]
    try:
        binarize, component, growth = name.split("/")
        if component not in ("largest", "peak"):
            raise ValueError(component)
        kind, plus, rest = growth.partition("+")
        if kind in SELECT and plus:
            candidates = tuple(int(d) for d in rest.split(","))
            if not candidates or min(candidates) < 0:
                raise ValueError(growth)
            return (EvalConfig(**BINARIZE[binarize], component=component), SELECT[kind],
                    candidates)
        grow = ({"box_scale": float(growth[1:])} if growth.startswith("x")
                else {"box_dilation_px": int(growth.removeprefix("+"))})
        return EvalConfig(**BINARIZE[binarize], component=component, **grow), None, ()
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"box rule {name!r}: expected BINARIZE/COMPONENT/+PX, "
                         f"BINARIZE/COMPONENT/xSCALE or BINARIZE/COMPONENT/iou+PX,PX,... "
                         f"(or stab+...) with BINARIZE in {list(BINARIZE)}, "
                         "COMPONENT largest|peak") from err


GRID = [f"{b}/{c}/+{d}" for b in ("2-means", "thr0.3", "thr0.5") for c in ("largest", "peak") for d in (0, 4)]


@dataclass
class Set:
    label: str
    domain: str  # whose --preset applies (an external set's label also names its folder)
    images: list[np.ndarray]
    masks: list[np.ndarray]
    captions: list[list[str]]
    neg_captions: list[list[str]]  # each positive's healthy caption (round 5's contrast maps)


CAPTIONS = ("own", "no-region", "generic", "looks")
REGION = re.compile(r"\s+in the (?:[a-z]+ )*region")  # "… in the central left region"


def captions_for(item, kind: str) -> list[str]:
    """The lesion captions a set is scored with (several: an ensemble, embeddings averaged): the
    item's ``own`` benchmark caption (size, look and the region it lies in, all from its mask),
    the same without the region phrase (``no-region``), the domain's one ``generic`` caption
    (``configs/prompts/<domain>.txt``, what the CLI gives a user by default), or the domain's
    ``looks`` ensemble (``configs/prompts/looks/<domain>.txt``: one caption per way its lesions
    show, e.g. hypo- and hyperintense)."""
    if kind == "own":
        return [item.caption]
    if kind == "no-region":
        return [REGION.sub("", item.caption)]
    folder = PROMPT_DIR / "looks" if kind == "looks" else PROMPT_DIR
    return _prompt_file(folder / f"{item.domain}.txt").for_image(item.image.name)


@functools.cache
def _prompt_file(path: Path):
    """A prompt file, read once."""
    return load_prompts(path)


def load_set(root: str, domain: str, split: str | None, n: int, label: str,
             captions: str = "own") -> Set:
    """First ``n`` tumour items of ``domain`` by id (of ``split``; all splits of an external set)."""
    items = sorted((it for it in load_manifest(root) if it.domain == domain and it.label == "tumor"
                    and (split is None or it.split == split)), key=lambda it: it.id)[:n]
    if not items:
        raise SystemExit(f"error: no {domain} tumour items in {root} (split {split})")
    return Set(label, domain, [read_image(it.image) for it in items],
               [read_mask(it.mask) for it in items],
               [captions_for(it, captions) for it in items], [[it.caption_neg] for it in items])


def dice_of(segmenter, image: np.ndarray, mask: np.ndarray, coarse: np.ndarray, cfg: EvalConfig,
            seed: int) -> float:
    boxes, _ = prompts_from_mask(coarse, cfg, seed)
    pred = segmenter.segment(image, boxes=boxes) if len(boxes) else np.zeros(mask.shape, bool)
    return dice(pred, mask)


def selected_mask(segmenter, image: np.ndarray, coarse: np.ndarray, cfg: EvalConfig, seed: int,
                  select: str, candidates: tuple[int, ...]) -> np.ndarray:
    """One box per candidate dilation (px per 128 px of the longer side), the segmenter's mask
    with the highest ``select`` score (ties: the first, i.e. the narrowest candidate)."""
    boxes = [prompts_from_mask(coarse, replace(cfg, box_dilation_frac=d / 128), seed)[0]
             for d in candidates]
    if not len(boxes[0]):  # empty coarse mask: no prompt, as the pipeline
        return np.zeros(coarse.shape, bool)
    scored = segmenter.segment_scored(image, np.concatenate(boxes))
    return scored.masks[int(np.argmax(getattr(scored, select)))]


def score_set(bundle, segmenter, data: Set, rules: list[str],
              m2ib: M2IBConfig | None = None) -> dict[str, list[float]]:
    """Per-image Dice of every rule and of the two reference rows, plus the pointing game;
    ``m2ib``: the saliency settings (default: the model's own preset)."""
    m2ib = m2ib or default_config(bundle)
    fused = any(map_of(r)[0] in FUSED for r in rules)
    if fused:  # session 40's control: the preset's block alone
        m2ib = replace(m2ib, fuse_layer=None)
    seeds = list(range(len(data.images)))  # evaluate_dataset's seeds (seed 0)
    pos = m2ib_saliency(bundle, data.images, data.captions, m2ib, seed=seeds)
    maps = {"m2ib": pos}
    if any(map_of(r)[0] in MAPS and map_of(r)[0] != "m2ib" for r in rules):
        neg = m2ib_saliency(bundle, data.images, data.neg_captions, m2ib, seed=seeds)
        maps |= {k: [contrast_map(a, b, w) for a, b in zip(pos, neg, strict=True)]
                 for k, w in MAPS.items() if k != "m2ib"}
    if any(map_of(r)[0] == DENSE for r in rules):
        maps[DENSE] = [m for i in range(0, len(data.images), 50) for m in sb.dense_contrast(
            bundle, data.images[i:i + 50], data.captions[i:i + 50], data.neg_captions[i:i + 50])]
    if fused:
        other = m2ib_saliency(bundle, data.images, data.captions, replace(m2ib, layer=FUSE_BLOCK),
                              seed=seeds)
        maps["block1"], maps["fuse-mean"] = other, sb.fuse_block_maps(pos, other, "mean")[0]
        maps["fuse-conc"], took = sb.fuse_block_maps(pos, other, "concentration")
        print(f"{data.label}: fuse-conc took block {FUSE_BLOCK} on {sum(took)} images", flush=True)
    used = ["m2ib", *sorted({map_of(r)[0] for r in rules} - {"m2ib"})]
    out: dict[str, list[float]] = {
        ("pointing" if k == "m2ib" else f"pointing ({k})"):
            [pointing_hit(s, m) for s, m in zip(maps[k], data.masks, strict=True)]
        for k in used}
    for name in rules:
        cfg, select, candidates = parse_rule(name)
        rows = enumerate(zip(data.images, data.masks, maps[map_of(name)[0]], strict=True))
        out[name] = ([dice(selected_mask(segmenter, im, saliency_to_coarse(s, cfg), cfg, i,
                                         select, candidates), m) for i, (im, m, s) in rows]
                     if select else
                     [dice_of(segmenter, im, m, saliency_to_coarse(s, cfg), cfg, i)
                      for i, (im, m, s) in rows])
    current = parse_rule(CURRENT)[0]
    out["centre box"] = [dice_of(segmenter, im, m, saliency_to_coarse(c, current), current, i)
                         for i, (im, m, c) in enumerate(zip(data.images, data.masks,
                                                            sb.centre_box(data.images), strict=True))]
    out["oracle box"] = [dice(segmenter.segment(im, boxes=mask_to_boxes(m)), m)
                         for im, m in zip(data.images, data.masks, strict=True)]
    return out


def paired_ci(a: list[float], b: list[float], *, n_resamples: int = 2000, seed: int = 0):
    """Mean of a − b over images and its 95 % percentile bootstrap CI (images resampled)."""
    d = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_resamples, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def choose(scores: dict[str, dict[str, list[float]]], rules: list[str], train: list[str],
           held: list[str], baseline: str = CURRENT, min_gain: float = 0.02
           ) -> tuple[str, dict[str, bool]]:
    """The committed rule: the best mean training-domain Dice among the rules other than the
    baseline, and whether it passes (a)-(c) against the baseline."""
    mean = {r: {s: float(np.mean(scores[s][r])) for s in scores} for r in rules}
    score = {r: float(np.mean([mean[r][s] for s in train])) for r in rules}
    best = max((r for r in rules if r != baseline), key=lambda r: score[r])
    base = mean[baseline]
    checks = {
        f"(a) score ≥ `{baseline}` + {min_gain:g}": score[best] >= score[baseline] + min_gain,
        "(b) no training domain −0.02": all(mean[best][s] >= base[s] - 0.02 for s in train),
        "(c) held-out mean ≥ baseline − 0.01": (not held) or float(np.mean(
            [mean[best][s] for s in held])) >= float(np.mean([base[s] for s in held])) - 0.01,
    }
    return best, checks


def best_per_domain(scores, candidates: list[str], domains: list[str]) -> dict[str, str]:
    """Round 6: each domain's best candidate by its own mean Dice (ties: the earlier candidate,
    i.e. the narrower margin when candidates are listed narrow to wide)."""
    return {d: max(candidates, key=lambda r, d=d: (float(np.mean(scores[d][r])),
                                                   -candidates.index(r))) for d in domains}


def _ci_cell(a: list[float], b: list[float]) -> str:
    d, lo, hi = paired_ci(a, b)
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" *" if lo > 0 or hi < 0 else "")


def render(scores, rules, train, held, command, split, seconds, n, baseline=CURRENT,
           min_gain=0.02, presets: dict[str, str] | None = None, asked: list[str] | None = None,
           captions: str = "own", model: str = "embedded-pretrained") -> str:
    labels = list(scores)
    m2ib = ("per-set M2IB presets " + ", ".join(f"{d}: `{k}`" for d, k in presets.items())
            if presets else "its M2IB preset")
    lines = [f"## Saliency → box rule, {split} split (issue 17)", "",
             f"Command: `{command}`", "",
             f"Model `{model}`, {m2ib}, the pipeline's noise seeds; first {n} "
             f"tumour images of each set, scored with their `{captions}` lesion captions "
             "(`captions_for`); cells: mean LiteMedSAM Dice. Rules are "
             "BINARIZE/COMPONENT/+box dilation px (`bench/select_box_rule.py`); current = "
             f"`{CURRENT}` (MedCLIP-SAMv2's). Training domains: {', '.join(train)}; held-out rows: "
             f"{', '.join(held) or 'none'}.", "",
             "| rule | " + " | ".join(labels) + " | training mean | held-out mean |",
             "|---|" + "---|" * (len(labels) + 2)]
    pointing = [r for r in scores[labels[0]] if r.startswith("pointing")]
    for r in [*pointing, *rules, "centre box", "oracle box"]:
        m = {s: float(np.mean(scores[s][r])) for s in labels}
        tm = np.mean([m[s] for s in train]) if train else float("nan")
        hm = np.mean([m[s] for s in held]) if held else float("nan")
        lines.append(f"| {r} | " + " | ".join(f"{m[s]:.3f}" for s in labels)
                     + f" | {tm:.3f} | {hm:.3f} |")
    lines += ["", "Paired bootstrap (images, 2000 resamples), rule − current, Dice:", "",
              "| rule | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for r in rules:
        if r == CURRENT:
            continue
        cells = [_ci_cell(scores[s][r], scores[s][CURRENT]) for s in labels]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    if baseline != CURRENT and len(rules) > 2:
        lines += ["", f"Paired bootstrap, rule − `{baseline}` (the baseline), Dice:", "",
                  "| rule | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for r in rules:
            if r in (CURRENT, baseline):
                continue
            lines.append(f"| {r} | " + " | ".join(_ci_cell(scores[s][r], scores[s][baseline])
                                                   for s in labels) + " |")
    if presets and split == "val" and asked:
        best = best_per_domain(scores, asked, [d for d in train if d in presets])
        lines += ["", "Per-dataset margins (round 6: each domain's best on its own validation "
                  "positives, ties to the narrower): "
                  + "; ".join(f"{d} (`{presets[d]}`) → `{r}` ({np.mean(scores[d][r]):.3f})"
                              for d, r in best.items()) + "."]
    elif split == "val" and baseline in rules and len(rules) > 1 and train:
        best, checks = choose(scores, rules, train, held, baseline, min_gain)
        lines += ["", f"Best rule on validation other than `{baseline}`: `{best}`; "
                  + "; ".join(f"{k}: {'✓' if v else '✗'}" for k, v in checks.items())
                  + f" → **{'adopt it' if all(checks.values()) else f'keep `{baseline}`'}**."]
    lines += ["", f"Wall time {seconds:.0f} s (shared 2-core CPU)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded-pretrained")
    p.add_argument("--bench", default="data/bench128_n750")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--n", type=int, default=60, help="tumour images per set")
    p.add_argument("--rules", nargs="+", default=GRID, help=f"default: all {len(GRID)} rules")
    p.add_argument("--external", action="append", default=[], metavar="DOMAIN=DIR",
                   help="also score an external set (a held-out row, never used for the choice)")
    p.add_argument("--baseline", default=CURRENT,
                   help="the rule a candidate must beat on validation (round 2: the adopted one)")
    p.add_argument("--min-gain", type=float, default=0.02,
                   help="training-domain mean Dice a candidate must gain over the baseline")
    p.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS,
                   help="benchmark domains scored (default: all, the held-out one included)")
    p.add_argument("--preset", action="append", default=[], metavar="DOMAIN=PRESET",
                   help="M2IB preset for DOMAIN's sets, its external set too (round 6: the "
                        "per-dataset presets); default: the model's own")
    p.add_argument("--captions", default="own", choices=CAPTIONS,
                   help="lesion captions the maps are scored with (see captions_for)")
    p.add_argument("--embedding-cache", default="runs/litemedsam_embeddings")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        for r in (*args.rules, args.baseline):
            parse_rule(r)
    except ValueError as err:
        p.error(str(err))
    asked = list(args.rules)
    for rule in (args.baseline, CURRENT):
        if rule not in args.rules:
            args.rules = [rule, *args.rules]
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    clip = build_clip(resolve_model_source(args.model))
    bundle = bundle_from_open_clip(clip.model.eval(), clip.tokenizer)
    segmenter = cached_segmenter(cache_dir=args.embedding_cache)
    presets, preset_names = {}, {}
    for spec in args.preset:
        domain, sep, name = spec.partition("=")
        if not sep or name not in PRESETS:
            p.error(f"--preset {spec!r}: expected DOMAIN=PRESET with PRESET in {sorted(PRESETS)}")
        presets[domain], preset_names[domain] = PRESETS[name], name
    sets = [load_set(args.bench, d, args.split, args.n, d, args.captions) for d in args.domains]
    for domain, root, label, _ in external_sets(args.external, p.error):  # two of one domain
        sets.append(load_set(root, domain, None, args.n, label, args.captions))  # keep apart
    scores = {}
    for data in sets:
        scores[data.label] = score_set(bundle, segmenter, data, args.rules,
                                       presets.get(data.domain))
        print(data.label, {r: round(float(np.mean(v)), 3) for r, v in scores[data.label].items()},
              flush=True)
    train = [d for d in DOMAINS if d != HELD_OUT_DOMAIN and d in scores]
    held = [s for s in scores if s not in train]
    command = "python bench/select_box_rule.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(scores, args.rules, train, held, command, args.split,
                  time.perf_counter() - start, args.n, args.baseline, args.min_gain,
                  preset_names, asked, args.captions, args.model)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

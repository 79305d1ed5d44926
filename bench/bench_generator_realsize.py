"""Real-size benchmark of the inpainting generator on held-out anatomy, against biharmonic (issue 18).

    python bench/bench_generator_realsize.py --sizes 256 512 --n 30 \
        --generator embedded=embedded --out bench/results/generator_realsize.md

Images: ``shared.benchmark.realsize.build_realsize`` — for each ``--sizes`` side and each source,
``--n`` crops of real anatomy at native scale (small frames upsampled, marked "upsampled ×k"), one
synthetic lesion each covering 0.05–5 % of the image, and the exact lesion-free image. The region is
the lesion dilated by 2 px (``generator.masks.dilate``, the generator's default).

Methods: the untouched positive; scikit-image biharmonic; per generator its *coarse prior* (the
classical fill the model is conditioned on and adds its residual to, ``pixel_unet.condition``'s
coarse channel, on the same lesion window and grid — no learned part); the generator
(``load_generator(spec)``: each as it was trained — a window-trained checkpoint on lesion windows at
the image's own scale, an older one on the whole image; ``--samples`` samples, seeds ``seed + k``); on
radiographs also the generator with ``see_through_px=1``; the GT negative as the scorers' reference.
A texture-matched generator (``SPEC,texture-match``: biharmonic low frequencies + the learned
residual's ring-matched high-pass) also gets its classical twins, *noise texture* (white noise in
place of the learned residual) and *copy texture* (the high-pass of the image's own known tissue,
translated into the hole: ``generator.exemplar``). Specs of the same checkpoint share its diffusion samples
(``bench/realsize_methods.py``), so e.g. ``default=embedded`` vs ``texture=embedded,texture-match``
differ only in the composition.

Metrics inside the region vs the GT negative: PSNR and SSIM of sample 0; low-frequency PSNR
(both images blurred by a Gaussian of σ = 2 px first) of sample 0; PSNR and low-freq PSNR of the
mean of the samples; the texture ratio ``E_hf(fill) / E_hf(gt)`` per sample (mean, and the share of
samples in [0.7, 1.3]); outside-region max |output − positive|. With the embedded scorers, on the
lesion window (``lesion_window(region, min_side=64, context=4)``, the whole image when None)
cropped alike from every image: the fill detector's 2AFC against the GT's real tissue
(``fill_above_gt``, 0.5 = indistinguishable) and the lesion scorer's flip rate (``p_lesion < 0.5``),
both averaged over samples; and the fill detector's *unpaired* AUROC, every sample's score against
every GT's of the (size, source) — a two-sample test, where the paired 2AFC counts the sign of each
item's difference however small (the truth blurred by σ = 0.5 px scores 0.78–0.89 paired, 0.51
unpaired: ``fill_detector_bands.md``). Seconds per image per method (all samples, 1 thread).

Paired bootstrap 95 % CIs over images of generator − biharmonic on PSNR, low-freq PSNR and the
mean-of-samples PSNR. Goals per (size, source): low-freq PSNR ≥ biharmonic + 1 dB; mean-of-samples
PSNR ≥ biharmonic; every sample's texture ratio in [0.7, 1.3]; 2AFC 0.5 ± 0.1; flip rate ≥ the GT's
− 0.05; outside max diff 0. ``--quick``: a smoke run (n 3, 256², two sources, 2 steps, 2 samples).
A hand-written reading below ``bench_generator.READING_MARKER`` in ``--out`` is kept.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from bench.bench_generator import _kept_reading  # noqa: E402
from bench.realsize_methods import (  # noqa: E402  (the rows compared)
    BIHARMONIC,
    DILATION_PX,
    GT,
    CopyTextureBackend,
    Method,
    methods_for,
    parse_generators,
)
from generator.masks import dilate  # noqa: E402
from generator.predictor import lesion_window  # noqa: E402
from generator.scoring import (  # noqa: E402
    SCORERS_DIR,
    load_scorers,
    outside_max_abs_diff,
    scorer_flags,
)
from shared.benchmark.realsize import RealsizeItem, build_realsize  # noqa: E402
from shared.benchmark.sources import HELD_OUT, SOURCES  # noqa: E402
from shared.metrics import masked_psnr, masked_ssim, paired_bootstrap_ci, texture_ratio  # noqa: E402

LOW_SIGMA = 2.0  # px: the low-frequency view compares G_σ * fill with G_σ * gt
TEXTURE_BAND = (0.7, 1.3)
PSNR_CAP = 100.0  # dB (MSE 1e-10): an exact fill scores this, not inf, so means and CIs stay finite
SEEN_ANATOMY = ("mni_brain", "retina")  # training domains the benchmark also uses
QUICK_SOURCES = ("emri_head_mr", "chest_xray")  # upsampled MR + a radiograph (see-through)
SCORER_MIN_SIDE, SCORER_CONTEXT = 64, 4.0


# ----------------------------------------------------------------------------- metrics


def psnr(x: np.ndarray, y: np.ndarray, region: np.ndarray) -> float:
    """``min(10·log10(1/MSE_region), PSNR_CAP)`` (``shared.metrics.masked_psnr``, capped)."""
    return min(masked_psnr(x, y, region), PSNR_CAP)


def low(x: np.ndarray) -> np.ndarray:
    """``G_σ * x`` with σ = ``LOW_SIGMA`` px (float64)."""
    return ndimage.gaussian_filter(np.asarray(x, np.float64), LOW_SIGMA)


def safe_texture_ratio(fill: np.ndarray, gt: np.ndarray, region: np.ndarray) -> float:
    """``texture_ratio`` (E_hf(fill)/E_hf(gt) in the region), NaN where the GT region is flat."""
    try:
        return texture_ratio(fill, gt, region)
    except ValueError:
        return float("nan")


def fill_metrics(samples: list[np.ndarray], item: RealsizeItem, region: np.ndarray) -> dict:
    """Fidelity of the samples inside ``region`` vs the GT negative, and exactness outside."""
    gt, first = item.gt_negative, samples[0]
    mean = np.mean(np.stack(samples), axis=0)
    tex = np.array([safe_texture_ratio(s, gt, region) for s in samples])
    tex = tex[np.isfinite(tex)]
    in_band = (tex >= TEXTURE_BAND[0]) & (tex <= TEXTURE_BAND[1])
    return {
        "psnr": psnr(first, gt, region),
        "ssim": masked_ssim(first, gt, region),
        "low_psnr": psnr(low(first), low(gt), region),
        "psnr_mean": psnr(mean, gt, region),
        "low_psnr_mean": psnr(low(mean), low(gt), region),
        "texture": float(tex.mean()) if tex.size else float("nan"),
        "texture_in_band": float(in_band.mean()) if tex.size else float("nan"),
        "texture_all_in_band": float(in_band.all()) if tex.size else float("nan"),
        "outside": max(outside_max_abs_diff(s, item.image, region) for s in samples),
    }


def window_crop(x: np.ndarray, win: tuple[int, int, int] | None) -> np.ndarray:
    """The scorers' view: the lesion window ``(top, left, side)`` of ``x``, or all of it."""
    if win is None:
        return x
    top, left, side = win
    return x[top : top + side, left : left + side]


def scorer_metrics(scorers, outputs: dict[str, list[np.ndarray]], region: np.ndarray) -> dict:
    """Per method: flip rate and fill 2AFC vs the GT, averaged over its samples, all scored on the
    same lesion window (the scorers run at 64²: a whole 512² image would shrink the lesion away)."""
    win = lesion_window(region, min_side=SCORER_MIN_SIDE, context=SCORER_CONTEXT)
    hole = window_crop(region, win)
    fill_gt = scorers.probabilities([window_crop(outputs[GT][0], win)], [hole])["fill"][0]
    out = {}
    for name, samples in outputs.items():
        crops = [window_crop(s, win) for s in samples]
        probs = scorers.probabilities(crops, [hole] * len(crops))
        flags = scorer_flags(probs, np.full(len(crops), fill_gt))
        out[name] = {k: float(np.mean([f[k] for f in flags])) for k in ("lesion_flip", "fill_above_gt")}
        out[name]["fill_scores"] = [float(p) for p in probs["fill"]]
    return out


def unpaired_auroc(fill_scores, real_scores) -> float:
    """AUROC of the fill detector's scores, fills (1) against real tissue (0); NaN without both."""
    if len(fill_scores) == 0 or len(real_scores) == 0:
        return float("nan")
    y = np.r_[np.ones(len(fill_scores)), np.zeros(len(real_scores))]
    return float(roc_auc_score(y, np.r_[fill_scores, real_scores]))


def fill_auroc(rows: list[dict], gt_rows: list[dict]) -> float:
    """:func:`unpaired_auroc` of one method's samples over all items against the GTs'."""
    return unpaired_auroc([p for r in rows for p in r.get("fill_scores", [])],
                          [p for r in gt_rows for p in r.get("fill_scores", [])])


def evaluate_item(item: RealsizeItem, methods: list[Method], scorers) -> dict[str, dict]:
    """All metrics of every method on one item: {method: {metric: value}}."""
    region = dilate(item.mask, DILATION_PX)
    rows, outputs = {}, {}
    for m in methods:
        t = time.perf_counter()
        samples = m.run(item.image, item.mask)
        seconds = time.perf_counter() - t
        outputs[m.name] = samples
        rows[m.name] = {**fill_metrics(samples, item, region), "seconds": seconds}
    outputs[GT] = [item.gt_negative]
    rows[GT] = {}
    if scorers is not None:
        for name, vals in scorer_metrics(scorers, outputs, region).items():
            rows[name].update(vals)
    return rows


# ----------------------------------------------------------------------------- report

COLUMNS = [("psnr", "PSNR"), ("ssim", "SSIM"), ("low_psnr", "low PSNR"),
           ("psnr_mean", "PSNR mean"), ("low_psnr_mean", "low PSNR mean"),
           ("texture", "texture"), ("texture_in_band", "tex in band"), ("outside", "outside max"),
           ("fill_above_gt", "fill 2AFC"), ("fill_auroc", "fill AUROC"), ("lesion_flip", "flip rate"),
           ("seconds", "s/img")]


def column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r.get(key, np.nan) for r in rows], dtype=np.float64)


def summary(rows: list[dict], key: str) -> float:
    """Mean over images (max for the outside diff), NaN-safe."""
    vals = column(rows, key)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan")
    return float(vals.max() if key == "outside" else vals.mean())


def fmt(value: float, key: str) -> str:
    if not np.isfinite(value):
        return "—"
    if key == "outside":
        return f"{value:.3g}"
    return f"{value:.3f}" if key in ("ssim", "texture", "texture_in_band", "fill_above_gt",
                                      "fill_auroc", "lesion_flip") else f"{value:.2f}"


def verdict(rows: dict[str, list[dict]], name: str) -> str:
    """Goals met by method ``name`` on one (size, source), e.g. ``4/6; ✗ low+1dB, tex``."""
    gen, bh, gt = rows[name], rows[BIHARMONIC], rows[GT]
    d_low = np.mean(column(gen, "low_psnr") - column(bh, "low_psnr"))
    d_mean = np.mean(column(gen, "psnr_mean") - column(bh, "psnr"))
    afc, flip, flip_gt = (summary(gen, "fill_above_gt"), summary(gen, "lesion_flip"),
                          summary(gt, "lesion_flip"))
    goals = {
        "low+1dB": d_low >= 1.0,
        "mean≥bh": d_mean >= 0.0,
        "tex": summary(gen, "texture_all_in_band") == 1.0,
        "2AFC": abs(afc - 0.5) <= 0.1 if np.isfinite(afc) else None,
        "flip": flip >= flip_gt - 0.05 if np.isfinite(flip) else None,
        "outside": summary(gen, "outside") == 0.0,
    }
    judged = {k: v for k, v in goals.items() if v is not None}
    failed = [k for k, v in judged.items() if not v]
    return f"{len(judged) - len(failed)}/{len(judged)}" + (f"; ✗ {', '.join(failed)}" if failed else "")


def source_label(source: str, items: list[RealsizeItem]) -> str:
    """``name`` plus "(seen anatomy)" and "(upsampled ×k)" where they apply."""
    notes = [] if SOURCES[source].held_out else ["seen anatomy"]
    zoom = sorted({round(1.0 / it.scale, 2) for it in items if it.scale < 1.0})
    if zoom:
        k = f"{zoom[0]:g}" if zoom[0] == zoom[-1] else f"{zoom[0]:g}–{zoom[-1]:g}"
        notes.append(f"upsampled ×{k}")
    return source + "".join(f" ({n})" for n in notes)


def size_table(size: int, results: dict[str, dict], methods: dict[str, list[Method]]) -> list[str]:
    """One markdown table for one size: a row per (source, method)."""
    head = "| source | method | n | " + " | ".join(c for _, c in COLUMNS) + " | goals |"
    lines = [f"## {size}²", "", head, "|" + "---|" * (len(COLUMNS) + 4)]
    for source, res in results.items():
        label, rows = res["label"], res["rows"]
        for name in [m.name for m in methods[source]] + [GT]:
            cells = [fmt(fill_auroc(rows[name], rows[GT]) if k == "fill_auroc"
                         else summary(rows[name], k), k) for k, _ in COLUMNS]
            goal = verdict(rows, name) if name in res["judged"] else ""
            lines.append(f"| {label} | {name} | {len(rows[name])} | " + " | ".join(cells)
                         + f" | {goal} |")
    return lines


def delta_table(size: int, results: dict[str, dict]) -> list[str]:
    """Paired bootstrap 95 % CIs of method − biharmonic per (source, judged method)."""
    lines = ["", f"Paired bootstrap 95 % CI over images, method − biharmonic ({size}²; "
             "'PSNR mean' = PSNR of the mean of the samples − biharmonic's PSNR):", "",
             "| source | method | Δ PSNR dB | Δ low PSNR dB | Δ PSNR mean dB |", "|---|---|---|---|---|"]
    held = [res for source, res in results.items() if SOURCES[source].held_out]
    pooled = {"label": f"all held-out sources pooled ({len(held)})", "judged": [], "rows": {}}
    for name in (held[0]["judged"] if held else []):
        if all(name in res["rows"] for res in held):  # see-through rows exist on radiographs only
            pooled["judged"].append(name)
            pooled["rows"][name] = [r for res in held for r in res["rows"][name]]
    pooled["rows"][BIHARMONIC] = [r for res in held for r in res["rows"][BIHARMONIC]]
    for res in [*results.values(), pooled] if len(held) > 1 else results.values():
        lines += [_delta_row(res, name) for name in res["judged"]]
    return lines


def _delta_row(res: dict, name: str) -> str:
    rows, bh = res["rows"], res["rows"][BIHARMONIC]
    cells = []
    for key, ref in (("psnr", "psnr"), ("low_psnr", "low_psnr"), ("psnr_mean", "psnr")):
        d, lo, hi = paired_bootstrap_ci(column(rows[name], key), column(bh, ref), seed=0)
        cells.append(f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]")
    return f"| {res['label']} | {name} | " + " | ".join(cells) + " |"


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--sources", nargs="+", default=None,
                   help=f"default: the held-out sources + {' '.join(SEEN_ANATOMY)}")
    p.add_argument("--generator", action="append", default=None, metavar="NAME=SPEC",
                   help="repeatable; SPEC = a checkpoint directory or 'embedded' (default: "
                        "embedded=embedded)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scorers", default="embedded", help="scorer directory, 'embedded' or 'none'")
    p.add_argument("--out", type=Path, default=None,
                   help="default bench/results/generator_realsize.md (_quick.md with --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: n 3, 256² only, sources {' '.join(QUICK_SOURCES)} unless "
                        "given, 2 steps, 2 samples")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.sizes, args.steps, args.samples = 3, [256], 2, 2
        args.sources = args.sources or list(QUICK_SOURCES)
    args.sources = args.sources or list(HELD_OUT) + list(SEEN_ANATOMY)
    args.generator = args.generator or ["embedded=embedded"]
    if args.out is None:
        args.out = Path("bench/results/generator_realsize" + ("_quick" if args.quick else "") + ".md")
    return args


def _scorers(spec: str):
    if spec == "none":
        return None
    if spec == "embedded":
        return load_scorers() if (SCORERS_DIR / "lesion.safetensors").is_file() else None
    return load_scorers(spec)


def run_source(source: str, size: int, args, gens, scorers) -> dict:
    """Every item of one (size, source): per-method metric rows, the label and the judged rows."""
    items = build_realsize(source, size, args.n, seed=args.seed)
    methods = methods_for(source, gens, steps=args.steps, samples=args.samples, seed=args.seed)
    rows: dict[str, list[dict]] = {m.name: [] for m in methods} | {GT: []}
    for item in items:
        for name, vals in evaluate_item(item, methods, scorers).items():
            rows[name].append(vals)
    return {"label": source_label(source, items), "rows": rows, "methods": methods,
            "judged": [m.name for m in methods if m.goals]}


def header(args, argv: list[str], gens, scorers) -> list[str]:
    ckpts = ", ".join(f"`{n}` = `{g.checkpoint_hash[:12]}` (window '{g.window}')"
                      for n, g in gens.items())
    return [
        "# Generator on held-out anatomy at real size (issue 18)", "",
        "Command: `python bench/bench_generator_realsize.py " + shlex.join(argv) + "`", "",
        f"Resolved: sizes {args.sizes}, n {args.n} per source, sources {' '.join(args.sources)}, "
        f"{args.steps} DDIM steps, {args.samples} samples (seeds {args.seed}…), generators {ckpts} "
        f"(lesion window context 4), scorers "
        + (f"`{scorers.checkpoint_hash[:12]}`" if scorers is not None else "none") + ".", "",
        "Inside the lesion dilated by 2 px vs the exact lesion-free image. PSNR / SSIM / low PSNR "
        "(σ = 2 px blur first): sample 0; 'mean' = the mean of the samples; texture = mean of "
        "E_hf(sample)/E_hf(GT) over samples, 'tex in band' = share of samples in [0.7, 1.3]; "
        "outside max = max |output − positive| outside the region; fill 2AFC = P(fill detector "
        "finds the output more fill-like than the GT), flip rate = P(lesion scorer < 0.5), both "
        "on the lesion window (≥ 64², context 4) and averaged over samples; s/img = seconds per "
        "image for all samples, 1 CPU thread. Coarse prior = the model's own classical fill "
        "(its conditioning's coarse channel, same window) without the learned residual; for a "
        "native-coarse generator, a window zoomed out onto the grid gets scikit-image's exact "
        "biharmonic fill at the input's resolution instead (what its residual is added to).", "",
        "Goals (column 'goals', per size × source): low PSNR ≥ biharmonic + 1 dB (mean paired Δ); "
        "PSNR mean ≥ biharmonic's PSNR; every sample's texture in [0.7, 1.3]; fill 2AFC 0.5 ± 0.1; "
        "flip rate ≥ the GT's − 0.05; outside max 0.", "",
    ]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(1)
    gens, scorers = parse_generators(args.generator), _scorers(args.scorers)
    lines = header(args, argv, gens, scorers)
    t_all = time.perf_counter()
    for size in args.sizes:
        results, methods = {}, {}
        for source in args.sources:
            t = time.perf_counter()
            results[source] = run_source(source, size, args, gens, scorers)
            methods[source] = results[source]["methods"]
            print(f"{size}² {source}: {time.perf_counter() - t:.0f} s", flush=True)
        lines += size_table(size, results, methods) + delta_table(size, results) + [""]
    if CopyTextureBackend.fallbacks:
        lines.append(f"Copy texture: no valid offset on {CopyTextureBackend.fallbacks} windows "
                     "(white noise there).")
    lines.append(f"Total wall time {time.perf_counter() - t_all:.0f} s.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    args.out.write_text(text + _kept_reading(args.out))
    print(text)


if __name__ == "__main__":
    main()

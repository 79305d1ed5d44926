"""Statistics and the markdown table of the ablation runner (:mod:`finetune.ablation`).

Per-image metrics (Dice, IoU, NSD, pointing game, patch silhouette) are averaged per image over
the seeds a variant has, then compared with :func:`shared.metrics.paired_bootstrap_ci`
(resampling image indices). AUROC is a set-level statistic: :func:`paired_auroc_ci` resamples
positives and negatives (stratified, the same indices for both models) and, in each resample,
averages the AUROC over each model's seeds before taking the difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from finetune.evaluation.evaluate import DENSE_BOX_RULE
from shared.metrics import paired_bootstrap_ci

PER_IMAGE = ("dice", "iou", "nsd", "pointing", "m2ib_pointing", "faithfulness", "silhouette")
METRICS = (*PER_IMAGE, "auroc")
SEG_METRICS = ("dice", "iou", "nsd")
REFERENCES = ("none", "control")


def _pair_matrix(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """(P, N) Mann-Whitney kernel: 1 if pos > neg, 0.5 if equal, else 0."""
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUROC of scores ``pos`` (label 1) vs ``neg`` (label 0) as the Mann-Whitney statistic."""
    return float(_pair_matrix(np.asarray(pos), np.asarray(neg)).mean())


def _resample_weights(n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(R, n) multiplicity of each index in R bootstrap resamples of size n."""
    idx = rng.integers(0, n, size=(n_resamples, n))
    return np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)


def paired_auroc_ci(
    a_seeds: Sequence[tuple[np.ndarray, np.ndarray]],
    b_seeds: Sequence[tuple[np.ndarray, np.ndarray]],
    *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
) -> tuple[float, float, float]:
    """``(diff, lo, hi)`` of mean-over-seeds AUROC(a) − AUROC(b), stratified paired bootstrap.

    Args:
        a_seeds, b_seeds: per seed ``(pos_scores (P,), neg_scores (N,))`` on the same images.
    Each resample draws P positive and N negative indices with replacement; the AUROC of a
    resample is ``w_pos · K · w_neg / (P · N)`` with K the Mann-Whitney kernel matrix.
    """
    n_pos, n_neg = len(a_seeds[0][0]), len(a_seeds[0][1])
    for pos, neg in (*a_seeds, *b_seeds):
        if len(pos) != n_pos or len(neg) != n_neg:
            raise ValueError("paired AUROC needs the same positives and negatives for every model")
    rng = np.random.default_rng(seed)
    w_pos = _resample_weights(n_pos, n_resamples, rng)
    w_neg = _resample_weights(n_neg, n_resamples, rng)

    def mean_auroc(seeds) -> tuple[float, np.ndarray]:
        point, boot = 0.0, np.zeros(n_resamples)
        for pos, neg in seeds:
            k = _pair_matrix(np.asarray(pos), np.asarray(neg))
            point += k.mean()
            boot += np.einsum("rp,pn,rn->r", w_pos, k, w_neg) / (n_pos * n_neg)
        return point / len(seeds), boot / len(seeds)

    pa, ba = mean_auroc(a_seeds)
    pb, bb = mean_auroc(b_seeds)
    diffs = ba - bb
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return float(pa - pb), float(lo), float(hi)


def seed_values(runs: Mapping[int, dict], metric: str) -> list[float]:
    """One number per seed: the image mean of a per-image metric, or the AUROC."""
    if metric == "auroc":
        return [auroc(r["p_pos"], r["p_neg"]) for r in runs.values()]
    return [float(np.mean(r[metric])) for r in runs.values()]


def per_image_mean(runs: Mapping[int, dict], metric: str) -> np.ndarray:
    """(n_images,) per-image average over the variant's seeds."""
    return np.mean([np.asarray(r[metric], dtype=np.float64) for r in runs.values()], axis=0)


def compare(a: Mapping[int, dict], b: Mapping[int, dict], metric: str, *,
            n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Paired bootstrap 95% CI of variant a minus variant b on one metric."""
    if metric == "auroc":
        return paired_auroc_ci([(r["p_pos"], r["p_neg"]) for r in a.values()],
                               [(r["p_pos"], r["p_neg"]) for r in b.values()],
                               n_resamples=n_resamples, seed=seed)
    return paired_bootstrap_ci(per_image_mean(a, metric), per_image_mean(b, metric),
                               n_resamples=n_resamples, seed=seed)


def build_rows(results: Mapping[str, Mapping[int, dict]], references: Mapping[str, dict], *,
               n_resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Table rows (variant, metric, mean, per-seed spread, Δ vs none / control with CI).

    ``results[variant][seed]`` holds per-image arrays (PER_IMAGE) and ``p_pos``/``p_neg``;
    ``references[label]`` model-independent per-image Dice/IoU/NSD (oracle box, centre box).
    A metric a result does not hold (results written before it existed) is left out.
    """
    rows = []
    for label, ref in references.items():
        for m in SEG_METRICS:
            rows.append({"variant": label, "metric": m,
                         "mean": float(np.mean(ref[m])), "seeds": [], "delta": {}})
    for variant, runs in results.items():
        for m in METRICS:
            if m != "auroc" and any(m not in r for r in runs.values()):
                continue
            vals = seed_values(runs, m)
            delta = {}
            for ref in REFERENCES:
                if ref in results:
                    delta[ref] = compare(runs, results[ref], m, n_resamples=n_resamples, seed=seed)
            rows.append({"variant": variant, "metric": m, "mean": float(np.mean(vals)),
                         "seeds": vals, "delta": delta})
    return rows



def negative_utility(results: Mapping[str, Mapping[int, dict]], metric: str, *,
                     generated: str = "stage1+2", gt: str = "stage1+2-gt",
                     n_resamples: int = 2000,
                     seed: int = 0) -> tuple[float, float, float] | None:
    """Negative utility ``U = (generated − Stage 1) / (GT − Stage 1)`` on a per-image metric,
    ``generated`` and ``gt`` being the same Stage 2 form trained on generated and on exact
    negatives, with a 95% bootstrap CI over images (the same resampled images in numerator and
    denominator; per-image values averaged over seeds first). 1 = the generated negatives do
    what exact ones do; 0 = no more than Stage 1. ``None`` when a variant is missing. The ratio is
    unstable when the GT gain is near 0: read it with the GT row's own CI."""
    names = ("stage1", generated, gt)
    if any(v not in results for v in names):
        return None
    s1, with_gen, with_gt = (per_image_mean(results[v], metric) for v in names)
    num, den = with_gen - s1, with_gt - s1
    point = float(num.mean() / den.mean()) if den.mean() != 0 else float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(s1), size=(n_resamples, len(s1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = num[idx].mean(1) / den[idx].mean(1)
    boot = boot[np.isfinite(boot)]
    lo, hi = np.quantile(boot, [0.025, 0.975]) if len(boot) else (float("nan"), float("nan"))
    return point, float(lo), float(hi)


def _fmt_delta(d: tuple[float, float, float] | None) -> str:
    if d is None:
        return "—"
    mean, lo, hi = d
    star = " *" if lo > 0 or hi < 0 else ""
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]{star}"


def render_table(rows: Sequence[dict]) -> str:
    """The markdown table (one line per variant and metric)."""
    lines = ["| variant | metric | mean | per-seed sd [min, max] (n seeds) | Δ vs none [95% CI] "
             "| Δ vs control [95% CI] |", "|---|---|---|---|---|---|"]
    for r in rows:
        s = r["seeds"]
        spread = (f"{np.std(s, ddof=1) if len(s) > 1 else 0.0:.3f} [{min(s):.3f}, {max(s):.3f}] "
                  f"({len(s)})" if s else "model-independent")
        lines.append(f"| {r['variant']} | {r['metric']} | {r['mean']:.3f} | {spread} | "
                     f"{_fmt_delta(r['delta'].get('none'))} | "
                     f"{_fmt_delta(r['delta'].get('control'))} |")
    return "\n".join(lines)


def box_rule_text(component: str = "largest", dilation_px: int = 0, dilation_frac: float = 0.0,
                  scale: float = 1.0) -> str:
    """The saliency → box step in words, e.g. 'the component holding the saliency maximum → one
    box grown by 4 px per 128 px of image side' (the embedded rule)."""
    text = ("the component holding the saliency maximum" if component == "peak"
            else "largest component") + " → one box"
    grow = []
    if dilation_px:
        grow.append(f"{dilation_px} px")
    if dilation_frac:
        grow.append(f"{dilation_frac * 128:g} px per 128 px of image side")
    if grow:
        text += " grown by " + " + ".join(grow)
    if scale != 1:
        text += f", scaled ×{scale:g} about its centre"
    return text


_SALIENCY_TEXT = {
    "m2ib": "M2IB saliency → 2-means",
    "dense": ("the CLIP's dense caption contrast cos(p, T) − cos(p, T⁻) per patch (each positive's "
              f"caption T vs its lesion-free caption T⁻) → above {DENSE_BOX_RULE['threshold']:g} of "
              "its range"),
}


def render_report(rows: Sequence[dict], meta: dict) -> str:
    """Full markdown report: what was run, then the table."""
    done = ", ".join(f"{v}: seeds {s}" for v, s in meta["completed"].items())
    lines = [
        f"## Ablation on `{meta['domain']}`"
        + (f" ({', '.join(meta['splits'])} split)" if meta.get("splits") else " (all splits)"),
        "",
        f"Command: `{meta['command']}`", "",
        f"Positives: {meta['n_pos']} (segmentation, pointing game, silhouette); AUROC negatives: "
        f"{meta['n_neg']} (the positives' exact lesion-free versions + the domain's normal "
        f"images). Training: {meta['steps']} steps × batch {meta['batch_size']} for every "
        f"variant, from `{meta['base_model']}`; seeds requested {meta['seeds']}.", "",
        f"Completed (variant: seeds): {done}.", "",
        f"Pipeline: {_SALIENCY_TEXT[meta.get('saliency', 'm2ib')]} → "
        f"{meta.get('box_rule', box_rule_text())} → LiteMedSAM; the "
        "oracle box is the GT mask's box, the centre box a fixed box in the middle (both "
        "model-independent). Pointing game: the pipeline's saliency argmax lies in the GT mask"
        + ("; m2ib_pointing: the same for M2IB's map" if meta.get("saliency") == "dense" else "")
        + ". Prompt faithfulness: share of M2IB saliency mass inside the lesion with the positive "
        "caption minus with the lesion-free caption. Silhouette: cosine silhouette of last-block patch tokens "
        "(tumor vs background patches of all positives), averaged per image. AUROC: zero-shot "
        "p(tumor) with the domain's negative caption vs its positive captions.", "",
        "Δ: variant minus reference, per-image values averaged over seeds first, paired "
        f"bootstrap over images ({meta['n_resamples']} resamples; AUROC: stratified, mean over "
        "seeds inside each resample); `*` = the 95% CI excludes 0.", "",
        render_table(rows), "",
    ]
    for label, d in meta.get("gt_gain", {}).items():
        lines.append(f"Stage 1+2 with exact GT negatives − Stage 1 on {label}: {_fmt_delta(d)} "
                     "(paired bootstrap over images).")
    for generated, gt, label, u in meta.get("utility", ()):
        lines.append(f"Negative utility U on {label} = ({generated} − stage1) / ({gt} − "
                     f"stage1): {u[0]:+.2f} [{u[1]:+.2f}, {u[2]:+.2f}] (95% bootstrap CI over "
                     "images; unstable when the GT gain is near 0).")
    if meta.get("utility"):
        lines.append("")
    if meta.get("timings_s"):
        lines += ["Wall time per (variant, seed), s (train + evaluate, shared 2-core CPU, 1 "
                  "thread): " + ", ".join(f"{k} {v:.0f}" for k, v in meta["timings_s"].items()),
                  ""]
    return "\n".join(lines)

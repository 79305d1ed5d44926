"""Feature analysis: t-SNE and silhouette scores of tumor vs background patch tokens and of
positive vs negative image embeddings, for one or more models (e.g. before / after
fine-tuning). scikit-learn does the t-SNE and the silhouette; we only gather features.

Silhouette is reported on the original features (cosine distance; the number to compare) and
on the 2-D t-SNE layout (what the picture shows). Higher = better separated classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from finetune.evaluation.clip_bundle import (
    ClipBundle,
    Placement,
    frozen_eval,
    preprocess,
    vision_prefix,
)


def _mask_fractions(mask: np.ndarray, bundle: ClipBundle, p: Placement) -> np.ndarray:
    """Share of each patch covered by the mask, after the same placement as the image: (gh*gw,)."""
    s = bundle.image_size
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    m = F.interpolate(m, size=(p.inner_h, p.inner_w), mode="bilinear", align_corners=False)
    canvas = torch.zeros(1, 1, s, s)
    canvas[..., p.top : p.top + p.inner_h, p.left : p.left + p.inner_w] = m
    gh, gw = bundle.grid_size
    return F.adaptive_avg_pool2d(canvas, (gh, gw)).flatten().numpy()


@torch.no_grad()
def patch_features(
    bundle: ClipBundle, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], *,
    tumor_fraction: float = 0.5, batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Last-block patch tokens (after the final norm) and labels: 1 tumor (mask covers >=
    ``tumor_fraction`` of the patch), 0 background (mask covers nothing); mixed patches dropped.

    Returns (M, D) float32 features and (M,) int labels.
    """
    feats, labels = [], []
    last = bundle.num_blocks - 1
    with frozen_eval(bundle.model):
        for start in range(0, len(images), batch_size):
            pixels, placements = preprocess(bundle, images[start : start + batch_size])
            tokens = bundle.trunk.norm(vision_prefix(bundle, pixels, last))[:, bundle.num_prefix_tokens :]
            for tok, mask, p in zip(tokens, masks[start : start + batch_size], placements, strict=True):
                frac = _mask_fractions(mask, bundle, p)
                keep = (frac >= tumor_fraction) | (frac == 0)
                feats.append(tok[torch.from_numpy(keep).to(tok.device)].cpu().numpy())
                labels.append((frac[keep] >= tumor_fraction).astype(int))
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels)


@torch.no_grad()
def image_features(bundle: ClipBundle, images: Sequence[np.ndarray], *, batch_size: int = 16) -> np.ndarray:
    """L2-normalised image embeddings (N, E)."""
    out = []
    with frozen_eval(bundle.model):
        for start in range(0, len(images), batch_size):
            pixels, _ = preprocess(bundle, images[start : start + batch_size])
            out.append(F.normalize(bundle.model.encode_image(pixels).float(), dim=-1))
    return torch.cat(out).cpu().numpy()


def _subsample(x: np.ndarray, y: np.ndarray, per_class: int, rng: np.random.Generator):
    keep = np.concatenate([
        rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)
    ])
    return x[np.sort(keep)], y[np.sort(keep)]


class DegenerateFeaturesError(ValueError):
    """Features t-SNE cannot embed (all identical, or NaN/inf): sklearn's Barnes-Hut code can
    crash the process on them instead of raising."""


def tsne_silhouette(
    features: np.ndarray, labels: np.ndarray, *, path: str | Path | None = None, title: str = "",
    class_names: Sequence[str] = ("background", "tumor"), seed: int = 0, max_iter: int = 500,
) -> dict[str, float]:
    """t-SNE to 2-D, silhouettes (feature space, cosine; t-SNE space, euclidean), optional PNG."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("t-SNE / silhouette need features from two classes")
    n = len(features)
    if not np.isfinite(features).all() or float(np.ptp(features, axis=0).max()) < 1e-6:
        raise DegenerateFeaturesError(f"t-SNE needs distinct, finite features; the {n} given are "
                                      "identical or non-finite")
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    emb = TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=max_iter, n_jobs=1
    ).fit_transform(features)
    result = {
        "n": int(n),
        "silhouette_features": float(silhouette_score(features, labels, metric="cosine")),
        "silhouette_tsne": float(silhouette_score(emb, labels)),
    }
    if path is not None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for c in np.unique(labels):
            sel = labels == c
            ax.scatter(emb[sel, 0], emb[sel, 1], s=6, alpha=0.7, label=class_names[int(c)])
        ax.set_title(f"{title}\nsilhouette {result['silhouette_features']:.3f}", fontsize=9)
        ax.legend(fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
    return result


def feature_analysis(
    models: Mapping[str, ClipBundle],
    pos_images: Sequence[np.ndarray],
    pos_masks: Sequence[np.ndarray],
    neg_images: Sequence[np.ndarray],
    out_dir: str | Path,
    *,
    max_patches_per_class: int = 500,
    seed: int = 0,
    max_iter: int = 500,
) -> dict[str, dict[str, dict[str, float]]]:
    """For each named model: patch t-SNE (tumor vs background on the positives) and image
    t-SNE (positives vs negatives). Writes ``tsne_<model>_{patches,images}.png`` into
    ``out_dir`` and returns ``{model: {"patches": {...}, "images": {...}}}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {}
    for name, bundle in models.items():
        rng = np.random.default_rng(seed)
        x, y = patch_features(bundle, pos_images, pos_masks)
        x, y = _subsample(x, y, max_patches_per_class, rng)
        emb = image_features(bundle, list(pos_images) + list(neg_images))
        lab = np.array([1] * len(pos_images) + [0] * len(neg_images))
        report[name] = {}
        for kind, feats, labels, title, classes in (
                ("patches", x, y, "patch tokens", ("background", "tumor")),
                ("images", emb, lab, "image embeddings", ("negative", "positive"))):
            try:
                report[name][kind] = tsne_silhouette(
                    feats, labels, path=out_dir / f"tsne_{name}_{kind}.png", title=f"{name}: {title}",
                    class_names=classes, seed=seed, max_iter=max_iter)
            except DegenerateFeaturesError as err:
                report[name][kind] = {"skipped": str(err)}
    return report


def feature_analysis_of_pairs(models: Mapping[str, ClipBundle], pairs, out_dir: Path, *,
                              seed: int = 0) -> dict:
    """:func:`feature_analysis` of a split's (image, mask) pairs: positives = images whose mask has
    foreground, negatives = the rest; ``{"skipped": why}`` without both."""
    from shared.io import read_image, read_mask

    pos_img, pos_mask, neg_img = [], [], []
    for p in pairs:
        image, mask = read_image(p.image_path), read_mask(p.mask_path)
        if mask.any():
            pos_img.append(image)
            pos_mask.append(mask)
        else:
            neg_img.append(image)
    if not pos_img or not neg_img:
        return {"skipped": f"needs positives and negatives; got {len(pos_img)} and {len(neg_img)}"}
    return feature_analysis(models, pos_img, pos_mask, neg_img, out_dir, seed=seed)

"""Diagnostic (issue 17, lever "a pretrained medical encoder"): do LiteMedSAM's *spatial* image
tokens locate lesions on sources a probe never saw?

    python bench/diag_litemedsam_tokens.py --out bench/results/litemedsam_tokens.md

For every positive of the evaluation sets, LiteMedSAM's image embedding (the segmenter's own
input: longest side → 256, min-max, zero pad; the neck output 256 × 64 × 64, read from the
pipeline's embedding cache ``runs/litemedsam_embeddings`` when an earlier evaluation left it there,
else computed) is average-pooled to a 32 × 32 token grid (8 input px per token at 256², 4 px at
the benchmark's 128²). A token's label is "lesion" when ≥ half of it is lesion. A logistic
probe (scikit-learn, balanced classes) is trained on the tokens of some sets and scores every
token of the others; as for M2IB, *pointing* = the highest-scoring token lies in the lesion, and
*mass* = the share of the positive part of the score map inside the lesion. The same probe on raw
pixels (the 8 × 8 patch of each token, 64 values + mean and std) separates what the encoder adds
from what intensity alone gives. Rows: leave one training domain out (train on the other two),
and train on all three training domains → test on the held-out sources (another head MR, a real
ultrasound scan) and the held-out domain (chest X-ray). The embedded CLIP's M2IB pointing on the
same held-out sets is 0.00–0.07 (`clip_protocol.md`).

A probe, not a model: it sees lesion masks, which a CLIP never does; it bounds what a lesion-
aware head on these tokens could do. It trains on the *test* positives of the training domains
(the only ones with embeddings in the cache); it is evaluated only on other sources or domains.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from bench.tinyvit_tokens import EVAL_SETS as SETS  # noqa: E402  (name -> (root, domain), test split)
from bench.tinyvit_tokens import TRAIN_DOMAINS, key_of  # noqa: E402
from finetune.evaluation.segmenters import LiteMedSAMSegmenter  # noqa: E402
from shared.benchmark import load_manifest  # noqa: E402
from shared.io import read_image, read_mask, save_torch_atomic  # noqa: E402

GRID = 32  # tokens per side after pooling the 64² embedding


def load_set(root: str, domain: str, n: int, cache: Path, encoder) -> dict:
    """Token features (N, G², 256), raw patch features (N, G², 66), token lesion labels (N, G²)."""
    items = [e for e in load_manifest(Path(root)) if e.domain == domain
             and e.split == "test" and e.label == "tumor"][:n]
    feats, raws, labels, computed = [], [], [], 0
    for e in items:
        image, mask = read_image(e.image), read_mask(e.mask)
        key, x = key_of(image)
        path = cache / f"{key}.pt"
        if path.is_file():
            emb = torch.load(path, weights_only=True)
        else:
            with torch.no_grad():
                emb = encoder(x)
            computed += 1
            cache.mkdir(parents=True, exist_ok=True)  # the pipeline's cache format (CachedEncoder)
            save_torch_atomic(emb, path)
        tok = F.avg_pool2d(emb.float(), 64 // GRID)[0]  # (256, G, G)
        feats.append(tok.flatten(1).T.numpy())
        gray = x[0].mean(0, keepdim=True)[None]  # (1, 1, 256, 256)
        patches = F.unfold(gray, 256 // GRID, stride=256 // GRID)[0].T.numpy()  # (G², 64)
        raws.append(np.concatenate([patches, patches.mean(1, keepdims=True),
                                    patches.std(1, keepdims=True)], axis=1))
        m = torch.from_numpy(mask.astype(np.float32))[None, None]
        m = F.interpolate(m, size=(256, 256), mode="nearest")
        labels.append((F.avg_pool2d(m, 256 // GRID)[0, 0].flatten() >= 0.5).numpy())
    return {"tok": np.stack(feats), "raw": np.stack(raws), "y": np.stack(labels),
            "computed": computed}


def fit(sets: list[dict], kind: str, seed: int = 0):
    x = np.concatenate([s[kind].reshape(-1, s[kind].shape[-1]) for s in sets])
    y = np.concatenate([s["y"].reshape(-1) for s in sets])
    rng = np.random.default_rng(seed)
    bg = np.flatnonzero(~y)
    keep = np.concatenate([np.flatnonzero(y), rng.choice(bg, min(len(bg), 20 * int(y.sum())), replace=False)])
    scaler = StandardScaler().fit(x[keep])
    clf = LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000).fit(scaler.transform(x[keep]), y[keep])
    return scaler, clf


def score(model, s: dict, kind: str) -> tuple[float, float]:
    scaler, clf = model
    pts, mass = [], []
    for f, y in zip(s[kind], s["y"], strict=True):
        if not y.any():
            continue
        z = clf.decision_function(scaler.transform(f))
        pts.append(float(y[int(np.argmax(z))]))
        pos = np.clip(z, 0, None)
        mass.append(float(pos[y].sum() / pos.sum()) if pos.sum() > 0 else 0.0)
    return float(np.mean(pts)), float(np.mean(mass))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=150)
    p.add_argument("--cache", type=Path, default=Path("runs/litemedsam_embeddings"))
    p.add_argument("--out", type=Path, default=Path("bench/results/litemedsam_tokens.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    encoder = LiteMedSAMSegmenter().model.image_encoder
    data = {name: load_set(root, dom, args.n, args.cache, encoder) for name, (root, dom) in SETS.items()}
    rows = []
    for held in TRAIN_DOMAINS:  # leave one training domain out
        train = [data[d] for d in TRAIN_DOMAINS if d != held]
        rows.append((f"{' + '.join(d for d in TRAIN_DOMAINS if d != held)}", held,
                     {k: score(fit(train, k), data[held], k) for k in ("tok", "raw")}))
    models = {k: fit([data[d] for d in TRAIN_DOMAINS], k) for k in ("tok", "raw")}
    for name in SETS:
        if name not in TRAIN_DOMAINS:
            rows.append(("all three training domains", name,
                         {k: score(models[k], data[name], k) for k in ("tok", "raw")}))
    lines = [
        "## Diagnostic: LiteMedSAM's spatial tokens, a linear lesion probe on unseen sources (issue 17)", "",
        "Command: `python bench/diag_litemedsam_tokens.py " + " ".join(argv or sys.argv[1:]) + "`", "",
        __doc__.split("\n\n", 2)[2].strip(), "",
        f"{GRID}² tokens; n = {args.n} positives per set (test split); "
        + ", ".join(f"{k}: {len(v['y'])} ({v['computed']} embeddings computed, rest cached)"
                    for k, v in data.items()) + ".", "",
        "Chance = the share of lesion tokens (the pointing and the mass of a uniform or random "
        "score map).", "",
        "| trained on | evaluated on | chance | pointing, LiteMedSAM tokens | mass, tokens | "
        "pointing, raw pixels | mass, raw |",
        "|---|---|---|---|---|---|---|",
    ]
    for train, test, r in rows:
        lines.append(f"| {train} | {test} | {data[test]['y'].mean():.3f} | {r['tok'][0]:.3f} | "
                     f"{r['tok'][1]:.3f} | {r['raw'][0]:.3f} | {r['raw'][1]:.3f} |")
    lines += ["", f"Wall time {time.time() - t0:.0f} s, shared 2-core x86_64 CPU, 1 thread."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Train the small VAE and the latent tumor classifier used by ``generator.latent_boundary``.

``python -m generator.latent_boundary --root data/bench64 --out generator/weights/latent``.
1. VAE (diffusers ``AutoencoderKL``): MSE reconstruction + 1e-6·KL on every training image
   (positives, GT negatives, normals) of the non-held-out domains, random flips/rotations.
2. The VAE is frozen; latents (posterior means, 8 dihedral views per image) are computed once;
   the classifier learns tumor (positives) vs normal (GT negatives and normals) with BCE.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from generator.latent_boundary import (
    LatentClassifier,
    LatentConfig,
    build_vae,
    encode,
    save_latent,
)
from shared.io import InputError


def _images(root: str, held_out: str, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,1,side,side) images and (N,) labels (1 = tumor) of the train split, held-out excluded."""
    from shared.benchmark import load_manifest
    from shared.io import read_image

    items = load_manifest(root)
    domains = sorted({it.domain for it in items})
    if held_out and held_out not in domains:  # a misspelt one would hold nothing out, silently
        raise InputError(f"held_out={held_out!r} is not a domain of {root} (it has {domains}; "
                         "'' holds nothing out)")
    xs, ys = [], []
    for it in items:
        if it.split != "train" or it.domain == held_out:
            continue
        entries = [(it.image, it.label == "tumor")]
        if it.gt_negative is not None:
            entries.append((it.gt_negative, False))
        for path, label in entries:
            x = read_image(path)
            x = x if x.ndim == 2 else x.mean(axis=2)
            t = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None]
            if t.shape[-1] != side:
                t = F.interpolate(t, size=(side, side), mode="bilinear", antialias=True)
            xs.append(t)
            ys.append(float(label))
    if not xs:
        raise InputError(f"{root}: no train images outside {held_out!r}")
    return torch.cat(xs), torch.tensor(ys)


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def train_latent(root: str, out: str | Path, *, held_out: str = "retina", vae_steps: int = 600,
                 clf_steps: int = 300, batch_size: int = 8, seed: int = 0,
                 cfg: LatentConfig | None = None) -> dict:
    """Train both models, save them to ``out`` (fp16) and return the training summary."""
    cfg = cfg or LatentConfig()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _images(root, held_out, cfg.resolution)
    vae = build_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    t0, rec = time.time(), float("nan")
    for step in range(vae_steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        xb = _dihedral(x[idx], int(torch.randint(0, 8, (1,), generator=g)))
        post = vae.encode(xb * 2 - 1).latent_dist
        recon = vae.decode(post.sample(generator=g)).sample
        rec_loss = F.mse_loss(recon, xb * 2 - 1)
        loss = rec_loss + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec = rec_loss.item()
        if step % 100 == 0:
            print(f"vae step {step} recon_mse {rec:.5f}", flush=True)
    vae.eval().requires_grad_(False)
    z = torch.cat([encode(vae, _dihedral(x, k)) for k in range(8)])  # (8N, C, h, w), view-major
    labels = y.repeat(8)
    perm = torch.randperm(len(x), generator=g)
    n_val = max(1, len(x) // 8)  # images (all 8 views) held out from the classifier
    views = torch.arange(8)[:, None] * len(x)
    val, tr = (views + perm[:n_val]).flatten(), (views + perm[n_val:]).flatten()
    clf = LatentClassifier(cfg)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(clf_steps):
        idx = tr[torch.randint(0, len(tr), (batch_size * 2,), generator=g)]
        loss = F.binary_cross_entropy_with_logits(clf(z[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    with torch.no_grad():
        acc = ((clf(z[val]) > 0).float() == labels[val]).float().mean().item()
    summary = {"vae_recon_mse_last": rec, "clf_val_acc_unseen_images": acc, "n_images": len(x),
               "vae_steps": vae_steps, "clf_steps": clf_steps, "seed": seed,
               "held_out": held_out, "root": str(root), "seconds": round(time.time() - t0, 1)}
    save_latent(out, vae, clf, cfg, meta={"train": summary})
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    from generator.latent_boundary import main

    main()

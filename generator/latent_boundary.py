"""Latent-boundary negatives (design §3): cross the classifier's boundary in a frozen VAE's latent.

z = E(x) (posterior mean of a frozen diffusers ``AutoencoderKL``); a small classifier f on latents
says tumor (logit > 0) vs normal. We optimise only δ, restricted to the mask's latent region M:

.. math:: \\min_δ \\|δ ⊙ M\\|_2^2 + c\\,\\max(0, f(z + δ ⊙ M) + κ)

(Carlini–Wagner form: Adam on δ, c doubled every 20 steps for samples not yet flipped, keeping
the smallest-norm δ that flipped), never the encoder.
The negative is the input plus the decoded change, ``x + D(z + δM) − D(z)`` (so the VAE's own
reconstruction error never touches the image), pasted into the dilated mask; outside it the
output equals the input exactly.

Weights: ``generator/weights/latent/`` (``vae/`` = ``AutoencoderKL.save_pretrained``,
``classifier.safetensors``, ``latent_config.json``), trained on the benchmark by
``python -m generator.latent_boundary --root data/bench64 --out generator/weights/latent``.
For real images, SD's VAE loads the same way (``AutoencoderKL.from_pretrained(dir)``) with a
classifier trained on its latents.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from torch import nn

from generator.masks import dilate, paste_back

LATENT_DIR = Path(__file__).resolve().parent / "weights" / "latent"


@dataclass(frozen=True)
class LatentConfig:
    resolution: int = 64  # square side images are resized to for the VAE
    vae_channels: tuple[int, ...] = (16, 32, 64)  # AutoencoderKL widths; 3 levels → latent side/4
    latent_channels: int = 4  # latent channels (SD uses 4)
    norm_num_groups: int = 16  # GroupNorm groups in the VAE
    clf_widths: tuple[int, ...] = (32, 64)  # latent classifier conv widths (stride 2 each)
    mid_attention: bool = False  # VAE mid-block self-attention (SD has it; 4× slower here on CPU)


def build_vae(cfg: LatentConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1, latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups, sample_size=cfg.resolution,
        mid_block_add_attention=cfg.mid_attention,
    )


class LatentClassifier(nn.Module):
    """Conv-SiLU stages (stride 2) on latents, mean+max pool, linear → tumor logit (B,)."""

    def __init__(self, cfg: LatentConfig):
        super().__init__()
        layers, c = [], cfg.latent_channels
        for w in cfg.clf_widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, w, 3, 2, 1), nn.SiLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * c, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        f = self.features(z)
        return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))[:, 0]


def latent_region(masks: torch.Tensor, latent_side: int) -> torch.Tensor:
    """(B,1,H,W) 0/1 masks → (B,1,h,w): a latent cell is in the region if any pixel overlaps."""
    return (F.adaptive_max_pool2d(masks.float(), latent_side) > 0).float()


def find_boundary(
    classifier: nn.Module,
    z: torch.Tensor,
    region: torch.Tensor,
    *,
    steps: int = 200,
    lr: float = 0.05,
    c: float = 10.0,
    kappa: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest-norm masked δ found that makes ``classifier(z + δ⊙region) < −κ``.

    z: (B,C,h,w) latents; region: (B,1,h,w) 0/1. Returns (δ⊙region, flipped (B,) bool). Samples
    that never flip return the last δ (flipped False). Only δ is optimised; the classifier's
    parameters receive no update.
    """
    z = z.detach()
    init = 1e-3 * torch.randn(z.shape, generator=generator) if generator is not None else 0 * z
    delta = init.clone().requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr)
    best = torch.zeros_like(z)
    best_norm = torch.full((z.shape[0],), float("inf"))
    cs = torch.full((z.shape[0],), float(c))
    for step in range(steps):
        d = delta * region
        logit = classifier(z + d)
        norm = d.flatten(1).pow(2).sum(1)
        with torch.no_grad():
            better = (logit < -kappa) & (norm < best_norm)
            best[better] = d.detach()[better]
            best_norm[better] = norm[better]
        if step > 0 and step % 20 == 0:  # C&W: raise c where the sample has not flipped yet
            cs = torch.where(torch.isfinite(best_norm), cs, 2 * cs)
        loss = (norm + cs * F.relu(logit + kappa)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flipped = torch.isfinite(best_norm)
    with torch.no_grad():
        last = delta.detach() * region
        best[~flipped] = last[~flipped]
    return best, flipped


@torch.no_grad()
def encode(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """(B,1,R,R) in [0,1] → posterior mean latents (B,C,R/2^(n-1),...)."""
    return vae.encode(x * 2 - 1).latent_dist.mean


def decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Latents → images in [0,1] (unclamped; differentiable)."""
    return (vae.decode(z).sample + 1) / 2


def generate_latent_boundary(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    seed: int = 0,
    dilation_px: int = 2,
    path: str | Path | None = None,
    models: tuple[AutoencoderKL, nn.Module, LatentConfig] | None = None,
    steps: int = 200,
    c: float = 10.0,
    kappa: float = 1.0,
) -> list[np.ndarray]:
    """Latent-boundary negatives for grayscale HxW float images in [0,1] and bool HxW masks.

    Returns float32 HxW images equal to the input outside ``dilate(mask, dilation_px)``.
    """
    vae, clf, cfg = models if models is not None else load_latent(path)
    side = cfg.resolution
    xs, regions, holes = [], [], []
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        image = np.asarray(image, np.float32)
        if image.ndim != 2 or image.shape != np.asarray(mask).shape:
            raise ValueError(f"image {i} must be HxW with a mask of the same size, got "
                             f"{image.shape} and {np.asarray(mask).shape}")
        region = dilate(np.asarray(mask, bool), dilation_px)
        t = torch.from_numpy(image)[None, None]
        xs.append(F.interpolate(t, size=(side, side), mode="bilinear", antialias=True))
        h = torch.from_numpy(region.astype(np.float32))[None, None]
        holes.append(F.adaptive_max_pool2d(h, side) if min(region.shape) >= side else
                     F.interpolate(h, size=(side, side), mode="nearest"))
        regions.append(region)
    x = torch.cat(xs)
    z = encode(vae, x)
    lat = latent_region(torch.cat(holes), z.shape[-1])
    delta, _ = find_boundary(clf, z, lat, steps=steps, c=c, kappa=kappa,
                             generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        change = decode(vae, z + delta) - decode(vae, z)  # (B,1,R,R)
    out = []
    for i, image in enumerate(images):
        image = np.asarray(image, np.float32)
        ch = F.interpolate(change[i : i + 1], size=image.shape, mode="bilinear")[0, 0].numpy()
        fill = np.clip(image + ch, 0.0, 1.0).astype(np.float32)
        out.append(paste_back(image, fill, regions[i]))
    return out


def save_latent(out: str | Path, vae: AutoencoderKL, clf: nn.Module, cfg: LatentConfig,
                meta: dict | None = None) -> Path:
    """fp16 weights (VAE via ``save_pretrained``) + ``latent_config.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vae_half = build_vae(cfg)
    vae_half.load_state_dict(vae.state_dict())
    vae_half.to(torch.float16).save_pretrained(out / "vae", safe_serialization=True)
    save_file({k: v.detach().half().contiguous() for k, v in clf.state_dict().items()},
              str(out / "classifier.safetensors"))
    cfg_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    (out / "latent_config.json").write_text(
        json.dumps({"latent": cfg_dict, **(meta or {})}, indent=2, sort_keys=True) + "\n")
    return out


def load_latent(path: str | Path | None = None) -> tuple[AutoencoderKL, nn.Module, LatentConfig]:
    """Frozen float32 VAE, classifier and config (embedded ``generator/weights/latent`` default)."""
    path = Path(path) if path is not None else LATENT_DIR
    cfg_file = path / "latent_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} missing: train with python -m generator.latent_boundary")
    raw = json.loads(cfg_file.read_text())["latent"]
    cfg = LatentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=torch.float32).eval()
    clf = LatentClassifier(cfg)
    clf.load_state_dict({k: v.float() for k, v in load_file(str(path / "classifier.safetensors")).items()})
    return vae.requires_grad_(False), clf.eval().requires_grad_(False), cfg


def main(argv: list[str] | None = None) -> None:
    from generator.latent_train import train_latent

    p = argparse.ArgumentParser(description="Train the small VAE + latent classifier")
    p.add_argument("--root", required=True, help="benchmark root (manifest.jsonl)")
    p.add_argument("--out", default=str(LATENT_DIR))
    p.add_argument("--held-out", default="retina")
    p.add_argument("--vae-steps", type=int, default=300)
    p.add_argument("--clf-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.vae_steps < 1 or a.clf_steps < 1:
        p.error(f"--vae-steps and --clf-steps must be >= 1, got {a.vae_steps} and {a.clf_steps}")
    torch.set_num_threads(1)
    train_latent(a.root, a.out, held_out=a.held_out, vae_steps=a.vae_steps,
                 clf_steps=a.clf_steps, seed=a.seed)


if __name__ == "__main__":
    from shared.cli import run

    run(main)

"""Diagnostic (issue 17, lever "patch size / token grid"): is the embedded ViT's *architecture* what
keeps it blind on unseen sources? A mask-supervised lesion detector per architecture, same data,
augmentation and steps, judged on validation sets of sources it never saw.

    python bench/diag_local_detector.py --arch conv8 &
    (python bench/diag_local_detector.py --arch vit16 && python bench/diag_local_detector.py \
        --arch conv16 && python bench/diag_local_detector.py --arch vit8); wait
    python bench/diag_local_detector.py --report runs/local_detector --md bench/results/local_detector.md

Why this isolates the architecture: the embedded CLIP is at chance on held-out sources (AUROC
0.47–0.56, M2IB pointing 0.00–0.07; ``clip_protocol.md``), but it learns from captions. Here every
trunk gets the strongest signal there is — each token's lesion fraction — so a trunk that stays
blind on unseen anatomy under mask supervision will stay blind under a CLIP loss too, and a trunk
that sees there is worth a CLIP pre-training run.

Trunks (timm ``VisionTransformer``, random init, the embedded tower's width 128, depth 6, 2 heads,
MLP 4; the input as the CLIP gets it: grey replicated to RGB, OpenAI CLIP mean/std, 128²):
- ``vit16``: the embedded tower itself (patch 16 → 8 × 8 tokens);
- ``vit8``: patch 8 → 16 × 16 tokens (token grid alone);
- ``conv8``: a convolutional stem (timm ``ConvStem``: three 3 × 3 stride-2 convs, 32/64/128
  channels, BatchNorm + ReLU after all but the last) → 16 × 16 tokens (locality plus grid);
- ``conv16``: the same stem with a fourth stride-2 conv → 8 × 8 tokens (locality alone).
Head: one linear map per patch token → a logit z_n; target y_n: the token's lesion fraction
(average-pooled mask; 0 on every token of an exact negative). Loss (round 2, see below): binary
cross-entropy with the lesion tokens up-weighted to balance the batch (``pos_weight`` = Σ(1 − y) /
Σ y) plus, for each positive, the spatial cross-entropy −Σ_n q_n log softmax(z)_n with q = y / Σ y
(the lesion as a distribution over tokens: exactly what pointing asks of a map).

Data (training only, no held-out source): the training split of the three training domains
(``data/bench128_n750``: brain MNI template, retina photograph, procedural ultrasound; 450 positives
each) and lesions on every training anatomy source at 1–4× zoom and on procedural textures
(``python -m shared.benchmark --out data/ms128_train --domains breast_us --n-per-domain 1 --size
128 --seed 0 --multi-source 250``: 7 sources × 250); each positive with its exact negative in the
batch; ``finetune.augment`` (the pre-training's augmentation, default ranges) on every pair.
Settings fixed before any run, nothing selected on any split: 1 000 steps × 32 pairs, AdamW 5e-4,
weight decay 0.05, 100 warm-up steps, cosine to 5 %, seed 0, one thread per run (≈ 0.6 s a step with 8² tokens, 2.5 s with 16²).

Evaluation (validation sets only, never a test image): the val split of the three training domains
and of the held-out chest X-ray domain (``data/bench128_n750``), and the external *validation* sets
of the two held-out sources (another head MR, a real ultrasound scan; ``data/external_val_*128``,
seed 1); 150 positives and their exact negatives each. Pointing: the highest-scoring token (score
map bilinearly upsampled to the image) lies in the lesion; mass: the share of the sigmoid map's
mass inside the lesion; AUROC: each image's maximum token logit, positives vs their exact negatives.
Chance pointing = lesion area share.

Round 1 (the commit before this one) was void: a bug of this script fed every image at 1/255 of its
range (``shared.io.read_image`` returns floats in [0, 1]; the script treated them as uint8), so
``vit16`` learned only a position prior (loss at the entropy of a constant map, in-domain AUROC
0.44–0.50). Fixed (``_u8``) before any valid number, together with the loss above (round 1: plain
mean BCE, dominated by the 96 % lesion-free tokens); the rule is unchanged.

Rule, fixed before any number (``local_detector.md`` is written with it): the architecture lever
deserves a CLIP pre-training run iff some trunk ≠ ``vit16`` reaches a held-out mean pointing
(head MR, ultrasound, chest) ≥ ``vit16``'s + 0.15 with its training-domain mean pointing ≥
``vit16``'s − 0.05. If no trunk does, the embedded tower's patching is not what keeps it blind.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from timm.layers import HybridEmbed  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from finetune.augment import AugmentConfig, augment_batch  # noqa: E402
from finetune.data import normalise  # noqa: E402
from finetune.modeling.clip_configs import OPENAI_MEAN, OPENAI_STD  # noqa: E402
from finetune.modeling.vit import conv_stem  # noqa: E402
from finetune.patch_losses import patch_soft_mask, spatial_cross_entropy  # noqa: E402
from finetune.train_loop import lr_lambda  # noqa: E402
from shared.benchmark import load_manifest  # noqa: E402
from shared.io import read_image, read_mask  # noqa: E402

SIZE = 128
TRAIN_SETS = (("data/bench128_n750", ("brain_mri", "retina", "breast_us")),
              ("data/ms128_train", ("ms_mni_brain", "ms_shoulder_mri", "ms_head_ct",
                                    "ms_extremity_xray", "ms_retina", "ms_breast_us",
                                    "ms_procedural")))
EVAL_SETS = {  # name -> (root, domain, split)
    "brain_mri": ("data/bench128_n750", "brain_mri", "val"),
    "retina": ("data/bench128_n750", "retina", "val"),
    "breast_us": ("data/bench128_n750", "breast_us", "val"),
    "head MR (external)": ("data/external_val_brain128", "brain_mri", "test"),
    "ultrasound (external)": ("data/external_val_breast128", "breast_us", "test"),
    "chest_xray (held-out domain)": ("data/bench128_n750", "chest_xray", "val"),
}
TRAINING_ROWS, HELD_OUT_ROWS = list(EVAL_SETS)[:3], list(EVAL_SETS)[3:]
N_EVAL = 150
TRAIN = {"steps": 1000, "pairs": 32, "lr": 5e-4, "weight_decay": 0.05, "warmup": 100,
         "min_lr_ratio": 0.05, "seed": 0}
TRUNK = {"embed_dim": 128, "depth": 6, "num_heads": 2, "mlp_ratio": 4.0}
ARCHS = ("vit16", "vit8", "conv8", "conv16")


class Detector(torch.nn.Module):
    """A ViT trunk and a per-token linear lesion logit; ``forward`` -> (B, G, G) logits."""

    def __init__(self, arch: str):
        super().__init__()
        if arch.startswith("vit"):
            self.vit = VisionTransformer(img_size=SIZE, patch_size=int(arch[3:]), num_classes=0,
                                         global_pool="", **TRUNK)
        else:  # the stem of finetune.modeling.vit's embedded-convstem8 (stride 8)
            stem = conv_stem(int(arch[4:]), TRUNK["embed_dim"])
            self.vit = VisionTransformer(
                img_size=SIZE, patch_size=1, num_classes=0, global_pool="",
                embed_layer=partial(HybridEmbed, backbone=stem),
                **TRUNK)
        self.grid = self.vit.patch_embed.grid_size
        self.head = torch.nn.Linear(TRUNK["embed_dim"], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]
        return self.head(tokens).view(x.shape[0], *self.grid)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, S, S) -> normalised (B, 3, S, S), as the trainer feeds the CLIP."""
    return normalise(images, mean=OPENAI_MEAN, std=OPENAI_STD, channels=3)


def _u8(path) -> np.ndarray:
    """A benchmark image as uint8 (``read_image`` gives floats in [0, 1]; the augmentation and
    :func:`to_input` take uint8, as the trainer's batches are)."""
    return (read_image(path) * 255.0).round().astype(np.uint8)


def load_training() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every training positive, its mask and its exact negative as uint8 / bool tensors."""
    imgs, masks, negs = [], [], []
    for root, domains in TRAIN_SETS:
        for e in load_manifest(Path(root)):
            if e.domain in domains and e.split == "train" and e.label == "tumor":
                imgs.append(_u8(e.image))
                masks.append(read_mask(e.mask))
                negs.append(_u8(e.gt_negative))
    return (torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(masks)).bool(),
            torch.from_numpy(np.stack(negs)))


def detector_loss(logits: torch.Tensor, target: torch.Tensor, n_pos: int) -> torch.Tensor:
    """Balanced BCE + spatial cross-entropy. ``logits``, ``target`` (B, G, G), the first ``n_pos``
    rows positives (Σ y > 0), the rest exact negatives (y = 0).

    BCE: mean_n [−w y_n log σ(z_n) − (1 − y_n) log(1 − σ(z_n))], w = Σ(1 − y) / Σ y over the batch.
    Spatial CE (positives): −Σ_n q_n log softmax(z)_n, q_n = y_n / Σ_m y_m, mean over positives.
    """
    y = target
    w = ((1 - y).sum() / y.sum().clamp_min(1e-6)).detach()
    bce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=w)
    return bce + spatial_cross_entropy(logits[:n_pos].flatten(1), y[:n_pos].flatten(1))


def train(arch: str, log) -> Detector:
    torch.manual_seed(TRAIN["seed"])
    model = Detector(arch)
    imgs, masks, negs = load_training()
    log(f"{arch}: grid {model.grid}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
        f"parameters, {len(imgs)} training pairs")
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"])
    aug = AugmentConfig(enabled=True)
    gen = torch.Generator().manual_seed(TRAIN["seed"])
    t0 = time.time()
    for step in range(TRAIN["steps"]):
        idx = torch.randint(len(imgs), (TRAIN["pairs"],), generator=gen)
        pos, mask, neg = augment_batch(imgs[idx], masks[idx], negs[idx], aug)
        x = to_input(torch.cat([pos, neg]))
        target = patch_soft_mask(mask, model.grid).view(-1, *model.grid)
        target = torch.cat([target, torch.zeros_like(target)])
        loss = detector_loss(model(x), target, n_pos=len(pos))
        for group in opt.param_groups:
            group["lr"] = TRAIN["lr"] * lr_lambda(step, warmup=TRAIN["warmup"], total=TRAIN["steps"],
                                                  min_ratio=TRAIN["min_lr_ratio"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == TRAIN["steps"] - 1:
            log(f"{arch} step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s")
    return model


@torch.no_grad()
def map_metrics(logit: torch.Tensor, masks: torch.Tensor,
                temperature: float = 1.0) -> tuple[list[float], list[float]]:
    """Pointing and mass of token score maps (B, G, G) against pixel masks (B, S, S) bool: the map
    bilinearly upsampled to S²; pointing = its argmax lies in the mask; mass = the share of
    σ(map / temperature)'s sum inside the mask."""
    up = F.interpolate(logit[:, None], size=masks.shape[-2:], mode="bilinear",
                       align_corners=False)[:, 0]
    hits = masks.flatten(1).gather(1, up.flatten(1).argmax(1)[:, None])[:, 0].float()
    prob = (up / temperature).sigmoid()
    return hits.tolist(), ((prob * masks).sum((1, 2)) / prob.sum((1, 2))).tolist()


def evaluate(model: Detector) -> dict[str, dict[str, float]]:
    model.eval()
    out = {}
    for name, (root, domain, split) in EVAL_SETS.items():
        es = [e for e in load_manifest(Path(root))
              if e.domain == domain and e.split == split and e.label == "tumor"][:N_EVAL]
        hits, mass, chance, scores, labels = [], [], [], [], []
        for i in range(0, len(es), 50):
            chunk = es[i:i + 50]
            pos = torch.from_numpy(np.stack([_u8(e.image) for e in chunk]))
            neg = torch.from_numpy(np.stack([_u8(e.gt_negative) for e in chunk]))
            m = torch.from_numpy(np.stack([read_mask(e.mask) for e in chunk])).bool()
            logit = model(to_input(torch.cat([pos, neg])))
            scores += logit.flatten(1).amax(1).tolist()
            labels += [1] * len(chunk) + [0] * len(chunk)
            h, ms = map_metrics(logit[: len(chunk)], m)
            hits, mass = hits + h, mass + ms
            chance += m.float().mean((1, 2)).tolist()
        out[name] = {"pointing": float(np.mean(hits)), "mass": float(np.mean(mass)),
                     "auroc": float(roc_auc_score(labels, scores)),
                     "chance": float(np.mean(chance)), "n": len(es)}
    return out


def report(folder: Path, md: Path) -> None:
    runs = {a: json.loads((folder / f"{a}.json").read_text()) for a in ARCHS
            if (folder / f"{a}.json").is_file()}
    lines = [md.read_text().split("\n### Result")[0].rstrip(), "", "### Result", "",
             "Pointing / mass / AUROC (max token logit, positive vs its exact negative) per set; "
             "chance pointing in the header.", ""]
    first = next(iter(runs.values()))["eval"]
    head = ["trunk", "tokens"] + [f"{n} ({first[n]['chance']:.3f})" for n in EVAL_SETS]
    lines += ["| " + " | ".join(head + ["training mean", "held-out mean"]) + " |",
              "|" + "---|" * (len(head) + 2)]
    for arch, r in runs.items():
        ev = r["eval"]
        cells = [f"{ev[n]['pointing']:.3f} / {ev[n]['mass']:.3f} / {ev[n]['auroc']:.3f}"
                 for n in EVAL_SETS]
        tr = np.mean([ev[n]["pointing"] for n in TRAINING_ROWS])
        ho = np.mean([ev[n]["pointing"] for n in HELD_OUT_ROWS])
        lines.append(f"| {arch} | {r['grid']} | " + " | ".join(cells) + f" | {tr:.3f} | {ho:.3f} |")
    lines += ["", "Wall time per run (training + evaluation, one thread, two runs side by side on the "
              "shared 2-core x86_64 box): " + ", ".join(f"{a} {r['seconds']:.0f} s"
                                                        for a, r in runs.items()), ""]
    md.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=ARCHS)
    p.add_argument("--out", default="runs/local_detector", help="folder for each run's JSON")
    p.add_argument("--steps", type=int, default=TRAIN["steps"], help="(a toy run: fewer)")
    p.add_argument("--report", help="folder of runs: write the table into --md")
    p.add_argument("--md", default="bench/results/local_detector.md")
    args = p.parse_args(argv)
    if args.report:
        report(Path(args.report), Path(args.md))
        return
    torch.set_num_threads(1)
    TRAIN["steps"] = args.steps
    t0 = time.time()
    model = train(args.arch, lambda s: print(s, flush=True))
    ev = evaluate(model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.arch}.json").write_text(json.dumps(
        {"arch": args.arch, "grid": f"{model.grid[0]}²", "train": TRAIN, "eval": ev,
         "seconds": time.time() - t0}, indent=1))
    torch.save(model.state_dict(), out / f"{args.arch}.pt")
    for n, r in ev.items():
        print(f"{n}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()

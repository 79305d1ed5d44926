"""Acceptance table of the generator's DPO stage (issue 4): one row per variant, held-out domain.

    OMP_NUM_THREADS=1 python bench/bench_dpo.py --root data/tiny --work runs/bench_dpo \
        --out bench/results/dpo.md [--reference DIR] [--scorers DIR] [--steps 60]

Steps (each cached under --work, so a rerun resumes):
1. scorers: --scorers, else the embedded ``generator/weights/scorers``, else three small scorers
   trained here (lesion and audit: tumor vs GT-negative/normal; fill: GT negative vs the same
   image with the hole replaced by the smooth push-pull fill). The audit scorer never ranks pairs.
2. reference: --reference DIR, or ``--reference embedded`` (the committed default), else a small
   pixel reference trained with ``generator/train.py --stage reference`` (``SMALL_REFERENCE``).
3. pairs from the reference (``generator.pairs``), train split, held-out domain excluded.
4. every variant: ``generator.dpo.train_dpo`` with the same seeds, steps and pairs; its final
   policy (and the validation-selected step) evaluated on every tumor item of the held-out domain.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F

from generator.build import DEFAULT_CHECKPOINT, load_generator
from generator.dpo import DpoConfig, evaluate, train_dpo
from generator.masks import coarse_fill, dilate
from generator.modeling.scorers import build_scorer
from generator.pairs import PairsConfig, build_pairs, evenly_spaced
from generator.scoring import SCORERS_DIR, load_scorers, prepare, save_scorers
from shared.config import load_config

SMALL_REFERENCE = {  # overrides of generator.train.TrainConfig for the fallback reference
    # eta 0.99: DDIM at η=1 gives NaN at t=999 (√ of a rounding-negative term, cosine schedule)
    "model": {"block_out_channels": [16, 32, 64, 64], "norm_num_groups": 8, "eta": 0.99},
    "optim": {"steps": 500, "batch_size": 8, "lr": 5e-4, "warmup_steps": 50,
              "checkpoint_every": 10000, "log_every": 50, "mixed_precision": "no"},
}


def variants(steps: int) -> dict[str, dict]:
    """Same β, lr, steps and seeds; each guard alone on top of plain DPO, then all together."""
    stage = max(1, steps // 3)
    plain = {"loss": {"beta": 2500.0, "region": "all"}, "pair_kinds": ["sample"]}
    return {
        "plain DPO": plain,
        "+ SDPO": {**plain, "loss": {**plain["loss"], "sdpo": True, "mu": 0.9}},
        # issue 18: a guard with μ nearer 1 (the winner keeps more of its own gradient), and plain
        # DPO first, SDPO from the middle of the run (DPO moves, SDPO then stops the winner's drift)
        "+ SDPO μ 0.99": {**plain, "loss": {**plain["loss"], "sdpo": True, "mu": 0.99}},
        "DPO → SDPO μ 0.99": {**plain, "loss": {**plain["loss"], "sdpo": True, "mu": 0.99,
                                                "sdpo_from_step": steps // 2 + 1}},
        "+ MI regularizer": {**plain, "loss": {**plain["loss"], "mi_weight": 0.1,
                                               "copy_weight": 0.1}},
        "+ GT winners": {**plain, "pair_kinds": ["sample", "gt"]},
        "+ curriculum": {**plain, "curriculum": {"enabled": True, "stages": 3,
                                                  "steps_per_stage": stage}},
        # design §8: a supervised anchor on the winner mattered only at weight ≈ β/4
        "+ winner anchor": {**plain, "loss": {**plain["loss"], "sft_weight": 625.0}},
        "all guards": {
            "loss": {"beta": 2500.0, "region": "hole", "sdpo": True, "mu": 0.9,
                     "mi_weight": 0.1, "copy_weight": 0.1, "sft_weight": 625.0},
            "pair_kinds": ["sample", "gt", "positive"],
            "curriculum": {"enabled": True, "stages": 3, "steps_per_stage": stage},
        },
    }


def _items(root: str, *, domains: set[str] | None, split: str | None, max_items: int = 0):
    from shared.benchmark import load_manifest
    from shared.io import read_image, read_mask

    def gray(x: np.ndarray) -> np.ndarray:
        return (x if x.ndim == 2 else x.mean(axis=2)).astype(np.float32)

    out = []
    for it in load_manifest(root):
        if (domains is not None and it.domain not in domains) or (split and it.split != split):
            continue
        mask = read_mask(it.mask)
        out.append({"image": gray(read_image(it.image)), "mask": mask, "label": it.label,
                    "gt": gray(read_image(it.gt_negative)) if it.gt_negative else None,
                    "region": dilate(mask, 2), "domain": it.domain})
    return out[:max_items] if max_items else out


def train_quick_scorers(root: str, held_out: str, out: Path, *, steps: int = 200) -> Path:
    """Small lesion/audit/fill scorers on the training domains (see module docstring)."""
    from shared.benchmark import load_manifest

    domains = {it.domain for it in load_manifest(root)} - {held_out}
    items = _items(root, domains=domains, split="train")
    imgs, labels, holes = [], [], []
    for it in items:
        imgs.append(it["image"])
        labels.append(1.0 if it["label"] == "tumor" else 0.0)
        holes.append(it["region"] if it["mask"].any() else None)
        if it["gt"] is not None:
            imgs.append(it["gt"])
            labels.append(0.0)
            holes.append(it["region"])
    g = torch.Generator().manual_seed(0)
    models = {}
    for name in ("lesion", "audit"):
        torch.manual_seed({"lesion": 1, "audit": 2}[name])
        model = build_scorer(name)
        # region-conditioned scorers: each positive and its GT twin, both with the lesion region
        keep = [i for i, h in enumerate(holes) if h is not None]
        x = prepare([imgs[i] for i in keep], [holes[i] for i in keep], model.cfg.resolution)
        models[name] = _fit(model, x, torch.tensor([labels[i] for i in keep]), steps, g)
    real = [(im, h) for im, h, y in zip(imgs, holes, labels, strict=True) if y == 0 and h is not None]
    x_real = prepare([im for im, _ in real], [h for _, h in real], 64)
    smooth = coarse_fill(x_real[:, :1], x_real[:, 1:])  # (N,1,R,R) the hole filled smoothly
    x_fake = torch.cat([smooth, x_real[:, 1:]], 1)
    torch.manual_seed(3)
    models["fill"] = _fit(build_scorer("fill"), torch.cat([x_real, x_fake]),
                          torch.cat([torch.zeros(len(x_real)), torch.ones(len(x_fake))]), steps, g)
    save_scorers(out, models, {"trained_by": "bench/bench_dpo.py", "root": root,
                               "held_out": held_out, "steps": steps})
    return out


def _fit(model, x, y, steps, g):
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        k = int(torch.randint(0, 4, (1,), generator=g))
        xb = torch.rot90(x[idx], k, dims=(-2, -1))
        loss = F.binary_cross_entropy_with_logits(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def ensure_reference(args, work: Path) -> Path:
    """--reference DIR, ``embedded`` (the committed default), or "" → train the small one here."""
    if args.reference == "embedded":
        return DEFAULT_CHECKPOINT
    if args.reference:
        return Path(args.reference)
    final = work / "reference" / "final"
    if not (final / "generator_config.json").is_file():
        from generator.train import TrainConfig, run_reference

        over = {**SMALL_REFERENCE, "output_dir": str(work / "reference"),
                "data": {"root": args.root, "held_out_domain": args.held_out}}
        over["optim"] = {**over["optim"], "steps": args.reference_steps}
        cfg = load_config(TrainConfig, over)
        run_reference(cfg, argparse.Namespace(resume=None))
    return final


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="data/tiny")
    p.add_argument("--work", default="runs/bench_dpo")
    p.add_argument("--out", default="bench/results/dpo.md")
    p.add_argument("--reference", default="")
    p.add_argument("--scorers", default="")
    p.add_argument("--held-out", default="retina")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--samples", type=int, default=4, help="K reference samples per positive")
    p.add_argument("--sample-steps", type=int, default=10, help="DDIM steps everywhere")
    p.add_argument("--val-every", type=int, default=0, help="0 = validate at the end only")
    p.add_argument("--val-items", type=int, default=8)
    p.add_argument("--pair-items", type=int, default=0, help="positives for pairs (0 = all)")
    p.add_argument("--test-items", type=int, default=0,
                   help="held-out tumor items evaluated (0 = all; else spread evenly)")
    p.add_argument("--flip-domains", nargs="*", default=[],
                   help="training domains whose test split is also evaluated (the scorers are "
                        "valid there; a second table)")
    p.add_argument("--reference-steps", type=int, default=500, help="fallback reference only")
    p.add_argument("--scorer-steps", type=int, default=200, help="fallback scorers only")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    scorers_dir = Path(args.scorers) if args.scorers else (
        SCORERS_DIR if (SCORERS_DIR / "scorers.json").is_file() else work / "scorers")
    if not (scorers_dir / "scorers.json").is_file():
        train_quick_scorers(args.root, args.held_out, scorers_dir, steps=args.scorer_steps)
    scorers = load_scorers(scorers_dir)
    ref_dir = ensure_reference(args, work)
    pairs_dir = work / "pairs"
    if not (pairs_dir / "pairs.jsonl").is_file():
        build_pairs(PairsConfig(root=args.root, out=str(pairs_dir), held_out_domain=args.held_out,
                                samples_per_positive=args.samples, steps=args.sample_steps,
                                max_items=args.pair_items,
                                checkpoint=str(ref_dir)), load_generator(ref_dir), scorers)
    test_items = [it for it in _items(args.root, domains={args.held_out}, split=None)
                  if it["label"] == "tumor" and it["gt"] is not None]
    if args.test_items:
        test_items = evenly_spaced(test_items, args.test_items)
    flip_items = [it for it in _items(args.root, domains=set(args.flip_domains), split="test")
                  if it["label"] == "tumor" and it["gt"] is not None] if args.flip_domains else []
    if args.test_items and flip_items:
        flip_items = evenly_spaced(flip_items, args.test_items)

    def on_flip_set(gen) -> dict:
        if not flip_items:
            return {}
        m = evaluate(gen, scorers, flip_items, steps=args.sample_steps, seed=777)
        return {f"train_domains/{k}": v for k, v in m.items()}

    ref_gen = load_generator(ref_dir)
    rows = {"reference": {**evaluate(ref_gen, scorers, test_items, steps=args.sample_steps,
                                     seed=777), **on_flip_set(ref_gen),
                          "winner_err_drift": 0.0, "best_step": 0, "seconds": 0.0}}
    for name, over in variants(args.steps).items():
        run_dir = work / name.replace(" ", "_").replace("+", "plus")
        summary_file = run_dir / "summary.json"
        if not summary_file.is_file():
            cfg = load_config(DpoConfig, {
                **over, "output_dir": str(run_dir), "reference": str(ref_dir),
                "pairs": str(pairs_dir), "held_out_domain": args.held_out,
                "optim": {"steps": args.steps, "batch_size": 8, "lr": args.lr,
                          "val_every": args.val_every or args.steps, "seed": 0},
                "val": {"root": args.root, "max_items": args.val_items,
                        "steps": args.sample_steps},
            })
            train_dpo(cfg, scorers=scorers)
        summary = json.loads(summary_file.read_text())
        gen = load_generator(run_dir / "final")
        m = {**evaluate(gen, scorers, test_items, steps=args.sample_steps, seed=777),
             **on_flip_set(gen)}
        rows[name] = {**m, "winner_err_drift": summary["winner_err_drift"],
                      "best_step": summary["best_step"], "seconds": summary["train_seconds"]}
        print(name, json.dumps(rows[name]), flush=True)
    (work / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_table(Path(args.out), rows, args, len(test_items), time.time() - t_start, ref_dir,
                scorers_dir)


def write_table(path: Path, rows: dict, args, n_test: int, seconds: float, ref_dir: Path,
                scorers_dir: Path) -> None:
    ref = rows["reference"]
    lines = [
        "# Generator DPO stage: acceptance table", "",
        f"Command: `OMP_NUM_THREADS=1 python bench/bench_dpo.py {' '.join(sys.argv[1:])}` "
        f"({seconds / 60:.1f} min on the shared CPU).",
        f"Held-out domain `{args.held_out}`: {n_test} tumor items with GT negatives, one sample "
        f"each (seed 777, DDIM {args.sample_steps}). Reference: `{ref_dir}`; scorers: "
        f"`{scorers_dir}` (ranking = lesion + fill + texture; audit never ranks).",
        "Same pairs, seeds, β=2500, lr and step budget for every variant; rows show the final "
        "policy; `val step` is the checkpoint validation kept (0 = the reference stayed best).", "",
        "| variant | PSNR in mask | ΔPSNR | SSIM in mask | texture ratio | flip (ranking) "
        "| flip (audit) | fill prob | winner-err drift | outside diff | val step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['psnr']:.2f} | {r['psnr'] - ref['psnr']:+.2f} | {r['ssim']:.3f} "
            f"| {r['texture_ratio_gt']:.3f} | {100 * r['flip_lesion']:.0f}% "
            f"| {100 * r['flip_audit']:.0f}% | {r['fill_prob']:.3f} "
            f"| {r['winner_err_drift']:+.2e} | {r['outside_max_abs_diff']:.1g} | {r['best_step']} |")
    if "train_domains/psnr" in ref:
        lines += [
            "", f"Training domains {', '.join(args.flip_domains)} (test split, never trained on; "
            "the lesion scorers rank 95-100% of positive/GT-negative pairs correctly there, "
            "while on the held-out domain they score every image as a lesion):", "",
            "| variant | PSNR in mask | ΔPSNR | texture ratio | flip (ranking) | flip (audit) "
            "| fill prob |", "|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            t = {k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("train_domains/")}
            lines.append(
                f"| {name} | {t['psnr']:.2f} | {t['psnr'] - ref['train_domains/psnr']:+.2f} "
                f"| {t['texture_ratio_gt']:.3f} | {100 * t['flip_lesion']:.0f}% "
                f"| {100 * t['flip_audit']:.0f}% | {t['fill_prob']:.3f} |")
    lines += ["", *pareto_lines(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the points no other point beats on both coordinates (higher is better on each),
    sorted by the first. A point equal to another on both is kept."""
    def dominated(a: tuple[float, float]) -> bool:
        return any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in points.values())

    return sorted((n for n, p in points.items() if not dominated(p)), key=lambda n: points[n][0])


def pareto_lines(rows: dict) -> list[str]:
    """The flips-vs-PSNR Pareto front (issue 18) on the set where the lesion scorer is valid (the
    training domains' test split when evaluated, else the held-out domain), and the goal check:
    +10 points of flips over the reference at ≤ 0.5 dB PSNR loss, texture ratio in [0.7, 1.3]."""
    key = "train_domains/" if "train_domains/psnr" in rows["reference"] else ""
    ref = rows["reference"]
    pts = {n: (r[f"{key}flip_lesion"], r[f"{key}psnr"]) for n, r in rows.items()}
    out = [f"Pareto front, lesion-scorer flips vs PSNR in mask ({'training domains' if key else 'held-out domain'}): "
           + " → ".join(f"{n} ({100 * pts[n][0]:.0f}%, {pts[n][1]:.2f} dB)" for n in pareto_front(pts)), ""]
    for n, r in rows.items():
        if n == "reference":
            continue
        dflip = 100 * (r[f"{key}flip_lesion"] - ref[f"{key}flip_lesion"])
        dpsnr = r[f"{key}psnr"] - ref[f"{key}psnr"]
        tex = r[f"{key}texture_ratio_gt"]
        ok = dflip >= 10 and dpsnr >= -0.5 and 0.7 <= tex <= 1.3
        out.append(f"- {n}: flips {dflip:+.0f} points, PSNR {dpsnr:+.2f} dB, texture {tex:.2f} → "
                   f"goal {'met' if ok else 'missed'}")
    return out


if __name__ == "__main__":
    main()

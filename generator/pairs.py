"""Preference pairs for the DPO stage: K reference samples per positive, ranked by the scorer.

``python -m generator.pairs --config configs/generator/dpo_pairs.yaml [key=value ...]`` writes

    OUT/pairs.jsonl             one JSON row per pair (paths relative to OUT)
    OUT/images/<id>_pos.png     the positive; <id>_hole.png the (dilated) hole;
    OUT/images/<id>_s<k>.png    the K reference samples (winner/loser point at two of them)
    OUT/pairs_config.json       the resolved config, the generator's and scorers' hashes

Pair kinds: ``sample`` (best vs worst of the K samples by ``scoring.ranking_score``), ``gt`` (the
benchmark's GT negative as the winner vs the worst sample) and ``positive`` (the best sample vs
the untouched positive, an easy loser). ``difficulty`` = score gap (winner − loser; small = hard).
Deterministic per seed: sample k of item i uses seed ``seed + 1000·i + k``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from generator.masks import dilate
from generator.scoring import Scorers, ranking_score, score_negatives
from shared.config import load_config, to_dict
from shared.io import read_image, read_mask, write_png


def evenly_spaced(items: list, n: int) -> list:
    """At most ``n`` items taken at a fixed stride, so every block of a grouped list is sampled."""
    return items[:: max(1, len(items) // n)][:n]


@dataclass(frozen=True)
class PairsConfig:
    root: str = "data/bench64"  # benchmark root (manifest.jsonl)
    out: str = "runs/generator/dpo_pairs"  # where pairs.jsonl and the PNGs go
    held_out_domain: str = "retina"  # never used for pairs (acceptance is measured on it)
    split: str = "train"  # manifest split the positives come from
    max_items: int = 0  # 0 = every positive of the split; >0 = N spread evenly over them (quick runs)
    samples_per_positive: int = 4  # K reference samples ranked per positive
    steps: int = 10  # DDIM steps per sample (the reference's sampler, η from its config)
    dilation_px: int = 2  # hole = lesion dilated by this radius (the predictor's default)
    seed: int = 0  # base seed; see module docstring
    gt_winner: bool = True  # also emit (GT negative ≻ worst sample) pairs where a GT exists
    positive_loser: bool = True  # also emit (best sample ≻ untouched positive) pairs
    checkpoint: str = ""  # generator checkpoint dir; "" = the embedded default
    scorers: str = ""  # scorers dir; "" = the embedded default
    device: str = "cpu"  # torch device the generator samples on ("cuda" on a GPU host)


@dataclass(frozen=True)
class PairRow:
    id: str  # "<item id>:<kind>"
    kind: str  # "sample" | "gt" | "positive"
    image: str  # positive PNG (relative to the pairs dir)
    hole: str  # hole PNG (dilated lesion, 0/255)
    winner: str  # winner PNG
    loser: str  # loser PNG
    winner_score: float  # ranking score of the winner (higher = better)
    loser_score: float  # ranking score of the loser
    difficulty: float  # winner_score − loser_score (≥ 0; small = hard)


def rank_samples(scores: list[dict[str, float]]) -> tuple[int, int, list[float]]:
    """Indices of the best and worst sample by ``ranking_score`` and all scores.

    Non-finite scores (NaN images, an altered background) become −inf: never a winner, and never
    a loser either while a finite sample exists (a broken image teaches nothing about quality).
    """
    values = [ranking_score(s) for s in scores]
    values = [v if np.isfinite(v) else float("-inf") for v in values]  # NaN fills rank last
    finite = [i for i, v in enumerate(values) if np.isfinite(v)]
    worst = min(finite, key=lambda i: values[i]) if finite else int(np.argmin(values))
    return int(np.argmax(values)), worst, values


def build_pairs(cfg: PairsConfig, generator, scorers: Scorers) -> Path:
    """Sample, score, rank and write the pairs; returns the path of ``pairs.jsonl``."""
    from shared.benchmark import load_manifest

    if cfg.samples_per_positive < 2:
        raise ValueError(f"samples_per_positive must be >= 2, got {cfg.samples_per_positive}")
    out = Path(cfg.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    items = [
        it for it in load_manifest(cfg.root)
        if it.split == cfg.split and it.label == "tumor" and it.domain != cfg.held_out_domain
    ]
    if cfg.max_items > 0:  # evenly spaced: the manifest is grouped by domain
        items = evenly_spaced(items, cfg.max_items)
    if not items:
        raise ValueError(f"{cfg.root}: no tumor items in split {cfg.split!r} outside {cfg.held_out_domain!r}")
    rows: list[PairRow] = []
    for i, item in enumerate(items):
        image = _gray(read_image(item.image))
        mask = read_mask(item.mask)
        region = dilate(mask, cfg.dilation_px)
        results = generator.generate(
            [image], [mask], num_samples=cfg.samples_per_positive, seed=cfg.seed + 1000 * i,
            steps=cfg.steps, dilation_px=cfg.dilation_px,
        )[0]
        samples = [r.image for r in results]
        extra = [image]
        gt = _gray(read_image(item.gt_negative)) if item.gt_negative is not None else None
        if gt is not None:
            extra.append(gt)
        scores = score_negatives(scorers, samples + extra, [image] * (len(samples) + len(extra)),
                                 [region] * (len(samples) + len(extra)))
        best, worst, values = rank_samples(scores[: len(samples)])
        pos_score = ranking_score(scores[len(samples)])
        if not np.isfinite(values[best]):
            raise ValueError(f"{item.id}: no reference sample has a finite score (NaN output?)")
        stem = item.id.replace("/", "_")
        paths = {"pos": f"images/{stem}_pos.png", "hole": f"images/{stem}_hole.png"}
        write_png(out / paths["pos"], image)
        write_png(out / paths["hole"], region)
        for k, s in enumerate(samples):
            paths[f"s{k}"] = f"images/{stem}_s{k}.png"
            write_png(out / paths[f"s{k}"], s)
        common = {"image": paths["pos"], "hole": paths["hole"]}
        if best != worst and values[best] > values[worst]:
            rows.append(PairRow(id=f"{item.id}:sample", kind="sample", winner=paths[f"s{best}"],
                                loser=paths[f"s{worst}"], winner_score=values[best],
                                loser_score=values[worst],
                                difficulty=values[best] - values[worst], **common))
        if cfg.gt_winner and gt is not None:
            paths["gt"] = f"images/{stem}_gt.png"
            write_png(out / paths["gt"], gt)
            gt_score = ranking_score(scores[len(samples) + 1])
            rows.append(PairRow(id=f"{item.id}:gt", kind="gt", winner=paths["gt"],
                                loser=paths[f"s{worst}"], winner_score=gt_score,
                                loser_score=values[worst],
                                difficulty=gt_score - values[worst], **common))
        if cfg.positive_loser:
            rows.append(PairRow(id=f"{item.id}:positive", kind="positive",
                                winner=paths[f"s{best}"], loser=paths["pos"],
                                winner_score=values[best], loser_score=pos_score,
                                difficulty=values[best] - pos_score, **common))
    manifest = out / "pairs.jsonl"
    manifest.write_text("".join(json.dumps(vars(r), sort_keys=True) + "\n" for r in rows))
    meta = {"config": to_dict(cfg), "generator": generator.checkpoint_hash,
            "scorers": scorers.checkpoint_hash, "n_items": len(items), "n_pairs": len(rows)}
    (out / "pairs_config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return manifest


def read_pairs(path: str | Path, *, kinds: tuple[str, ...] | None = None) -> list[PairRow]:
    """Rows of ``pairs.jsonl`` (a file or its directory), optionally only the given kinds."""
    path = Path(path)
    path = path / "pairs.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pairs manifest; build it with python -m generator.pairs")
    rows = [PairRow(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if kinds is None or r.kind in kinds]


def _gray(x: np.ndarray) -> np.ndarray:
    return (x if x.ndim == 2 else x.mean(axis=2)).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    import torch

    from generator.build import load_generator
    from generator.scoring import load_scorers

    p = argparse.ArgumentParser(description="Build DPO preference pairs from the reference model.")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(PairsConfig, args.config, args.overrides)
    torch.set_num_threads(1)
    gen = load_generator(cfg.checkpoint or None, device=cfg.device)
    scorers = load_scorers(cfg.scorers or None)
    print(build_pairs(cfg, gen, scorers))


if __name__ == "__main__":
    from shared.cli import run

    run(main)

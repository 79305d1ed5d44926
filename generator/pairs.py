"""Preference pairs for the DPO stage: K reference samples per positive, ranked by the scorer.

``python -m generator.pairs --config configs/generator/dpo_pairs.yaml [key=value ...]`` writes

    OUT/pairs.jsonl             one JSON row per pair (paths relative to OUT)
    OUT/images/<id>_pos.png     the positive; <id>_hole.png the (dilated) hole;
    OUT/images/<id>_s<k>.png    the K reference samples (winner/loser point at two of them)
    OUT/records/<id>.json       one per finished positive: its pairs and the run's key
    OUT/pairs_config.json       the resolved config, the generator's and scorers' hashes

Pair kinds: ``sample`` (best vs worst of the K samples by ``scoring.ranking_score``), ``gt`` (the
benchmark's GT negative as the winner vs the worst sample) and ``positive`` (the best sample vs
the untouched positive, an easy loser). ``difficulty`` = score gap (winner − loser; small = hard).
Deterministic per seed: sample k of item i uses seed ``seed + 1000·i + k``.

Sharded like ``generator/generate.py`` and through the same helpers (``generator/sharding.py``: ``Shard``, ``run_shard``,
``finish``): worker r of n does positives ``r, r+n, …`` of the list, each positive's seeds depend
only on its position ``i`` in the whole list, and the per-positive records are merged in list
order, so ``pairs.jsonl`` and every PNG are byte-identical to a one-process run. Two ways:

- ``accelerate launch --multi_gpu --num_processes N generator/pairs.py --config ... device=auto``:
  one process per GPU (``device=auto`` = the process's own ``cuda:r``); the main process merges
  after all have finished.
- ``python -m generator.pairs --config ... --shard r --num-shards N`` (independent jobs on a shared
  file system, no process group): each does its slice; whichever finds every record present
  merges. A plain rerun does nothing but the merge (and any positive still missing).

Records carry a key over the config (less ``out`` and ``device``) and the generator's and
scorers' hashes: a rerun skips the positives already done with that key and redoes the others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch generator/pairs.py` runs this as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from generator.masks import dilate
from generator.scoring import Scorers, ranking_score, score_negatives
from generator.sharding import (
    Shard,
    finish,
    join_launch,
    resolve_device,
    run_shard,
)
from shared.config import ConfigError, load_config, to_dict
from shared.io import InputError, read_image, read_mask, write_png, write_text_atomic


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
    # torch device the generator samples on: "cuda" on a one-GPU host; "auto" = the process's own
    # accelerate device (cuda:r under `accelerate launch`, else cpu). Not part of the records' key.
    device: str = "cpu"


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


def pair_items(cfg: PairsConfig) -> list:
    """The positives pairs are built from, in the order that fixes their seeds (see module doc)."""
    from shared.benchmark import load_manifest

    items = [
        it for it in load_manifest(cfg.root)
        if it.split == cfg.split and it.label == "tumor" and it.domain != cfg.held_out_domain
    ]
    if cfg.max_items > 0:  # evenly spaced: the manifest is grouped by domain
        items = evenly_spaced(items, cfg.max_items)
    if not items:
        raise ConfigError(f"{cfg.root}: no tumor items in split {cfg.split!r} outside "
                         f"{cfg.held_out_domain!r}")
    return items


def run_key(cfg: PairsConfig, *, generator_hash: str, scorers_hash: str) -> str:
    """sha256 of what a positive's pairs depend on: the config less ``out`` and ``device`` (where
    they go, what runs them) and the generator's and scorers' checkpoint hashes."""
    what = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "device")}
    blob = json.dumps({"config": what, "generator": generator_hash, "scorers": scorers_hash},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _stem(item) -> str:
    return item.id.replace("/", "_")


def item_pairs(
    cfg: PairsConfig, i: int, item, generator, scorers: Scorers, out: Path
) -> list[PairRow]:
    """Sample, score and rank the K reference samples of positive ``i``; write its PNGs under
    ``out/images``; return its pairs (of the kinds ``sample``, ``gt``, ``positive`` the config
    asks for)."""
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
    stem = _stem(item)
    paths = {"pos": f"images/{stem}_pos.png", "hole": f"images/{stem}_hole.png"}
    write_png(out / paths["pos"], image)
    write_png(out / paths["hole"], region)
    for k, s in enumerate(samples):
        paths[f"s{k}"] = f"images/{stem}_s{k}.png"
        write_png(out / paths[f"s{k}"], s)
    common = {"image": paths["pos"], "hole": paths["hole"]}
    rows = []
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
    return rows


def build_pairs(cfg: PairsConfig, generator, scorers: Scorers, *, shard: Shard | None = None,
                merge: bool = True, show: bool = True) -> Path | None:
    """Build ``shard``'s part of the pairs (all of them by default) and, with ``merge``, write
    ``pairs.jsonl`` once every positive has its record; returns its path, or None while records
    are missing (other shards not finished). Positives already done with this run's key are
    skipped (resume)."""
    if cfg.samples_per_positive < 2:
        raise ConfigError(f"samples_per_positive must be >= 2, got {cfg.samples_per_positive}")
    out = Path(cfg.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    items = pair_items(cfg)
    hashes = {"generator_hash": generator.checkpoint_hash, "scorers_hash": scorers.checkpoint_hash}
    key = run_key(cfg, **hashes)

    def work(i: int, item) -> dict:
        rows = item_pairs(cfg, i, item, generator, scorers, out)
        return {"key": key, "index": i, "id": item.id, "pairs": [vars(r) for r in rows]}

    run_shard(items, shard or Shard(), work, records=out / "records", name=_stem,
              current=lambda rec: rec.get("key") == key, desc="pairs", show=show)
    return merge_pairs(cfg, **hashes) if merge else None


def merge_pairs(cfg: PairsConfig, *, generator_hash: str, scorers_hash: str) -> Path | None:
    """Concatenate the positives' records, in list order, into ``pairs.jsonl`` (and write
    ``pairs_config.json``); None, writing nothing, while a record is missing or of another key."""
    out = Path(cfg.out)
    items = pair_items(cfg)
    key = run_key(cfg, generator_hash=generator_hash, scorers_hash=scorers_hash)
    rows: list[PairRow] = []
    for item in items:
        path = out / "records" / f"{_stem(item)}.json"
        record = json.loads(path.read_text()) if path.is_file() else None
        if record is None or record.get("key") != key:
            return None
        rows.extend(PairRow(**r) for r in record["pairs"])
    manifest = out / "pairs.jsonl"
    write_text_atomic(manifest, "".join(json.dumps(vars(r), sort_keys=True) + "\n" for r in rows))
    meta = {"config": to_dict(cfg), "generator": generator_hash, "scorers": scorers_hash,
            "n_items": len(items), "n_pairs": len(rows)}
    write_text_atomic(out / "pairs_config.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return manifest


def read_pairs(path: str | Path, *, kinds: tuple[str, ...] | None = None) -> list[PairRow]:
    """Rows of ``pairs.jsonl`` (a file or its directory), optionally only the given kinds."""
    path = Path(path)
    path = path / "pairs.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pairs manifest; build it with python -m generator.pairs")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(PairRow(**json.loads(line)))
        except (ValueError, TypeError) as err:  # bad JSON, not an object, missing/unknown fields
            raise InputError(f"{path}, line {n}: not a pairs row ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:160]})") from None
    return [r for r in rows if kinds is None or r.kind in kinds]


def _gray(x: np.ndarray) -> np.ndarray:
    return (x if x.ndim == 2 else x.mean(axis=2)).astype(np.float32)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description="Build DPO preference pairs from the reference model.")
    p.add_argument("--config", type=Path, default=None, help="YAML file for PairsConfig")
    p.add_argument("--shard", type=int, default=0, help="this job's slice, 0 <= shard < num-shards")
    p.add_argument("--num-shards", type=int, default=1,
                   help="independent jobs sharing the positives (not with accelerate launch)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    args = p.parse_args(argv)
    if args.num_shards < 1 or not 0 <= args.shard < args.num_shards:
        p.error(f"--shard {args.shard} --num-shards {args.num_shards}: "
                "need 0 <= shard < num-shards")
    return p, args


def check_pairs_config(cfg: PairsConfig) -> None:
    """One-line errors for values that would otherwise fail deep in the run (or never)."""
    import torch

    if cfg.samples_per_positive < 2:
        raise ConfigError(f"samples_per_positive must be >= 2, got {cfg.samples_per_positive}")
    if cfg.dilation_px < 0 or cfg.max_items < 0:
        raise ConfigError(f"dilation_px and max_items must be >= 0, got {cfg.dilation_px} and "
                          f"{cfg.max_items}")
    if cfg.split not in ("train", "val", "test"):
        raise ConfigError(f"split={cfg.split!r}; expected train | val | test")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device} but this machine has no CUDA device (use cpu)")


def main(argv: list[str] | None = None) -> int:
    """Entry point: every launched process (or ``--shard`` job) builds its slice; the main
    process merges once all have finished (with ``--shard``, whichever job completes the set)."""
    import torch

    from generator.build import load_generator
    from generator.scoring import load_scorers

    p, args = parse_args(argv)
    cfg = load_config(PairsConfig, args.config, args.overrides)
    check_pairs_config(cfg)  # mistakes end here, before a model loads
    torch.set_num_threads(1)
    state = join_launch()
    if state.num_processes > 1 and args.num_shards > 1:
        p.error("--shard/--num-shards split the work between independent jobs; under accelerate "
                f"launch the {state.num_processes} processes already share it")
    if state.num_processes > 1 and cfg.device == "cuda":
        raise ConfigError(f"device=cuda would put all {state.num_processes} launched processes on "
                          "one GPU; use device=auto (each process on its own cuda:r)")
    shard = Shard(args.shard, args.num_shards) if args.num_shards > 1 else Shard.of(state)
    gen = load_generator(cfg.checkpoint or None, device=resolve_device(cfg.device, state))
    scorers = load_scorers(cfg.scorers or None)
    build_pairs(cfg, gen, scorers, shard=shard, merge=False, show=state.is_local_main_process)

    def merge() -> None:
        path = merge_pairs(cfg, generator_hash=gen.checkpoint_hash,
                           scorers_hash=scorers.checkpoint_hash)
        print(path if path is not None else
              f"{cfg.out}: shard {shard.index}/{shard.count} done; pairs.jsonl is written by the "
              "job that completes the set (or by a rerun without --shard)")

    finish(state, merge)
    return 0


if __name__ == "__main__":
    from shared.cli import run

    run(main, hard_exit=True, resumes=True)  # design §7: avoids the occasional gloo teardown abort

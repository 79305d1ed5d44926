"""Batch generation of negatives for a dataset, sharded over processes and resumable.

``accelerate launch generator/generate.py --data DIR --out OUT [--generator CKPT [--lora DIR]] ...``

``--data`` is a lesion-injection benchmark (``manifest.jsonl``; tumor items only, GT negatives
scored) or a MedCLIP-SAMv2 folder (``DIR/<task>/<split>_images|<split>_masks``). Process ``r`` of
``n`` takes items ``r, r+n, …`` of the sorted list; every item is generated one image at a time
(results never depend on the sharding). The protocol (``generator/sharding.py``: ``Shard``,
``run_shard``, ``finish``) is shared with ``generator/pairs.py``, which shards DPO pair generation
the same way. Writes
- ``OUT/negatives/<id>_s<seed>.png`` (8-bit), one per sample;
- ``OUT/records/<id>.json`` per finished item (written last, atomically: its presence means done,
  so a rerun skips it);
- after all processes finish: ``OUT/manifest.jsonl`` (sorted by id; scores and provenance) and
  ``OUT/dpo_pairs.csv`` (``filename,filename_neg,Caption,Caption_neg``; positives relative to
  ``--data``, negatives relative to ``OUT``; the best-ranked sample of each item).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `accelerate launch generator/generate.py` runs this as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from generator.kriging import PRIORS
from generator.masks import dilate
from generator.predictor import NoContextError
from generator.scoring import SCORERS_DIR, load_scorers, ranking_score, score_negatives
from generator.sharding import Shard, finish, join_launch, resolve_device, run_shard
from shared.config import ConfigError, check_out_dir
from shared.datasets import SPLITS, DatasetError, DpoRow, list_pairs, list_tasks, write_dpo_csv
from shared.io import InputError, read_image, read_mask, write_json_atomic, write_png
from shared.negatives_client import negative_params
from shared.provenance import content_key, sha256_bytes

DEFAULT_CAPTION_NEG = "A medical image showing healthy tissue with no signs of pathology."

@dataclass(frozen=True)
class Item:
    id: str  # unique, file-system safe
    image: Path
    mask: Path
    gt_negative: Path | None
    caption: str
    caption_neg: str


def item_names(files: list[str]) -> list[str]:
    """File names → item-id parts, one per file and all distinct: the stem with spaces as
    underscores (``"benign (26).png"`` → ``benign_(26)``) where that is unique in the folder; a
    file whose stem collides with another's (``x y.png`` / ``x_y.png``, ``a.png`` / ``a.jpg``)
    keeps its whole name plus a short hash of it, so no negative overwrites another."""
    stems = [Path(f).stem.replace(" ", "_") for f in files]
    counts = Counter(stems)
    return [stem if counts[stem] == 1
            else f"{Path(f).name.replace(' ', '_')}-{hashlib.sha1(f.encode()).hexdigest()[:8]}"
            for f, stem in zip(files, stems, strict=True)]


def list_items(data: Path, *, split: str | None, domains: list[str] | None) -> list[Item]:
    """Tumor items of a benchmark (manifest.jsonl) or a MedCLIP-SAMv2 folder, sorted by id."""
    items, known = [], set()
    if (data / "manifest.jsonl").is_file():
        from shared.benchmark import load_manifest

        for it in load_manifest(data):
            known.add(it.domain)
            if it.label != "tumor" or (split and it.split != split):
                continue
            if domains and it.domain not in domains:
                continue
            items.append(Item(it.id, it.image, it.mask, it.gt_negative, it.caption, it.caption_neg))
    else:
        # --data may name one task folder (its <split>_images/ directly under it), as the evaluator
        # accepts; then it is the only task of its parent
        one_task = any((data / f"{s}_images").is_dir() for s in SPLITS)
        for task in [data.name] if one_task else list_tasks(data):
            known.add(task)
            if domains and task not in domains:
                continue
            for s in [split] if split else list(SPLITS):
                root = data.parent if one_task else data
                if not (root / task / f"{s}_images").is_dir() and not (root / task / f"{s}_masks").is_dir():
                    continue  # this task has no such split; a half-present split is an error
                pairs = list_pairs(root, task, s)  # DatasetError names an image without its mask
                for p, name in zip(pairs, item_names([p.name for p in pairs]), strict=True):
                    items.append(Item(f"{task}_{s}_{name}", p.image_path, p.mask_path, None,
                                      f"A medical image of {task} showing a lesion.",
                                      DEFAULT_CAPTION_NEG))
    unknown = sorted(set(domains or ()) - known)
    if unknown:  # a misspelt one was dropped silently
        raise DatasetError(f"--domains {unknown}: not domains/tasks of {data} (it has {sorted(known)})")
    if not items:
        raise DatasetError(f"{data}: no tumor items found (split={split}, domains={domains})")
    return sorted(items, key=lambda it: it.id)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--generator", default=None, help="checkpoint dir or hub id (default: embedded)")
    p.add_argument("--lora", default=None,
                   help="diffusers LoRA dir on top of an sd-inpaint --generator (its hash joins the ids)")
    p.add_argument("--texture-match", action=argparse.BooleanOptionalAction, default=None,
                   help="pixel generator: classical fill (--coarse-prior) + ring-matched learned texture "
                        "(NegativeGenerator.texture_match; default: as the checkpoint says)")
    p.add_argument("--coarse-prior", choices=PRIORS, default=None,
                   help="pixel generator: the classical fill its native compositions build on "
                        "(NegativeGenerator.coarse_prior; default: as the checkpoint says)")
    p.add_argument("--scorers", default="embedded", help="scorer dir, 'embedded', or 'none'")
    p.add_argument("--split", default=None, choices=SPLITS, help="only this split (default: all)")
    p.add_argument("--domains", nargs="*", default=None, help="only these domains/tasks")
    p.add_argument("--num-samples", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--strength", type=float, default=1.0)
    p.add_argument("--dilation-px", type=int, default=2)
    p.add_argument("--method", default="diffusion")
    p.add_argument("--see-through-px", type=float, default=0.0,
                   help="projection radiographs: keep the input's high-pass (σ px) in the hole")
    p.add_argument("--limit", type=int, default=0, help="stop after this many items (0 = all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", default="cpu",
                   help="torch device; 'auto' = this process's accelerate device (cuda:N per rank)")
    return p.parse_args(argv)


EMPTY_MASK = "empty mask: no lesion to remove"


def _finite(x):
    """``x`` with every non-finite float replaced by None (strict JSON has no NaN; a score that
    cannot be computed — e.g. the ring texture ratio of a lesion on a flat background — is null)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def process_item(item: Item, args, generator, scorers, out: Path) -> dict:
    try:
        image, mask = read_image(item.image), read_mask(item.mask)
        if not mask.any():  # a lesion-free slice: no negative to make, no DPO pair to write
            return {"id": item.id, "image": str(item.image), "mask": str(item.mask),
                    "skipped": EMPTY_MASK}
        params = negative_params(steps=args.steps, strength=args.strength,
                                 dilation_px=args.dilation_px, method=args.method,
                                 see_through_px=args.see_through_px)
        results = generator.generate([image], [mask], num_samples=args.num_samples,
                                     seed=args.seed, **params)[0]
    except NoContextError as err:  # a mask over the whole image: skipped like an empty one
        return {"id": item.id, "image": str(item.image), "mask": str(item.mask),
                "skipped": str(err).removeprefix("image 0: ")}
    except InputError as err:  # name the file: the generator only knows "image 0"
        if str(err).startswith((str(item.image), str(item.mask))):  # a reader named it already
            raise
        raise type(err)(f"{item.image} (mask {item.mask}): {err}") from None
    region = dilate(mask, args.dilation_px)
    gt = read_image(item.gt_negative) if item.gt_negative is not None else None
    scores = score_negatives(scorers, [r.image for r in results], [image] * len(results),
                             [region] * len(results), [gt] * len(results))
    image_sha = sha256_bytes(Path(item.image).read_bytes())
    mask_sha = sha256_bytes(Path(item.mask).read_bytes())
    negatives = []
    for r, s in zip(results, scores, strict=True):
        rel = Path("negatives") / f"{item.id}_s{r.seed}.png"
        write_png(out / rel, r.image)
        key = content_key(image_sha=image_sha, mask_sha=mask_sha, params=params, seed=r.seed,
                          checkpoint=generator.checkpoint_hash)
        negatives.append({"path": str(rel), "seed": r.seed, "scores": s, "content_key": key})
    ranked = [ranking_score(s) if scorers is not None else 0.0 for s in scores]
    return _finite({
        "id": item.id, "image": str(item.image), "mask": str(item.mask),
        # relative to --data now, by path arithmetic (not resolve(): a symlinked image stays
        # under --data; and a rerun from another working directory reads the same)
        "filename": os.path.relpath(item.image, args.data),
        "gt_negative": None if item.gt_negative is None else str(item.gt_negative),
        "caption": item.caption, "caption_neg": item.caption_neg,
        "negatives": negatives, "best": int(np.argmax(ranked)), "params": params,
        "image_sha256": image_sha, "mask_sha256": mask_sha,
        "checkpoint": generator.checkpoint_hash,
        "scorers": scorers.checkpoint_hash if scorers is not None else None,
    })


def finalize(items: list[Item], data: Path, out: Path) -> int:
    """Merge per-item records into manifest.jsonl and dpo_pairs.csv (main process only); items
    skipped (empty masks, masks leaving no tissue to fill from) are counted in a warning line
    per reason, not written. Returns the number written."""
    rows, lines, skipped = [], [], []
    for it in items:
        rec_path = out / "records" / f"{it.id}.json"
        if not rec_path.is_file():
            continue
        rec = json.loads(rec_path.read_text())
        if rec.get("skipped"):
            skipped.append(rec)
            continue
        lines.append(json.dumps(_finite(rec), sort_keys=True, allow_nan=False))
        best = rec["negatives"][rec["best"]]
        pos = rec.get("filename") or os.path.relpath(rec["image"], data)
        rows.append(DpoRow(pos, best["path"], rec["caption"], rec["caption_neg"]))
    (out / "manifest.jsonl").write_text("".join(line + "\n" for line in lines))
    write_dpo_csv(out / "dpo_pairs.csv", rows)
    for reason in dict.fromkeys(rec["skipped"] for rec in skipped):  # one line per reason
        these = [rec for rec in skipped if rec["skipped"] == reason]
        print(f"warning: {len(these)} item(s) skipped, e.g. {these[0]['image']}: {reason}",
              file=sys.stderr)
    return len(lines)


def check_args(args: argparse.Namespace) -> None:
    """One-line ConfigErrors naming the option, before any model loads (they used to surface per
    item, blamed on an image file, after the model had loaded — or never, on a resumed --out)."""
    from generator.predictor import METHODS
    from shared.cli import check_torch_device

    at_least = {"--threads": (args.threads, 1), "--num-samples": (args.num_samples, 1),
                "--steps": (args.steps, 1), "--limit": (args.limit, 0),
                "--dilation-px": (args.dilation_px, 0), "--seed": (args.seed, 0)}
    for option, (value, low) in at_least.items():
        if value < low:
            raise ConfigError(f"{option} must be >= {low}, got {value}")
    if not 0 < args.strength <= 1:  # also NaN
        raise ConfigError(f"--strength must lie in (0, 1], got {args.strength}")
    if not 0 <= args.see_through_px < math.inf:
        raise ConfigError(f"--see-through-px must be >= 0, got {args.see_through_px}")
    if args.method not in METHODS:
        raise ConfigError(f"--method {args.method!r}; expected one of {', '.join(METHODS)}")
    if args.domains == []:
        raise ConfigError("--domains names no domain (omit it for all)")
    if args.device != "auto":
        check_torch_device(args.device, "--device")
    check_out_dir("--out", args.out)
    if Path(args.out).resolve() == Path(args.data).resolve():
        raise ConfigError(f"--out {args.out} is the --data folder: its manifest.jsonl and "
                          "negatives would mix with the data; write them elsewhere")


def check_resume(out: Path, settings: dict) -> None:
    """A rerun into a finished --out resumes it, so its settings must be the ones the folder was
    made with (a changed --steps used to keep the old negatives, silently)."""
    path = out / "generate_config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            said = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ConfigError(f"--out {out} holds negatives made with other settings ({said}); "
                              "use a new --out, or the same settings to resume")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, settings)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    torch.set_num_threads(args.threads)
    from generator.build import load_generator

    state = join_launch()
    out: Path = args.out
    items = list_items(args.data, split=args.split, domains=args.domains)
    if args.limit:
        items = items[: args.limit]
    check_resume(out, {
        "params": negative_params(steps=args.steps, strength=args.strength,
                                  dilation_px=args.dilation_px, method=args.method,
                                  see_through_px=args.see_through_px),
        "num_samples": args.num_samples, "seed": args.seed, "generator": args.generator,
        "lora": args.lora, "texture_match": args.texture_match, "scorers": args.scorers,
        # only when given: folders made before the option existed resume as they are
        **({"coarse_prior": args.coarse_prior} if args.coarse_prior else {})})
    (out / "negatives").mkdir(parents=True, exist_ok=True)
    generator = load_generator(args.generator, lora=args.lora, texture_match=args.texture_match,
                               coarse_prior=args.coarse_prior,
                               device=resolve_device(args.device, state))
    scorers = None
    if args.scorers == "embedded" and not (SCORERS_DIR / "lesion.safetensors").is_file():
        print(f"warning: no embedded scorers in {SCORERS_DIR}; negatives are not ranked",
              file=sys.stderr)
    elif args.scorers != "none":
        scorers = load_scorers(None if args.scorers == "embedded" else args.scorers)
    run_shard(items, Shard.of(state),
              lambda _i, it: process_item(it, args, generator, scorers, out),
              records=out / "records", name=lambda it: it.id, desc="negatives",
              # a record of another checkpoint (e.g. the embedded default's composition changed
              # between versions: its hash did) is redone, not merged with this one's
              current=lambda rec: bool(rec.get("skipped"))
              or rec.get("checkpoint") == generator.checkpoint_hash,
              show=state.is_local_main_process)

    def merge() -> None:
        n = finalize(items, args.data, out)
        print(f"{n} items in {out / 'manifest.jsonl'}")

    finish(state, merge)
    return 0


if __name__ == "__main__":
    from shared.cli import run

    run(main, hard_exit=True, resumes=True)  # design §7: avoids the occasional gloo teardown abort

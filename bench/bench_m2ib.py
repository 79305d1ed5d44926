"""Benchmark: batched M2IB vs the per-image loop in MedCLIP-SAMv2's manner.

Same model, images, prompts and seeds. Baselines:
- ``loop (upstream)``: per image, every step re-runs the full vision tower on S copies with the
  bottleneck as a hook and re-encodes S copies of the prompt; weights stay trainable, so
  backward also computes all weight gradients (what MedCLIP-SAMv2's IBAInterpreter does);
- ``loop (frozen)``: the same loop with weights frozen (isolates our prefix caching + batching);
- ``batched``: :func:`finetune.evaluation.m2ib.m2ib_saliency` (prefix and text once, suffix only,
  all images x samples in one optimisation).
Maps are compared by max |difference| (they must agree to 1e-4).

    python bench/bench_m2ib.py --model embedded --n-images 16 --threads 1
    python bench/bench_m2ib.py --model biomedclip-arch --n-images 2 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.evaluation.clip_bundle import ClipBundle, bundle_from_open_clip  # noqa: E402
from finetune.evaluation.loading import load_clip_bundle  # noqa: E402
from finetune.evaluation.m2ib import PRESETS, m2ib_saliency, m2ib_saliency_loop  # noqa: E402
from finetune.evaluation.prompts import load_prompts  # noqa: E402
from shared.benchmark import DOMAINS, build_benchmark, load_manifest  # noqa: E402
from shared.io import read_image  # noqa: E402

PROMPT_DIR = Path(__file__).resolve().parents[1] / "configs" / "prompts"


def biomedclip_architecture(workdir: Path) -> ClipBundle:
    """Full-size BiomedCLIP architecture (ViT-B/16 224², PubMedBERT-size text), random init, offline."""
    from finetune.build import build_clip
    from finetune.modeling.clip_configs import (
        BIOMEDCLIP_BERT_CONFIG,
        BIOMEDCLIP_MODEL_CFG,
        BIOMEDCLIP_PREPROCESS_CFG,
        embedded_vocab,
        write_text_config,
        write_wordpiece_tokenizer,
    )

    src = workdir / "biomedclip"
    write_text_config(src / "text_config", BIOMEDCLIP_BERT_CONFIG)
    write_wordpiece_tokenizer(src, embedded_vocab())
    (src / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": BIOMEDCLIP_MODEL_CFG, "preprocess_cfg": BIOMEDCLIP_PREPROCESS_CFG}))
    torch.manual_seed(0)
    built = build_clip(f"local-dir:{src}")
    return bundle_from_open_clip(built.model.eval(), built.tokenizer)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="embedded", help="embedded | biomedclip-arch | any build_clip source")
    p.add_argument("--preset", default=None, help="M2IB preset (default: embedded for the embedded model, else breast)")
    p.add_argument("--n-images", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="override the preset's 10 Adam steps")
    p.add_argument("--skip-upstream", action="store_true", help="skip the (slow) upstream-grad loop")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_m2ib_"))
    bundle = biomedclip_architecture(work) if args.model == "biomedclip-arch" else load_clip_bundle(args.model)
    preset = args.preset or ("embedded" if args.model == "embedded" else "breast")
    cfg = dataclasses.replace(PRESETS[preset], batch_size=args.batch_size)
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    n_dom = -(-args.n_images // len(DOMAINS))
    items = [it for it in load_manifest(build_benchmark(work / "bench", domains=DOMAINS, n_per_domain=n_dom,
                                                        size=224, seed=0)) if it.label == "tumor"]
    items = items[: args.n_images]
    images = [read_image(it.image) for it in items]
    prompts = [load_prompts(PROMPT_DIR / f"{it.domain}.txt").for_image(it.image.name) for it in items]

    timings, maps = {}, {}
    runs = [("batched", lambda: m2ib_saliency(bundle, images, prompts, cfg, seed=0)),
            ("batched, full last block",  # what the class-token shortcut saves (same maths)
             lambda: m2ib_saliency(bundle, images, prompts, cfg, seed=0,
                                   class_token_shortcut=False)),
            ("loop (frozen)", lambda: m2ib_saliency_loop(bundle, images, prompts, cfg, seed=0, param_grads=False))]
    if not args.skip_upstream:
        runs.append(("loop (upstream)", lambda: m2ib_saliency_loop(bundle, images, prompts, cfg, seed=0)))
    for name, fn in runs:
        t0 = time.perf_counter()
        maps[name] = fn()
        timings[name] = time.perf_counter() - t0
        print(f"{name}: {timings[name]:.2f} s ({timings[name] / len(images):.3f} s/image)", flush=True)
    diffs = {name: float(max(np.abs(a - b).max() for a, b in zip(maps["batched"], m, strict=True)))
             for name, m in maps.items() if name != "batched"}
    result = {
        "model": args.model, "preset": preset, "config": dataclasses.asdict(cfg), "n_images": len(images),
        "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "seconds": timings, "speedup_vs": {k: timings[k] / timings["batched"] for k in timings if k != "batched"},
        "max_abs_map_diff_vs_batched": diffs,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

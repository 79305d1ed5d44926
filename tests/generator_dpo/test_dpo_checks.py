"""Config mistakes of ``generator.dpo`` end in one ``ConfigError`` naming the field and the bad
value, before the reference model, the pairs or the validation images load (no training here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from generator import dpo
from shared.config import ConfigError, load_config
from tests.generator.test_train_checks import DOMAINS, REPO, fake_bench


@pytest.fixture
def bench(tmp_path):
    return fake_bench(tmp_path / "bench")


def _args(tmp_path, bench, *overrides):
    return [f"output_dir={tmp_path / 'dpo'}", f"pairs={tmp_path / 'pairs'}", f"val.root={bench}",
            *overrides]


@pytest.mark.parametrize("override, says", [
    ("held_out_domain=retna", "held_out_domain='retna' is not a domain of"),  # was: validated on it
    ("optim.steps=-3", "optim.steps must be >= 1, got -3"),  # was: rc 0, untrained export
    ("optim.batch_size=0", "optim.batch_size must be >= 1, got 0"),  # was: traceback
    ("loss.region=hol", "loss.region='hol'; expected hole | all"),  # was: silently "all"
    ("val.max_items=-1", "val.max_items must be >= 0"),  # was: validated on 1 item
    ("loss.beta=-5", "loss.beta must be > 0, got -5.0"),  # was: raised after the model loaded
    ("loss.beta=0", "loss.beta must be > 0, got 0.0"),
    ("pair_kinds=[samples]", "pair_kinds=['samples']; choose from sample | gt | positive"),
    ("optim.val_every=0", "optim.val_every must be >= 1, got 0"),
    ("optim.log_every=0", "optim.log_every must be >= 1, got 0"),
    ("curriculum.stages=0", "curriculum.stages must be >= 1, got 0"),
    ("val.split=vall", "val.split='vall'; expected train | val | test"),
    ("val.steps=0", "val.steps must be >= 1, got 0"),  # was: "steps must be ..." (which steps?)
    ("loss.mu=2", "loss.mu must lie in [0, 1], got 2.0"),
    ("optim.mixed_precision=fp32", "optim.mixed_precision='fp32'; expected no | bf16 | fp16"),
    # was: error: [Errno 2] No such file or directory: '/nope/generator_config.json'
    ("reference=/nope", "reference=/nope: no such checkpoint folder"),
])
def test_dpo_config_mistakes_end_before_anything_loads(override, says, tmp_path, bench):
    with pytest.raises(ConfigError, match=re.escape(says)):
        dpo.main(_args(tmp_path, bench, override))
    assert not (tmp_path / "dpo").exists()


def test_dpo_names_the_manifest_domains_and_pairs_without_the_asked_kinds(tmp_path, bench):
    with pytest.raises(ConfigError, match=re.escape(str(list(DOMAINS)))):
        dpo.main(_args(tmp_path, bench, "held_out_domain=retna"))
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    row = {"id": "a:sample", "kind": "sample", "image": "i.png", "hole": "h.png",
           "winner": "w.png", "loser": "l.png", "winner_score": 1.0, "loser_score": 0.5,
           "difficulty": 0.5}
    (pairs / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    # was: found after the reference model had loaded
    with pytest.raises(ConfigError, match=re.escape("pair_kinds=['gt'] (it has ['sample'])")):
        dpo.main(_args(tmp_path, bench, "pair_kinds=[gt]"))
    with pytest.raises(ConfigError, match="--resume latest: no complete checkpoint under"):
        dpo.main(["--resume", "latest", *_args(tmp_path, bench, "pair_kinds=[sample]")])
    assert not (tmp_path / "dpo").exists()


def test_dpo_check_accepts_every_committed_config(monkeypatch, bench):
    monkeypatch.chdir(REPO)
    for name in ("dpo.yaml", "dpo_plain.yaml"):
        path = Path(REPO / "configs" / "generator" / name)
        dpo.check_dpo_config(load_config(dpo.DpoConfig, path))
        dpo.check_dpo_config(load_config(dpo.DpoConfig, path, [f"val.root={bench}"]))
    dpo.check_dpo_config(load_config(dpo.DpoConfig, None, [
        f"val.root={bench}", "val.max_items=0", "held_out_domain=", "optim.checkpoint_every=0",
        "reference=generator/weights/pixel_reference", "loss.region=all"]))


def test_dpo_check_accepts_the_sd_config_once_its_reference_lora_exists(monkeypatch, tmp_path, bench):
    monkeypatch.chdir(REPO)
    path = REPO / "configs" / "gpu" / "sd_inpaint_lora_dpo.yaml"
    # scripts/train_then_serve.sh trains the reference LoRA (runs/gpu/sd_reference/final) first
    if not (REPO / "runs" / "gpu" / "sd_reference" / "final").is_dir():
        with pytest.raises(ConfigError, match="reference=runs/gpu/sd_reference/final: no such LoRA"):
            dpo.check_dpo_config(load_config(dpo.DpoConfig, path, [f"output_dir={tmp_path / 'o'}"]))
    (tmp_path / "lora").mkdir()
    dpo.check_dpo_config(load_config(dpo.DpoConfig, path, [
        f"reference={tmp_path / 'lora'}", f"val.root={bench}", f"output_dir={tmp_path / 'o'}"]))

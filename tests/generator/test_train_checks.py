"""Config mistakes of ``generator.train`` and ``generator.train_scorers`` end in one ``ConfigError``
naming the field and the bad value, before any data or model loads (no training here: the
benchmark is a manifest whose images do not exist, so nothing could train on it anyway)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from generator import train, train_scorers
from shared.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
DOMAINS = ("brain_mri", "breast_us", "chest_xray", "retina")


def fake_bench(root: Path, domains: tuple[str, ...] = DOMAINS) -> Path:
    """A benchmark manifest (tumor + normal items in train/val/test per domain) without images:
    the checks read the manifest only."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for d in domains:
        for split in ("train", "val", "test"):
            for label in ("tumor", "normal"):
                name = f"{d}_{split}_{label}"
                rows.append({"id": name, "domain": d, "split": split, "label": label,
                             "image": f"images/{name}.png", "mask": f"masks/{name}.png",
                             "gt_negative": f"images/{name}_neg.png" if label == "tumor" else None,
                             "caption": "", "caption_neg": "", "lesion": None})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture
def bench(tmp_path):
    return fake_bench(tmp_path / "bench")


# -- generator.train ------------------------------------------------------------------------------
def _train_args(tmp_path, bench, *overrides):
    return ["--stage", "reference", f"output_dir={tmp_path / 'run'}", f"data.root={bench}",
            *overrides]


@pytest.mark.parametrize("override, says", [
    # were: silently trained on the held-out domain / on retina only
    ("data.held_out_domain=chest", "data.held_out_domain='chest' is not a domain of"),
    ("data.train_domains=[brain,retina]", "data.train_domains='brain' is not a domain of"),
    # were: rc 0 with an untrained export
    ("optim.steps=-2", "optim.steps must be >= 1, got -2"),
    ("optim.steps=0", "optim.steps must be >= 1, got 0"),
    # were: tracebacks
    ("optim.batch_size=0", "optim.batch_size must be >= 1, got 0"),
    ("optim.batch_size=-1", "optim.batch_size must be >= 1, got -1"),
    # were: silently accepted
    ("optim.lr_schedule=cosin", "optim.lr_schedule='cosin'; expected cosine | constant"),
    ("data.window_p=1.5", "data.window_p must lie in [0, 1], got 1.5"),
    ("optim.ema_decay=1.5", "optim.ema_decay must lie in [0, 1], got 1.5"),
    ("data.split=tran", "data.split='tran'; expected train | val | test"),
    # were: OverflowError / ZeroDivisionError / ValueError in the data pipeline
    ("data.windows.zoom=[0,4]", "data.windows.zoom must be [lo, hi] with 0.0 < lo <= hi"),
    ("data.windows.size=0", "data.windows.size must be >= 1, got 0"),
    ("data.windows.context=[-1,2]", "data.windows.context must be [lo, hi] with 1.0 <= lo <= hi"),
    ("data.windows.sources=[nope]", "data.windows.sources=['nope']: unknown anatomy sources"),
    ("data.windows.sources=[chest_xray]", "data.windows.sources=['chest_xray']: ['chest_xray'] are "
                                          "held-out sources"),
    ("data.aux_healthy=[legg]", "data.aux_healthy: unknown auxiliary anatomy ['legg']"),
    ("optim.mixed_precision=fp32", "optim.mixed_precision='fp32'; expected no | bf16 | fp16"),
    ("model.backend=pix", "model.backend='pix'; expected pixel | sd-inpaint"),
    ("optim.num_threads=0", "optim.num_threads must be >= 1, got 0"),
    ("optim.lr=-1", "optim.lr must be > 0, got -1.0"),
    # were: ZeroDivisionError mid-run, after the data and model had loaded
    ("optim.log_every=0", "optim.log_every must be >= 1, got 0"),
    ("optim.gradient_accumulation_steps=0", "optim.gradient_accumulation_steps must be >= 1, got 0"),
    ("optim.checkpoint_every=-1", "optim.checkpoint_every must be >= 0, got -1"),
    # was: error: [Errno 2] No such file or directory: '/nope/generator_config.json'
    ("init_from=/nope", "init_from=/nope: no such checkpoint folder"),
    ("model.norm_num_groups=7", "model.norm_num_groups=7 must divide every width"),
    ("model.prediction_type=eps", "model.prediction_type='eps'; expected epsilon"),
    ("inference.coarse_prior=krig", "inference.coarse_prior='krig'; expected biharmonic | kriging"),
])
def test_train_config_mistakes_end_before_anything_loads(override, says, tmp_path, bench):
    with pytest.raises(ConfigError, match=re.escape(says)):
        train.main(_train_args(tmp_path, bench, "data.held_out_domain=retina", override))
    assert not (tmp_path / "run").exists()


def test_train_names_the_manifest_domains_and_an_output_dir_that_is_a_file(tmp_path, bench):
    with pytest.raises(ConfigError, match=re.escape(str(list(DOMAINS)))):
        train.main(_train_args(tmp_path, bench, "data.held_out_domain=chest"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="output_dir=.*file.* is a file, not a folder"):
        train.main(["--stage", "reference", f"output_dir={tmp_path / 'file'}", f"data.root={bench}"])
    # a missing checkpoint to resume is named before the data loads
    with pytest.raises(ConfigError, match="--resume latest: no complete checkpoint under"):
        train.main(["--resume", "latest", *_train_args(tmp_path, bench)])


def test_train_check_accepts_zero_checkpoint_period_and_every_committed_config(monkeypatch, bench):
    monkeypatch.chdir(REPO)  # init_from paths are relative to the repository
    train.check_train_config(load_config(train.TrainConfig, None, [
        f"data.root={bench}", "optim.checkpoint_every=0", "data.held_out_domain=",
        "data.train_domains=[brain_mri]"]))
    paths = sorted((REPO / "configs" / "generator").glob("pixel_reference*.yaml"))
    assert len(paths) >= 6
    for path in paths:
        fix = []
        if path.name == "pixel_reference_see_through.yaml":
            # a stale ablation config: its init_from (the committed default) has been replaced by
            # the biharmonic-base model since; the run would stop on it (after the data had loaded)
            with pytest.raises(ConfigError, match="init_from=generator/weights/pixel_reference: "
                                                  "its model config differs .* harmonic_iters"):
                train.check_train_config(load_config(train.TrainConfig, path))
            fix = ["init_from="]
        train.check_train_config(load_config(train.TrainConfig, path, fix))
        # and against a benchmark that has the configs' domains
        train.check_train_config(load_config(train.TrainConfig, path, [*fix, f"data.root={bench}"]))


@pytest.mark.parametrize("config, overrides", [
    # scripts/train_generator_gpu.sh's variants (aux_per_source=0 turns aux_healthy off)
    ("generator/pixel_reference_gpu_dg.yaml", ["model.harmonic_iters=0", "model.biharmonic_iters=100"]),
    ("generator/pixel_reference_gpu_dg.yaml", ["model.harmonic_iters=0", "model.biharmonic_iters=100",
                                               "data.photometric_p=0", "data.aux_per_source=0"]),
    ("generator/pixel_reference_gpu_dg2.yaml", ["optim.num_workers=6"]),
    ("gpu/sd_inpaint_lora_reference.yaml", []),  # scripts/train_then_serve.sh
])
def test_train_check_accepts_the_scripted_runs(config, overrides, monkeypatch, bench):
    monkeypatch.chdir(REPO)
    path = REPO / "configs" / config
    train.check_train_config(load_config(train.TrainConfig, path, overrides))
    train.check_train_config(load_config(train.TrainConfig, path, [*overrides, f"data.root={bench}"]))


# -- generator.train_scorers ----------------------------------------------------------------------
def _scorer_args(tmp_path, bench, *overrides):
    return [f"root={bench}", f"out_dir={tmp_path / 'scorers'}", *overrides]


@pytest.mark.parametrize("override, says", [
    ("held_out_domain=chest", "held_out_domain='chest' is not a domain of"),  # was: trained on chest
    ("steps=-1", "steps must be >= 1, got -1"),  # was: untrained scorers saved over out_dir
    ("batch_size=0", "batch_size must be >= 2"),  # was: rc 0 on empty batches
    ("split=tran", "split='tran'; expected train | val | test"),
    ("device=gpu", "device='gpu'; expected cpu | cuda | cuda:N | auto"),
    ("num_threads=0", "num_threads must be >= 1, got 0"),
    ("dilation_px=-2", "dilation_px must be >= 0, got -2"),
    ("lr=-1", "lr must be > 0, got -1.0"),
    # was: found only after two scorers had trained (~13 min at real size)
    ("generator=/nope", "generator=/nope: no such checkpoint folder"),
])
def test_scorer_config_mistakes_end_before_anything_loads(override, says, tmp_path, bench):
    with pytest.raises(ConfigError, match=re.escape(says)):
        train_scorers.main(_scorer_args(tmp_path, bench, override))
    assert not (tmp_path / "scorers").exists()


def test_scorer_cuda_without_a_gpu_and_an_out_dir_that_is_a_file(monkeypatch, tmp_path, bench):
    monkeypatch.setattr(train_scorers.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device=cuda but this machine has no CUDA device"):
        train_scorers.main(_scorer_args(tmp_path, bench, "device=cuda"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="out_dir=.*file.* is a file, not a folder"):
        train_scorers.main([f"root={bench}", f"out_dir={tmp_path / 'file'}"])


def test_scorer_check_accepts_every_committed_config(monkeypatch, bench):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(train_scorers.torch.cuda, "is_available", lambda: False)
    paths = sorted((REPO / "configs" / "generator").glob("scorers*.yaml"))
    assert len(paths) >= 2
    for path in paths:
        cfg = load_config(train_scorers.ScorerTrainConfig, path)
        train_scorers.check_scorer_config(cfg)
        train_scorers.check_scorer_config(load_config(train_scorers.ScorerTrainConfig, path,
                                                      [f"root={bench}"]))
    train_scorers.check_scorer_config(load_config(
        train_scorers.ScorerTrainConfig, None, [f"root={bench}", "generator=pixel",
                                                "held_out_domain="]))

"""Tiny runs of every objective through train(); what trains, what stays locked, export load-back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune.build import build_clip
from finetune.config import OBJECTIVES, load_train_config
from finetune.objectives import clip_infonce
from finetune.train_loop import train
from tests.trainer.conftest import tiny_overrides


def _initial_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)  # train() seeds the same way before building the model
    return {k: v.clone() for k, v in build_clip("embedded").model.state_dict().items()}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_tiny_run_of_every_objective(objective, tiny_bench, tmp_path):
    extra = {"objective": {"name": objective, "stage2_end_frac": 0.5}}
    if objective == "dhn+entropy":
        extra["objective"].update(entropy_blocks=[-2, -1], entropy_weight=0.5)
    cfg = load_train_config(tiny_overrides(tiny_bench, tmp_path / "run", **extra))
    out = train(cfg)
    before = _initial_state()
    after = build_clip(f"local-dir:{out / 'model'}").model.state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # default trainable = image tower only: every text weight and the logit scale are untouched
    assert not any(k.startswith("text.") for k in changed) and "logit_scale" not in changed
    assert any(k.startswith("visual.trunk.blocks.5.") for k in changed)
    assert any(k.startswith("visual.head.") for k in changed)
    saved = json.loads((out / "config.json").read_text())
    assert saved["objective"]["name"] == objective
    assert list((out / "finetune").glob("**/events.out.tfevents*")), "no TensorBoard log"


def test_trainable_text_fp16_and_hf_port_export(tiny_bench, tmp_path):
    cfg = load_train_config(tiny_overrides(
        tiny_bench, tmp_path / "run", trainable=["image", "text", "logit_scale"], export_fp16=True,
        export_hf_port=True))
    out = train(cfg)
    weights = out / "model" / "open_clip_model.safetensors"
    from safetensors.torch import load_file

    stored = load_file(str(weights))
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    model = build_clip(f"local-dir:{out / 'model'}").model
    before = _initial_state()
    state = model.state_dict()
    assert not torch.equal(state["logit_scale"], before["logit_scale"])
    assert any(not torch.equal(state[k], before[k]) for k in state if k.startswith("text."))
    # load-back: the fp32 model holds exactly the fp16 values
    for k, v in stored.items():
        torch.testing.assert_close(state[k], v.float(), rtol=0, atol=0)
    # the HF-port export (MedCLIP-SAMv2's layout) holds the same weights
    port = build_clip(f"hf-port:{out / 'hf_port'}").model.state_dict()
    for k, v in state.items():
        torch.testing.assert_close(port[k], v, rtol=0, atol=0, msg=k)


def test_clip_infonce_matches_open_clip():
    from open_clip.loss import ClipLoss

    torch.manual_seed(0)
    img, txt = torch.randn(6, 8), torch.randn(6, 8)
    scale = torch.tensor(7.5)
    ours = clip_infonce(img, txt, scale)
    ref = ClipLoss()(torch.nn.functional.normalize(img, dim=-1),
                     torch.nn.functional.normalize(txt, dim=-1), scale)
    torch.testing.assert_close(ours, ref)


def test_committed_embedded_weights_load_back_from_fp16():
    from safetensors.torch import load_file

    from finetune.train_loop import EMBEDDED_PRETRAINED, resolve_model_source

    files = list(EMBEDDED_PRETRAINED.rglob("*"))
    assert sum(f.stat().st_size for f in files if f.is_file()) <= 8 * 1024**2  # weight budget
    stored = load_file(str(EMBEDDED_PRETRAINED / "open_clip_model.safetensors"))
    model = build_clip(resolve_model_source("embedded-pretrained")).model
    state = model.state_dict()
    assert set(stored) <= set(state)
    for k, v in stored.items():
        assert v.dtype == torch.float16 or not v.is_floating_point()
        torch.testing.assert_close(state[k], v.to(state[k].dtype), rtol=0, atol=0)
    # pre-trained, not the random init of the same architecture
    init = _initial_state()
    assert not torch.equal(init["visual.trunk.blocks.0.attn.qkv.weight"],
                           state["visual.trunk.blocks.0.attn.qkv.weight"])


def test_all_committed_weights_stay_in_the_30_mb_budget():
    """DEVELOPERS.md: embedded weights the project trains, together, ≤ 30 MB (safetensors)."""
    root = Path(__file__).resolve().parents[2]
    files = [f for d in ("finetune/weights", "generator/weights")
             for f in (root / d).rglob("*.safetensors")]
    assert len(files) >= 7  # both CLIPs, two generators, three scorers: none silently missing
    assert sum(f.stat().st_size for f in files) <= 30 * 1000**2


def test_interpolate_weights_is_the_wise_ft_line():
    from finetune.train_loop import interpolate_weights

    start = {"w": torch.tensor([0.0, 2.0]), "step": torch.tensor(3)}
    tuned = {"w": torch.tensor([4.0, -2.0]), "step": torch.tensor(7)}
    assert torch.equal(interpolate_weights(start, tuned, 0.25)["w"], torch.tensor([1.0, 1.0]))
    assert torch.equal(interpolate_weights(start, tuned, 0.0)["w"], start["w"])
    assert interpolate_weights(start, tuned, 0.25)["step"].item() == 7  # integer buffer: tuned
    with pytest.raises(ValueError, match="differ in keys"):
        interpolate_weights({"v": start["w"]}, tuned, 0.5)


def test_wise_alpha_exports_the_midpoint_of_start_and_fine_tune(tiny_bench, tmp_path):
    """wise_alpha 0.5: every tensor at the midpoint; with wise_early_blocks 1 the vision stem and
    block 0 are the start's and the rest still the midpoint (same seed: same fine-tune)."""
    from finetune.train_loop import is_early_vision_key

    runs = {"full": {"wise_alpha": 1.0}, "half": {"wise_alpha": 0.5},
            "early": {"wise_alpha": 0.5, "wise_early_blocks": 1}}
    states = {name: build_clip("local-dir:" + str(train(load_train_config(
        tiny_overrides(tiny_bench, tmp_path / name, **kw))) / "model")).model.state_dict()
        for name, kw in runs.items()}
    full, half, early = states["full"], states["half"], states["early"]
    before = _initial_state()
    moved = [k for k in before if not torch.equal(before[k], full[k])]
    assert moved  # the fine-tune changed something, so the midpoint is a real test
    kept = [k for k in moved if is_early_vision_key(k, 1)]
    assert kept and any("blocks.0." in k for k in kept) and len(kept) < len(moved)
    for k in before:
        torch.testing.assert_close(half[k], (before[k] + full[k]) / 2, rtol=0, atol=1e-6, msg=k)
        torch.testing.assert_close(early[k], before[k] if is_early_vision_key(k, 1) else half[k],
                                   rtol=0, atol=1e-6, msg=k)


def test_freeze_bn_stats_keeps_the_running_statistics(tiny_bench, tmp_path):
    """freeze_bn_stats: a conv-stem fine-tune leaves every BatchNorm running statistic at the
    start's while its learned weights move; without it the statistics move (so the test can fail)."""
    torch.manual_seed(0)  # train() seeds the same way before building the model
    start = build_clip("embedded-convstem8").model.state_dict()
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert stats
    for frozen in (True, False):
        out = train(load_train_config(tiny_overrides(
            tiny_bench, tmp_path / str(frozen), model="embedded-convstem8", freeze_bn_stats=frozen)))
        tuned = build_clip(f"local-dir:{out / 'model'}").model.state_dict()
        assert any(not torch.equal(tuned[k], start[k]) for k in start if k.endswith("conv.weight"))
        assert all(torch.equal(tuned[k], start[k]) for k in stats) == frozen


def test_multisource_gpu_config_runs_at_toy_size(tmp_path):
    """configs/embedded/pretrain_clip_multisource_gpu.yaml, data and all, at toy size: a benchmark
    with multi-source domains, 2 steps of batch 4, the config's objective, augmentation and
    held-out domain; the multi-source images are in the training set and the chest is not."""
    from finetune.data import load_samples
    from shared.benchmark import build_benchmark

    bench = tmp_path / "bench"
    build_benchmark(bench, domains=("brain_mri", "chest_xray"), n_per_domain=3, size=64, seed=0,
                    multi_source=1)
    path = Path(__file__).resolve().parents[2] / "configs" / "embedded" / "pretrain_clip_multisource_gpu.yaml"
    cfg = load_train_config(path, [f"data.root={bench}", f"output_dir={tmp_path / 'run'}",
                                   "batch_size=4", "optim.max_steps=2", "optim.warmup_steps=1",
                                   "num_threads=1", "checkpoint_every=0"])
    domains = {x.domain for x in load_samples(cfg.data)}
    assert "ms_procedural" in domains and "ms_head_ct" in domains and "chest_xray" not in domains
    out = train(cfg)
    assert (Path(out) / "model" / "open_clip_model.safetensors").is_file()


def test_convstem_model_trains_with_the_dense_term_and_refuses_the_hf_port(tiny_bench, tmp_path):
    """The 16 x 16-token variant goes through the same trainer: the patch targets follow its grid
    (a wrong grid would fail the dense term's shapes), the stem itself learns, and asking for the
    HF port (which has one patch conv) fails before any step."""
    from shared.config import ConfigError

    cfg = load_train_config(tiny_overrides(
        tiny_bench, tmp_path / "run", model="embedded-convstem8", objective={"name": "clip+dense"}))
    out = train(cfg)
    torch.manual_seed(0)
    before = build_clip("embedded-convstem8").model.state_dict()
    after = build_clip(f"local-dir:{out / 'model'}").model.state_dict()
    key = "visual.trunk.patch_embed.backbone.0.conv.weight"
    assert key in after and not torch.equal(before[key], after[key])
    with pytest.raises(ConfigError, match="HF port"):
        train(load_train_config(tiny_overrides(tiny_bench, tmp_path / "port",
                                               model="embedded-convstem8", export_hf_port=True)))
    assert not list((tmp_path / "port").glob("checkpoint*"))

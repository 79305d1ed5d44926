"""The two stages through their entry points with ``model.backend: sd-inpaint`` (tiny pipeline)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from generator import train
from generator.build import load_generator
from generator.dpo import DpoConfig, train_dpo
from generator.pairs import PairsConfig, build_pairs
from shared.config import ConfigError, load_config
from tests.generator.conftest import small_bench, toy_pair  # noqa: F401 (fixture)
from tests.generator_dpo.conftest import tiny_scorers  # noqa: F401 (fixture)

from .conftest import perturb_lora, sd_backend


def _reference_args(tmp_path, bench, pipe, steps: int, *more: str) -> list[str]:
    return [
        "--stage", "reference", f"output_dir={tmp_path / 'ref'}", f"data.root={bench}",
        "data.held_out_domain=retina", "model.backend=sd-inpaint", f"model.sd.pretrained={pipe}",
        "model.sd.lora_rank=4", "model.sd.lora_conv=true", "model.sd.gradient_checkpointing=true",
        f"optim.steps={steps}", "optim.batch_size=2", "optim.gradient_accumulation_steps=2",
        "optim.checkpoint_every=2", "optim.log_every=1", "optim.warmup_steps=1", "optim.lr=0.001",
        *more,
    ]


def test_reference_stage_trains_a_lora_that_the_service_loads(tmp_path, small_bench,  # noqa: F811
                                                                tiny_sd_v_dir):
    train.main(_reference_args(tmp_path, small_bench, tiny_sd_v_dir, 2))
    run = tmp_path / "ref"
    state = load_file(run / "final" / "pytorch_lora_weights.safetensors")
    assert any("conv1" in k for k in state) and any("to_q" in k for k in state)
    assert any(k.endswith("lora.up.weight") and v.abs().sum() > 0 for k, v in state.items())
    meta = json.loads((run / "final" / "generator_lora.json").read_text())
    assert meta["base"] == str(tiny_sd_v_dir) and meta["steps"] == 2
    assert list((run / "logs").rglob("events.out.tfevents.*"))  # TensorBoard
    ckpts = sorted((run / "checkpoints").glob("checkpoint_*"))
    assert json.loads((ckpts[-1] / "step.json").read_text())["step"] == 2
    assert (ckpts[-1] / "policy_lora.safetensors").is_file()
    # resumable through the same entry point
    train.main(["--resume", "latest", *_reference_args(tmp_path, small_bench, tiny_sd_v_dir, 3)])
    assert json.loads((run / "final" / "generator_lora.json").read_text())["steps"] == 3
    gen = load_generator(run / "final")  # base + LoRA, the base named by the LoRA dir
    assert gen.checkpoint_hash != load_generator(tiny_sd_v_dir).checkpoint_hash
    image, mask = toy_pair(32, 32)
    assert gen.generate([image], [mask], steps=2)[0][0].image.shape == (32, 32)


def test_8bit_adam_without_bitsandbytes_is_a_clear_error(tmp_path, small_bench,  # noqa: F811
                                                          tiny_sd_dir):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="bitsandbytes"):
            train.main(_reference_args(tmp_path, small_bench, tiny_sd_dir, 1,
                                       "optim.use_8bit_adam=true"))
    else:
        pytest.skip("bitsandbytes is installed: nothing to refuse")


@pytest.fixture(scope="module")
def sd_pairs(tiny_sd_dir, small_bench, tiny_scorers, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("sd_pairs")
    cfg = PairsConfig(root=str(small_bench), out=str(out), samples_per_positive=2, steps=2,
                      max_items=2)
    build_pairs(cfg, load_generator(tiny_sd_dir), tiny_scorers)
    return out


@pytest.fixture(scope="module")
def reference_lora(tiny_sd_dir, tmp_path_factory):
    backend = sd_backend(tiny_sd_dir, need_reference=False)
    perturb_lora(backend, seed=7)
    return backend.save(tmp_path_factory.mktemp("ref_lora") / "lora", {})


def _dpo_cfg(out, pipe, pairs, bench, reference, **optim) -> DpoConfig:
    return load_config(DpoConfig, {
        "output_dir": str(out), "reference": str(reference), "pairs": str(pairs),
        "pair_kinds": ["sample", "gt", "positive"],
        "model": {"backend": "sd-inpaint", "sd": {"pretrained": str(pipe)}},
        "loss": {"beta": 500.0, "sdpo": True, "mi_weight": 0.1, "copy_weight": 0.1},
        "optim": {"steps": 3, "batch_size": 2, "lr": 1e-3, "val_every": 3, "checkpoint_every": 1,
                  **optim},
        "val": {"root": str(bench), "max_items": 1, "steps": 2},
    })


def test_dpo_stage_resumed_after_a_stop_equals_uninterrupted(
    tiny_sd_dir, sd_pairs, small_bench, reference_lora, tiny_scorers, tmp_path  # noqa: F811
):
    whole = _dpo_cfg(tmp_path / "whole", tiny_sd_dir, sd_pairs, small_bench, reference_lora)
    train_dpo(whole, scorers=tiny_scorers)
    log = [json.loads(x) for x in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "dpo_loss" in r]
    assert len(steps) == 3
    assert steps[0]["dpo_loss"] == pytest.approx(math.log(2.0), abs=1e-6)  # policy = reference LoRA
    assert all(math.isfinite(r[k]) for r in steps for k in ("mi_loss", "copy_loss", "sdpo_lambda"))
    cut = _dpo_cfg(tmp_path / "cut", tiny_sd_dir, sd_pairs, small_bench, reference_lora)
    assert train_dpo(cut, scorers=tiny_scorers, stop_after=2) == {"stopped_at": 2}
    assert not (tmp_path / "cut" / "final").exists()
    ckpt = sorted((tmp_path / "cut" / "checkpoints").glob("checkpoint_*"))[-1]
    assert (ckpt / "policy_lora.safetensors").is_file()  # the adapter only, not the whole UNet
    assert not list(ckpt.glob("model*.safetensors")) and not list(ckpt.glob("pytorch_model*"))
    train_dpo(cut, scorers=tiny_scorers, resume="latest")
    a = load_file(tmp_path / "whole" / "final" / "pytorch_lora_weights.safetensors")
    b = load_file(tmp_path / "cut" / "final" / "pytorch_lora_weights.safetensors")
    ref = load_file(reference_lora / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() == ref.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], ref[k]) for k in a)  # DPO moved the policy
    resumed = [json.loads(x) for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["dpo_loss"] for r in resumed if "dpo_loss" in r] == [r["dpo_loss"] for r in steps]
    meta = json.loads((tmp_path / "whole" / "final" / "generator_lora.json").read_text())
    assert meta["reference_lora"] == str(reference_lora)
    gen = load_generator(tiny_sd_dir, lora=tmp_path / "whole" / "final")
    image, mask = toy_pair(32, 32)
    assert gen.generate([image], [mask], steps=2)[0][0].image.shape == (32, 32)


def test_gpu_configs_load_with_the_sd_backend():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs" / "gpu"
    ref = load_config(train.TrainConfig, root / "sd_inpaint_lora_reference.yaml")
    assert ref.model.backend == "sd-inpaint" and ref.model.sd.resolution == 512
    dpo = load_config(DpoConfig, root / "sd_inpaint_lora_dpo.yaml")
    assert dpo.model.backend == "sd-inpaint" and dpo.reference == ref.output_dir + "/final"


def test_sd_resolution_off_the_vae_grid_refused_before_loading(tiny_sd_dir):
    """The tiny pipeline's VAE halves once (factor 2): 33 px is refused by the up-front check,
    in one line naming the setting; 32 and 0 (the pipeline's own) pass."""
    from generator.checks import check_sd_model, vae_factor
    from generator.sd_backend import SDModelConfig
    from shared.config import ConfigError

    assert vae_factor(str(tiny_sd_dir)) == 2
    assert vae_factor("org/name") is None  # a hub id: checked after loading
    with pytest.raises(ConfigError, match=r"model\.sd\.resolution=33 is not a multiple .* VAE factor 2"):
        check_sd_model(SDModelConfig(pretrained=str(tiny_sd_dir), resolution=33))
    for ok in (32, 0):
        check_sd_model(SDModelConfig(pretrained=str(tiny_sd_dir), resolution=ok))

"""Diffusion-DPO on the SD inpainting backend: initial value, the reference, shared noise, learning."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import UNet2DConditionModel

from generator.dpo import LossConfig, preference_step_losses
from generator.sd_backend import POLICY

from .conftest import pair_batch, perturb_lora, sd_backend, unet_inputs


@pytest.mark.parametrize("fixture", ["tiny_sd_dir", "tiny_sd_v_dir"])
def test_dpo_loss_is_log2_with_fresh_adapters(fixture, request):
    backend = sd_backend(request.getfixturevalue(fixture))
    lora_b = [p for n, p in backend.raw.named_parameters() if f"lora_B.{POLICY}" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)  # B = 0: policy = base
    assert backend.prediction_type == ("epsilon" if fixture == "tiny_sd_dir" else "v_prediction")
    lcfg = LossConfig(beta=500.0, mi_weight=0.1, copy_weight=0.1, sdpo=True)
    out = preference_step_losses(backend, pair_batch(3), lcfg, torch.Generator().manual_seed(0))
    assert float(out["dpo_loss"]) == pytest.approx(math.log(2.0), abs=1e-7)
    assert float(out["implicit_acc"]) == 0.5
    assert float(out["model_w_err"]) == float(out["ref_w_err"])
    assert float(out["model_w_err"]) != float(out["model_l_err"])  # the pair does differ
    assert all(math.isfinite(float(out[k])) for k in ("mi_loss", "copy_loss", "sdpo_lambda"))
    out["loss"].backward()  # the MI term reaches the adapters through the decoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backend.trainable_parameters())


def test_disabled_adapters_are_the_base_unet_bit_exactly(tiny_sd_dir):
    backend = sd_backend(tiny_sd_dir)
    perturb_lora(backend)
    x_t, cond, t = unet_inputs(backend)
    ref = backend.predict_reference(x_t, cond, t)
    base = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet").eval()
    with torch.no_grad():
        expect = base(torch.cat([x_t, cond], 1), t,
                      encoder_hidden_states=backend.prompt_embeds.expand(2, -1, -1)).sample
    assert torch.equal(ref, expect)
    policy = backend.predict(x_t, cond, t)
    assert not torch.equal(policy, ref)
    # the reference pass left the adapters on and trainable
    assert all(p.requires_grad for p in backend.trainable_parameters())
    assert torch.equal(backend.predict(x_t, cond, t), policy)


def test_reference_lora_is_the_reference_and_the_policy_starts_from_it(tiny_sd_dir, tmp_path):
    source = sd_backend(tiny_sd_dir, need_reference=False)
    perturb_lora(source, seed=3)
    source.save(tmp_path / "ref_lora", {})
    x_t, cond, t = unet_inputs(source)
    with torch.no_grad():
        expect = source.predict(x_t, cond, t)
    backend = sd_backend(tiny_sd_dir, reference_lora=str(tmp_path / "ref_lora"))
    assert torch.equal(backend.predict_reference(x_t, cond, t), expect)
    with torch.no_grad():
        assert torch.equal(backend.predict(x_t, cond, t), expect)  # policy = copy at step 0
    out = preference_step_losses(backend, pair_batch(2), LossConfig(beta=500.0),
                                 torch.Generator().manual_seed(0))
    assert float(out["dpo_loss"]) == pytest.approx(math.log(2.0), abs=1e-7)
    perturb_lora(backend, seed=4)
    assert torch.equal(backend.predict_reference(x_t, cond, t), expect)


def test_winner_and_loser_share_noise_and_timestep(tiny_sd_dir):
    """With winner = loser, shared ε and t make both errors identical for any policy, so the loss
    stays log 2 after the policy moved; independent draws would make e_w ≠ e_l."""
    backend = sd_backend(tiny_sd_dir)
    perturb_lora(backend)
    batch = pair_batch(3)
    batch["loser"] = batch["winner"].clone()
    out = preference_step_losses(backend, batch, LossConfig(beta=500.0),
                                 torch.Generator().manual_seed(0))
    assert float(out["model_w_err"]) == float(out["model_l_err"])
    assert float(out["ref_w_err"]) == float(out["ref_l_err"])
    assert float(out["dpo_loss"]) == pytest.approx(math.log(2.0), abs=1e-7)
    assert float(out["model_w_err"]) != float(out["ref_w_err"])  # the policy did move


def test_a_few_steps_on_one_pair_lower_the_loss_and_raise_implicit_accuracy(tiny_sd_v_dir):
    backend = sd_backend(tiny_sd_v_dir, lora_rank=8, lora_alpha=8.0)
    batch = pair_batch(4, seed=2)
    lcfg = LossConfig(beta=1000.0)
    opt = torch.optim.AdamW(backend.trainable_parameters(), lr=5e-4)

    def evaluate() -> dict[str, float]:  # the same 4 noise/timestep draws before and after
        outs = [preference_step_losses(backend, batch, lcfg, torch.Generator().manual_seed(90 + s))
                for s in range(4)]
        return {k: sum(float(o[k]) for o in outs) / 4 for k in ("dpo_loss", "implicit_acc")}

    before = evaluate()
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        loss = preference_step_losses(backend, batch, lcfg, gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate()
    assert before["dpo_loss"] == pytest.approx(math.log(2.0), abs=1e-7)
    assert before["implicit_acc"] == 0.5
    assert after["dpo_loss"] < before["dpo_loss"] - 0.05
    assert after["implicit_acc"] > 0.5


@pytest.mark.parametrize(("fixture", "kind"), [("tiny_sd_dir", "epsilon"),
                                               ("tiny_sd_v_dir", "v_prediction")])
def test_the_target_is_the_pipeline_schedulers_prediction_type(fixture, kind, request):
    """An oracle that knows z0 and returns the true ε (or v) has zero error only if the loss
    regresses the pipeline scheduler's own target."""
    backend = sd_backend(request.getfixturevalue(fixture))
    assert backend.prediction_type == kind
    batch = pair_batch(2)
    z_w, z_l, _, _ = backend.pair_batch(batch)
    z0 = torch.cat([z_w, z_l])
    abar = backend.scheduler.alphas_cumprod

    def oracle(x_t, cond, t):
        a = abar[t.cpu()].view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * z0) / (1 - a).sqrt()
        return eps if kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * z0

    backend.predict = oracle
    out = preference_step_losses(backend, batch, LossConfig(beta=500.0, region="all"),
                                 torch.Generator().manual_seed(0))
    assert float(out["model_w_err"]) < 1e-8 and float(out["model_l_err"]) < 1e-8
    assert float(out["ref_w_err"]) > 1e-3  # the (untrained) UNet is not the oracle

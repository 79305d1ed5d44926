"""Closed forms and invariants of the DPO-family losses (generator.preference)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler
from monai.losses import GlobalMutualInformationLoss
from torch.testing import assert_close

from generator.modeling import pixel_unet
from generator.preference import (
    diffusion_dpo_loss,
    mask_mi_loss,
    mse_output_grad,
    no_copy_loss,
    parzen_mutual_information,
    per_sample_mse,
    predicted_sample,
    scale_grad,
    sdpo_lambda,
)

from .conftest import TINY


def test_dpo_loss_is_log2_when_policy_equals_reference():
    torch.manual_seed(0)
    e_w, e_l = torch.rand(6), torch.rand(6)
    out = diffusion_dpo_loss(e_w, e_l, e_w.clone(), e_l.clone(), beta=5000.0)
    assert_close(out["dpo_loss"], torch.tensor(math.log(2.0)))
    assert_close(out["implicit_acc"], torch.tensor(0.5))


def test_dpo_loss_closed_form_and_sign():
    # d_θ − d_ref = (0.1 − 0.3) − (0.2 − 0.2) = −0.2 → L = −log σ(β/2 · 0.2) = softplus(−0.1 β)
    out = diffusion_dpo_loss(torch.tensor([0.1]), torch.tensor([0.3]), torch.tensor([0.2]),
                             torch.tensor([0.2]), beta=10.0)
    assert_close(out["dpo_loss"], torch.nn.functional.softplus(torch.tensor(-1.0)))
    assert out["implicit_acc"].item() == 1.0
    with pytest.raises(ValueError, match="beta"):
        diffusion_dpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), beta=0)


def _tiny_pair_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(4, 1, 32, 32, generator=g)
    hole = torch.zeros(4, 1, 32, 32)
    hole[:, :, 10:20, 8:22] = 1
    winner = image * (1 - hole) + 0.5 * hole
    loser = image * (1 - hole) + torch.rand(4, 1, 32, 32, generator=g) * hole
    return {"image": image, "hole": hole, "winner": winner, "loser": loser}


def test_dpo_gradient_lowers_winner_error_relative_to_loser():
    import copy

    from generator.dpo import LossConfig, dpo_step_losses

    torch.manual_seed(0)
    ref = pixel_unet.build_unet(TINY).eval().requires_grad_(False)
    policy = copy.deepcopy(ref).requires_grad_(True)
    sched = pixel_unet.build_scheduler(TINY, kind="ddpm")
    batch, lcfg = _tiny_pair_batch(), LossConfig(beta=100.0)
    parts = dpo_step_losses(policy, ref, sched, batch, TINY, lcfg, torch.Generator().manual_seed(1))
    assert_close(parts["dpo_loss"], torch.tensor(math.log(2.0)))
    parts["loss"].backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 1e-3 * p.grad
    after = dpo_step_losses(policy, ref, sched, batch, TINY, lcfg, torch.Generator().manual_seed(1))
    # same noise and t (same generator seed): the margin moved toward the winner
    assert (after["model_w_err"] - after["model_l_err"]) < (after["ref_w_err"] - after["ref_l_err"])
    assert after["dpo_loss"] < math.log(2.0)


def test_sdpo_lambda_range_closed_forms_and_guarantee():
    torch.manual_seed(0)
    g_w = torch.randn(5, 1, 8, 8)
    assert_close(sdpo_lambda(g_w, -g_w, mu=0.9), torch.ones(5))  # opposing → 1
    assert_close(sdpo_lambda(g_w, g_w, mu=0.9), torch.full((5,), 0.1))  # parallel → 1 − μ
    assert_close(sdpo_lambda(g_w, 0.05 * g_w, mu=0.9), torch.ones(5))  # small aligned → clamp 1
    g_l = torch.randn(5, 1, 8, 8) + 0.5 * g_w
    lam = sdpo_lambda(g_w, g_l, mu=0.9)
    assert ((lam >= 0) & (lam <= 1)).all()
    step = g_w - lam.view(-1, 1, 1, 1) * g_l
    proj = (step * g_w).flatten(1).sum(1)
    assert (proj >= 0.9 * (g_w * g_w).flatten(1).sum(1) - 1e-5).all()


def test_scale_grad_keeps_value_and_scales_gradient():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = scale_grad(x**2, torch.tensor([0.0, 0.5, 1.0]))
    assert_close(y, torch.tensor([1.0, 4.0, 9.0]))
    y.sum().backward()
    assert_close(x.grad, torch.tensor([0.0, 2.0, 6.0]))


def test_mse_output_grad_matches_autograd():
    torch.manual_seed(0)
    pred = torch.randn(3, 1, 6, 6, requires_grad=True)
    target = torch.randn(3, 1, 6, 6)
    weight = (torch.rand(3, 1, 6, 6) > 0.5).float()
    for w in (None, weight):
        (g,) = torch.autograd.grad(per_sample_mse(pred, target, w).sum(), pred)
        assert_close(mse_output_grad(pred, target, w), g)


def test_parzen_mi_matches_monai_with_unit_weights():
    torch.manual_seed(0)
    a = torch.rand(3, 1, 16, 16)
    b = (a + 0.2 * torch.rand(3, 1, 16, 16)).clamp(0, 1)
    ours = parzen_mutual_information(a, b)
    monai = -GlobalMutualInformationLoss(reduction="none")(a, b)
    assert_close(ours, monai.reshape(-1), rtol=1e-4, atol=1e-5)


def test_mi_true_pair_beats_shuffled_pair_and_mask_is_ignored():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 24, 24)
    x0 = (0.8 * x + 0.1 + 0.03 * torch.randn_like(x)).clamp(0, 1)
    mask = torch.zeros_like(x)
    mask[:, :, 8:16, 8:16] = 1
    perm = torch.randperm(24 * 24)
    shuffled = x0.flatten(2)[:, :, perm].reshape_as(x0)
    true_mi = mask_mi_loss(x0, x, mask)["mi"]
    assert true_mi > mask_mi_loss(shuffled, x, mask)["mi"] + 0.1
    # pixels inside the mask do not enter the estimate
    changed = x0.clone()
    changed[:, :, 8:16, 8:16] = torch.rand(2, 1, 8, 8)
    assert_close(mask_mi_loss(changed, x, mask)["mi"], true_mi)


def test_no_copy_loss_punishes_a_copied_lesion_only():
    torch.manual_seed(0)
    smooth = torch.full((2, 1, 16, 16), 0.4)
    mask = torch.zeros_like(smooth)
    mask[:, :, 4:12, 4:12] = 1
    positive = smooth + 0.3 * torch.rand_like(smooth) * mask
    copied = no_copy_loss(positive, positive, smooth, mask)
    assert_close(copied["copy_loss"], torch.tensor(1.0))
    healthy = smooth + 0.05 * torch.randn_like(smooth) * mask
    assert no_copy_loss(healthy, positive, smooth, mask)["copy_loss"] < 0.3


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_predicted_sample_inverts_add_noise(kind):
    torch.manual_seed(0)
    sched = DDPMScheduler(num_train_timesteps=100, prediction_type=kind)
    x0, eps = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    t = torch.tensor([5, 50, 90])
    x_t = sched.add_noise(x0, eps, t)
    out = {"epsilon": eps, "v_prediction": sched.get_velocity(x0, eps, t), "sample": x0}[kind]
    assert_close(predicted_sample(out, x_t, sched.alphas_cumprod[t], prediction_type=kind), x0,
                 rtol=1e-4, atol=1e-4)


def test_dpo_step_gives_winner_and_loser_the_same_noise_and_timestep():
    """With winner == loser, shared noise and timestep make their noised inputs, predictions and
    errors identical, so the DPO loss is exactly log 2 even with policy != reference. A loser
    drawn with its own noise (issue 20's planted bug (a)) makes e_w != e_l and fails this."""
    import copy

    from generator.dpo import LossConfig, dpo_step_losses
    from tests.generator.conftest import TINY

    torch.manual_seed(0)
    policy = pixel_unet.build_unet(TINY)
    reference = copy.deepcopy(policy)
    with torch.no_grad():  # policy != reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    scheduler = pixel_unet.build_scheduler(TINY, kind="ddpm")
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 1, 32, 32, generator=g)
    hole = torch.zeros(3, 1, 32, 32)
    hole[:, :, 10:20, 12:22] = 1.0
    twin = torch.rand(3, 1, 32, 32, generator=g)
    batch = {"image": image, "hole": hole, "winner": twin, "loser": twin.clone()}
    out = dpo_step_losses(policy, reference, scheduler, batch, TINY, LossConfig(beta=5000.0),
                          torch.Generator().manual_seed(2))
    assert float(out["model_w_err"]) == float(out["model_l_err"])
    assert float(out["dpo_loss"]) == pytest.approx(math.log(2.0), abs=1e-6)
    other = {**batch, "loser": torch.rand(3, 1, 32, 32, generator=g)}  # sanity: a real pair moves it
    moved = dpo_step_losses(policy, reference, scheduler, other, TINY, LossConfig(beta=5000.0),
                            torch.Generator().manual_seed(2))
    assert abs(float(moved["dpo_loss"]) - math.log(2.0)) > 1e-3


def test_dpo_then_sdpo_schedule_switches_the_loser_scale_at_its_step():
    """sdpo_from_step k: plain DPO (λ = 1) before step k, the SDPO λ from k on — the same λ as
    SDPO from the start on the same batch, noise and t."""
    from generator.backends import PixelTrainBackend
    from generator.dpo import LossConfig, preference_step_losses

    torch.manual_seed(0)
    ref = pixel_unet.build_unet(TINY).eval().requires_grad_(False)
    policy = pixel_unet.build_unet(TINY)  # a different init: winner and loser gradients differ
    backend = PixelTrainBackend(policy, pixel_unet.build_scheduler(TINY, kind="ddpm"), TINY,
                                reference=ref)
    batch = _tiny_pair_batch()

    def lam(lcfg, step):
        return preference_step_losses(backend, batch, lcfg, torch.Generator().manual_seed(3),
                                      step=step)["sdpo_lambda"]

    always = lam(LossConfig(beta=100.0, sdpo=True, mu=0.99), 1)
    assert always.item() < 1.0  # μ near 1: the loser's push is scaled down
    schedule = LossConfig(beta=100.0, sdpo=True, mu=0.99, sdpo_from_step=5)
    assert lam(schedule, 4).item() == 1.0
    assert_close(lam(schedule, 5), always)


def test_dpo_bench_pareto_front_keeps_only_undominated_variants():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "bench_dpo.py"
    spec = importlib.util.spec_from_file_location("bench_dpo", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    pts = {"a": (0.1, 20.0), "b": (0.2, 19.0), "c": (0.05, 19.5), "d": (0.2, 18.0), "e": (0.1, 20.0)}
    assert mod.pareto_front(pts) == ["a", "e", "b"]  # c below a on both, d below b; ties kept

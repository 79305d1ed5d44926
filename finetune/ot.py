"""Batched entropic optimal transport and the debiased Sinkhorn divergence (Stage 1).

Hand-written because the envelope-gradient, debiased, soft-mask-weighted form is ours; POT's
batched log-domain solver (``ot.batch.solve_batch``) is offered as an interchangeable backend
and the tests check both against POT's ``ot.sinkhorn2``.

Entropic OT between discrete measures a (B, N) and b (B, M) with cost C (B, N, M):

.. math::
    \\mathrm{OT}_\\varepsilon(a,b) = \\min_{P \\in \\Pi(a,b)} \\langle P, C\\rangle
        + \\varepsilon\\,\\mathrm{KL}(P \\,\\|\\, a \\otimes b)

solved by log-domain Sinkhorn on the duals f, g:
``f_i = -ε log Σ_j b_j exp((g_j - C_ij)/ε)``, ``g_j = -ε log Σ_i a_i exp((f_i - C_ij)/ε)``,
``P_ij = a_i b_j exp((f_i + g_j - C_ij)/ε)``. The plan is solved without autograd; by the envelope
theorem ∂OT_ε/∂C = P*, so the value is returned as ⟨P*, C⟩ + ε KL(P*‖a⊗b) with P* detached
(gradient exactly P* at convergence, memory O(B·N·M) instead of O(iterations·B·N·M)).
Debiased divergence (Feydy et al., AISTATS 2019; EgoBridge uses geomloss's version):
``S_ε(a,b) = OT_ε(a,b) - ½ OT_ε(a,a) - ½ OT_ε(b,b)``, zero when a = b, positive otherwise,
and it does not shrink features to a point as plain OT_ε does.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F

Cost = Literal["cosine", "sqeuclidean"]
Solver = Literal["ours", "pot"]


# Sinkhorn calls that ended above the tolerance in this process: the first one warns, the rest
# are only counted (a training run reports the total once, ``not_converged_count``).
_NOT_CONVERGED = {"count": 0}


def not_converged_count(reset: bool = False) -> int:
    """How many Sinkhorn solves ended unconverged since start (or the last reset)."""
    n = _NOT_CONVERGED["count"]
    if reset:
        _NOT_CONVERGED["count"] = 0
    return n


def pairwise_cost(x: torch.Tensor, y: torch.Tensor, cost: Cost = "cosine") -> torch.Tensor:
    """Cost matrices (B, N, M) between token sets x (B, N, W) and y (B, M, W).

    ``cosine``: 1 - cos(x_i, y_j) (= ½‖x̂ - ŷ‖² on unit-normalised features);
    ``sqeuclidean``: ½‖x_i - y_j‖² on the raw features.
    """
    if cost == "cosine":
        return 1.0 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(-2, -1)
    if cost == "sqeuclidean":
        return 0.5 * torch.cdist(x, y).pow(2)
    raise ValueError(f"unknown cost {cost!r}; use 'cosine' or 'sqeuclidean'")


@torch.no_grad()
def sinkhorn_log(
    cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, eps: float, n_iter: int = 50,
    warn_tol: float = 1e-2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-domain Sinkhorn for a batch: returns (plan (B,N,M), f (B,N), g (B,M)), no autograd.

    Zero-mass points are allowed (log a = -inf); each measure must have positive total mass.
    Warns (naming the iteration count) when the row-marginal L1 error (max over the batch) stays
    above ``warn_tol`` or is not finite — the first time in the process; later ones are counted
    (:func:`not_converged_count`).
    """
    c = cost.detach()
    log_a, log_b = a.log(), b.log()
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for _ in range(n_iter):
        f = -eps * torch.logsumexp(log_b[:, None, :] + (g[:, None, :] - c) / eps, dim=2)
        g = -eps * torch.logsumexp(log_a[:, :, None] + (f[:, :, None] - c) / eps, dim=1)
    plan = torch.exp(log_a[:, :, None] + log_b[:, None, :] + (f[:, :, None] + g[:, None, :] - c) / eps)
    err = (plan.sum(2) - a).abs().sum(1).max().item()
    if not math.isfinite(err) or err > warn_tol:
        _NOT_CONVERGED["count"] += 1
    if (not math.isfinite(err) or err > warn_tol) and _NOT_CONVERGED["count"] == 1:
        warnings.warn(f"Sinkhorn not converged after {n_iter} iterations: marginal error {err:.2e} "
                      f"(eps={eps}); raise n_iter or eps", RuntimeWarning, stacklevel=2)
    return plan, f.nan_to_num(neginf=0.0), g.nan_to_num(neginf=0.0)


@torch.no_grad()
def _pot_plan(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, eps: float,
              n_iter: int) -> torch.Tensor:
    from ot.batch import solve_batch

    res = solve_batch(cost.detach(), reg=eps, a=a, b=b, max_iter=n_iter, tol=0.0,
                      method="log_sinkhorn", grad="detach")
    return res.plan


def entropic_ot(
    cost: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    eps: float = 0.1,
    n_iter: int = 50,
    solver: Solver = "ours",
) -> dict[str, torch.Tensor]:
    """Entropic OT of a batch with an envelope gradient in ``cost``.

    Args: cost (B, N, M); a (B, N), b (B, M) non-negative, each row summing to 1.
    Returns ``value`` (B,) = ⟨P*, C⟩ + ε KL(P*‖a⊗b) (gradient P* w.r.t. C),
    ``value_linear`` (B,) = ⟨P*, C⟩ (what POT's ``ot.sinkhorn2`` returns), ``plan`` (B, N, M).
    """
    if cost.dim() != 3 or a.shape != cost.shape[:2] or b.shape != (cost.shape[0], cost.shape[2]):
        raise ValueError(f"cost {tuple(cost.shape)} does not match a {tuple(a.shape)}, "
                         f"b {tuple(b.shape)}")
    if solver == "ours":
        plan, _, _ = sinkhorn_log(cost, a, b, eps=eps, n_iter=n_iter)
    elif solver == "pot":
        plan = _pot_plan(cost, a, b, eps=eps, n_iter=n_iter)
    else:
        raise ValueError(f"unknown solver {solver!r}; use 'ours' or 'pot'")
    plan = plan.detach()
    ab = a[:, :, None] * b[:, None, :]
    positive = plan > 0
    kl = torch.where(positive, plan * (plan.clamp_min(1e-38).log() - ab.clamp_min(1e-38).log()),
                     torch.zeros_like(plan)).sum((1, 2))
    value_linear = (plan * cost).sum((1, 2))
    return {"value": value_linear + eps * kl, "value_linear": value_linear, "plan": plan}


def sinkhorn_divergence(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    eps: float = 0.1,
    n_iter: int = 50,
    cost: Cost = "cosine",
    solver: Solver = "ours",
) -> torch.Tensor:
    """Debiased Sinkhorn divergence S_ε between weighted token sets, per pair: (B,).

    x (B, N, W), y (B, N, W): token sets of equal size; a (B, N), b (B, N): weights (soft masks),
    normalised here to unit mass. The three problems (a,b), (a,a), (b,b) run as one batch.
    """
    if x.shape != y.shape or a.shape != x.shape[:2] or b.shape != y.shape[:2]:
        raise ValueError(f"token sets {tuple(x.shape)}, {tuple(y.shape)} and weights "
                         f"{tuple(a.shape)}, {tuple(b.shape)} do not match")
    a = a / a.sum(1, keepdim=True)
    b = b / b.sum(1, keepdim=True)
    n = x.shape[0]
    costs = torch.cat([pairwise_cost(x, y, cost), pairwise_cost(x, x, cost),
                       pairwise_cost(y, y, cost)])  # (3B, N, N)
    left, right = torch.cat([a, a, b]), torch.cat([b, a, b])
    value = entropic_ot(costs, left, right, eps=eps, n_iter=n_iter, solver=solver)["value"]
    return value[:n] - 0.5 * value[n:2 * n] - 0.5 * value[2 * n:]

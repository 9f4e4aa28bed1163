"""`imtl`: impartial multi-task learning, gradient balance (IMTL-G).

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021.
"""

import torch
from torch import Tensor

from mtlrun.weighting.base import GradientWeighting


class IMTLG(GradientWeighting):
    """Weights α (summing to 1) such that the combined gradient g = Σ α_t g_t has the same
    projection on every task's unit gradient u_t = g_t / ||g_t||.

    The paper's closed form takes task 1 as reference (α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹ with D the
    rows g_1 - g_t and U the rows u_1 - u_t); we solve the same conditions symmetrically,
    as one (T+1) x (T+1) linear system in α and the common projection p:
    Σ_s α_s ⟨g_s, u_t⟩ = p for every task t, Σ_s α_s = 1. Everything is computed from the
    Gram matrix in float64 on the device; a singular system (two tasks with the same
    gradient direction) is counted in `solver_failures`.

    A task whose gradient is exactly zero (a solved task) has no direction u_t: it gets
    α_t = 0 and the others are balanced among themselves (the paper's formula would give
    every task a zero update at T ≥ 3, and all the weight to the solved task at T = 2). If
    every gradient is zero, α = 1/T.

    Args:
        on: "features" (as in the paper: gradients on the shared representation) or
            "parameters".
    """

    sides = ("features", "parameters")
    solves = True

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        alpha, failed = imtl_weights((grads @ grads.T).double())
        self.count_failure(failed)
        alpha = alpha.to(grads.dtype)
        return alpha @ grads, alpha


def imtl_weights(gram: Tensor) -> tuple[Tensor, Tensor]:
    """IMTL-G's α [T] from the Gram matrix, and a device bool: whether the system was
    singular or gave non-finite weights."""
    count = len(gram)
    squared = gram.diagonal()
    keep = squared > 0
    norms = squared.clamp_min(torch.finfo(gram.dtype).tiny).sqrt()
    eye = torch.eye(count, dtype=gram.dtype, device=gram.device)
    # [t, s] = ⟨g_s, u_t⟩ for kept tasks t; α_t = 0 for the others; if every gradient is
    # zero, the identity (α_t = p for all t, hence α = 1/T).
    projections = torch.where(keep.any(), (gram / norms).T, eye)
    rows = torch.where(keep[:, None] | ~keep.any(), projections, eye)
    common = torch.where(keep | ~keep.any(), -1.0, 0.0).to(gram.dtype)
    system = torch.zeros(count + 1, count + 1, dtype=gram.dtype, device=gram.device)
    system[:count, :count] = rows
    system[:count, count] = common
    system[count, :count] = 1.0
    target = torch.zeros(count + 1, dtype=gram.dtype, device=gram.device)
    target[count] = 1.0
    solution, info = torch.linalg.solve_ex(system, target)
    alpha = solution[:count]
    return alpha, (info != 0) | ~torch.isfinite(alpha).all()

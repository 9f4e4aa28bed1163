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

    Closed form (the paper's): with D the rows g_1 - g_t and U the rows u_1 - u_t
    (t = 2..T), α_{2:T} = g_1 Uᵀ (D Uᵀ)⁻¹ and α_1 = 1 - Σ α_{2:T}. Everything is computed
    from the Gram matrix in float64 on the device; a singular system (two tasks with the
    same gradient direction) is counted in `solver_failures`.

    Args:
        on: "features" (as in the paper: gradients on the shared representation) or
            "parameters".
    """

    sides = ("features", "parameters")
    solves = True

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        gram = (grads @ grads.T).double()
        norms = gram.diagonal().clamp_min(torch.finfo(torch.float64).tiny).sqrt()
        projections = gram / norms  # [a, b] = g_a · u_b
        # g_1 · (u_1 - u_t) and (g_1 - g_s) · (u_1 - u_t) for s, t = 2..T
        first = projections[0, :1] - projections[0, 1:]
        system = first[None, :] - projections[1:, :1] + projections[1:, 1:]
        rest, info = torch.linalg.solve_ex(system.T, first)
        self.count_failure((info != 0) | ~torch.isfinite(rest).all())
        alpha = torch.cat([1 - rest.sum(0, keepdim=True), rest]).to(grads.dtype)
        return alpha @ grads, alpha

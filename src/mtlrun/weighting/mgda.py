"""`mgda`: the multiple-gradient descent algorithm, and its cheaper upper bound MGDA-UB.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.
"""

import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import LOSS_FLOOR, GradientWeighting
from mtlrun.weighting.solvers import device_weights, host_gram, min_norm_weights

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDA(GradientWeighting):
    """Update along the minimum-norm point of the convex hull of the task gradients, a
    direction that decreases every task's loss unless the point is Pareto-stationary.

    The min-norm problem is solved exactly (see `solvers.min_norm_weights`) rather than by
    the paper's Frank-Wolfe iterations.

    `normalize` divides each gradient by n_t before the min-norm problem, as the paper's
    section 3.3 discusses and its code and LibMTL offer (`mgda_gn`): "l2" n_t = ||g_t||,
    "loss" n_t = L_t, "loss+" n_t = L_t·||g_t||, "none" (the default, the paper's
    algorithm) n_t = 1. The weights w found on the normalised gradients then scale the
    original ones, d = Σ w_t g_t, as the authors' code scales the losses (LibMTL's
    parameter-side variant combines the normalised gradients instead, d = Σ w_t g_t/n_t).

    Args:
        on: "parameters" (MGDA: gradients on the shared parameters) or "features"
            (MGDA-UB: gradients on the shared representation, which needs one backward
            through the backbone instead of one per task).
        normalize: "none", "l2", "loss" or "loss+".
    """

    sides = ("parameters", "features")
    solves = True

    def __init__(self, on: str | None = None, normalize: str = "none") -> None:
        super().__init__(on)
        if normalize not in NORMALIZATIONS:
            raise UserError(
                f"weighting.normalize={normalize} is not one of: {', '.join(NORMALIZATIONS)}"
            )
        self.normalize = normalize
        self.uses_losses = normalize in ("loss", "loss+")

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        divisors = gradient_normalizers(grads, self.loss_values, self.normalize)
        gram = host_gram(grads) if divisors is None else host_gram(grads / divisors[:, None])
        solution, solved = min_norm_weights(gram)
        self.count_failure(not solved)
        weights = device_weights(solution, grads)
        return weights @ grads, weights


def gradient_normalizers(grads: Tensor, losses: Tensor | None, kind: str) -> Tensor | None:
    """n_t [T] for `MGDA`'s `normalize` (None for "none"); zero norms and losses are
    floored so that a solved task is not divided by zero."""
    if kind == "none":
        return None
    norms = grads.norm(dim=1).clamp_min(torch.finfo(grads.dtype).tiny)
    if kind == "l2":
        return norms
    if losses is None:
        raise UserError(f"weighting.normalize={kind} needs the losses (call `backward`)")
    values = losses.to(grads).clamp_min(LOSS_FLOOR)
    return values if kind == "loss" else values * norms

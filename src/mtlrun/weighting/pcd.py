"""`pcd`: priority-constrained descent.

Varam et al., "Not All Objectives Are Born Equal: Priority-Constrained Descent for
Hierarchical Multi-Objective Optimization", TMLR 2026 (arXiv:2606.29521).
"""

import numpy as np
import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.solvers import device_weights, host_gram, nonnegative_least_squares


class PCD(GradientWeighting):
    """Follow the primary task's gradient as closely as possible while every other task
    keeps a fraction τ of the progress a step along its own (normalised) gradient would
    give:

        d̃ = argmin_d ½||d - g̃_p||²  s.t.  ⟨g̃_j, d⟩ ≥ τ ||g̃_j||² for every j ≠ p,

    with g̃_i = g_i / √(v̂_i + ε), v̂_i the bias-corrected moving average (decay β) of
    ||g_i||² over the steps; the update is d̃ rescaled to ||g_p||. The projection is solved
    exactly through its dual, a non-negative least-squares problem on the Gram matrix.

    If g_p = 0 the update is 0; if the constraints cannot all hold (e.g. two opposite
    secondary gradients) they are dropped and the update is g_p (both as TorchJD does).

    Args:
        primary: the primary task's name (default: the first task of the run).
        tau: the guaranteed fraction τ in [0, 1].
        beta: decay of the squared norms' moving average.
        eps: ε.
    """

    squared_norms: Tensor
    steps: Tensor

    def __init__(
        self, primary: str | None = None, tau: float = 0.02, beta: float = 0.999, eps: float = 1e-8
    ) -> None:
        super().__init__()
        if not 0 <= tau <= 1 or not 0 <= beta < 1 or eps < 0:
            raise UserError("weighting.tau must be in [0, 1], beta in [0, 1) and eps >= 0")
        self.primary, self.tau, self.beta, self.eps = primary, tau, beta, eps

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        if self.primary is not None:
            self.check_task_keys("weighting.primary", {self.primary: None})
        self.register_buffer("squared_norms", torch.zeros(len(task_names), dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.float64))

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        gram = host_gram(grads)
        self.steps += 1
        diagonal = torch.from_numpy(np.diag(gram).copy()).to(self.squared_norms)
        self.squared_norms.mul_(self.beta).add_((1 - self.beta) * diagonal)
        corrected = self.squared_norms / (1 - self.beta**self.steps)
        scales = (corrected + self.eps).rsqrt().cpu().numpy()
        first = self.task_names.index(self.primary) if self.primary is not None else 0
        weights = device_weights(pcd_weights(gram, scales, first, self.tau), grads)
        return weights @ grads, weights


def pcd_weights(gram: np.ndarray, scales: np.ndarray, primary: int, tau: float) -> np.ndarray:
    """Coefficients of the original gradients in PCD's update (see `PCD`)."""
    count = len(gram)
    weights = np.zeros(count)
    if gram[primary, primary] <= 0:
        return weights
    scaled = gram * np.outer(scales, scales)  # Gram matrix of g̃
    others = np.array([index for index in range(count) if index != primary], dtype=int)
    inner = scaled[np.ix_(others, others)]
    unit = max(float(np.max(np.diag(scaled))), np.finfo(float).tiny)
    # Dual: d̃ = g̃_p + Σ λ_j g̃_j, λ ≥ 0 minimising ½λᵀK̃λ - λᵀ(τ diag K̃ - K̃_{·p}).
    target = tau * np.diag(inner) - scaled[others, primary]
    multipliers = nonnegative_least_squares(inner / unit, target / unit)
    combination = np.zeros(count)
    combination[primary] = 1.0
    combination[others] = multipliers
    reached = scaled[others] @ combination
    if (reached < target + scaled[others, primary] - 1e-9 * unit).any():
        combination[:] = 0.0  # the constraints cannot all hold: drop them
        combination[primary] = 1.0
    norm_sq = float(combination @ scaled @ combination)
    if norm_sq <= 1e-12 * unit:  # d̃ = 0 to rounding
        return weights
    size = np.sqrt(gram[primary, primary] / norm_sq)
    return combination * scales * size

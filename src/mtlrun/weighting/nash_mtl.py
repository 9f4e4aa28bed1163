"""`nash_mtl`: the Nash bargaining solution of the tasks.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022.
"""

from collections.abc import Callable

import numpy as np
from torch import Tensor

from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.solvers import device_weights, host_gram, min_norm_weights


class NashMTL(GradientWeighting):
    """Update along d = Σ α_i g_i where α > 0 solves Gᵀ G α = 1/α, i.e. α_i (K α)_i = 1.

    That is the stationarity condition of φ(α) = ½ αᵀKα - Σ log α_i, strictly convex on
    α > 0, so damped Newton steps on φ reach it to machine precision in a few iterations
    (the paper instead solves a sequence of convex programs with cvxpy).

    Degenerate cases, with a bounded answer each:
    - a task whose gradient is exactly zero (a solved task) has no utility to bargain for:
      it gets α = 0 and the others bargain among themselves;
    - when a positive combination of the remaining gradients vanishes (e.g. two opposite
      ones), φ is unbounded below, no solution exists and no direction improves every
      task: the solve is counted as a failure and the update falls back to MGDA's (the
      minimum-norm point of the gradients' hull, weights on the simplex), which is zero
      at such a Pareto-stationary point instead of a cancelling sum with weights ~1e7.

    Args:
        iterations: cap on Newton steps.
    """

    solves = True

    def __init__(self, iterations: int = 50) -> None:
        super().__init__()
        self.iterations = iterations

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        gram = host_gram(grads)
        alpha, solved = nash_weights(gram, self.iterations)
        self.count_failure(not solved)
        weights = device_weights(alpha, grads)
        return weights @ grads, weights


def nash_weights(
    gram: np.ndarray, iterations: int = 50, fairness: float = 1.0
) -> tuple[np.ndarray, bool]:
    """α ≥ 0 with α_i (K α)_i = 1 for every task with a non-zero gradient (α_i = 0 for the
    others), and whether it was found to 1e-9; if no solution exists, MGDA's weights and
    False (see `NashMTL`). With `fairness` a ≠ 1, FairGrad's (K α)_i = α_i^(-1/a) instead."""
    count = len(gram)
    if not np.isfinite(gram).all():  # non-finite gradients: no answer, and none is made up
        return np.full(count, np.nan), False
    active = np.diag(gram) > 0
    alpha = np.zeros(count)
    if not active.any():  # every gradient is zero: the update is zero whatever α is
        return alpha, True
    sub = gram[np.ix_(active, active)]
    solution, solved = bargain(sub, iterations, fairness)
    if not solved:  # no α > 0 exists: MGDA's bounded direction
        weights, _ = min_norm_weights(sub)
        alpha[active] = weights
        return alpha, False
    alpha[active] = solution
    return alpha, True


def bargain(gram: np.ndarray, iterations: int, alpha: float = 1.0) -> tuple[np.ndarray, bool]:
    """w > 0 with K w = w^(-1/alpha) (Nash-MTL: alpha = 1; FairGrad's α-fair allocation in
    general), for gradients that are all non-zero, and whether it was found to 1e-9.

    It is the stationary point of φ(w) = ½ wᵀKw - Σ h(w_i) with h' = w^(-1/alpha), strictly
    convex on w > 0 (h is concave), found by damped Newton steps.
    """
    scale = float(np.max(np.diag(gram)))
    # Solve for K/scale, whose solution is w·scale^(alpha/(1+alpha)): the iteration then
    # works on numbers near 1 whatever the size of the gradients.
    power = alpha / (1 + alpha)
    matrix = gram / scale
    weights = np.diag(matrix) ** -power  # exact for orthogonal gradients

    def objective(point: np.ndarray) -> float:
        concave = np.log(point) if alpha == 1 else point ** (1 - 1 / alpha) / (1 - 1 / alpha)
        return float(0.5 * point @ matrix @ point - concave.sum())

    for _ in range(iterations):
        residual = weights ** (1 / alpha) * (matrix @ weights) - 1
        if np.abs(residual).max() < 1e-12:
            break
        gradient = matrix @ weights - weights ** (-1 / alpha)
        curvature = weights ** (-1 / alpha - 1) / alpha
        try:
            step = -np.linalg.solve(matrix + np.diag(curvature), gradient)
        except np.linalg.LinAlgError:  # w ran off to infinity: no solution exists
            break
        weights = weights + damped(objective, weights, step, float(-gradient @ step)) * step
    weights = weights * scale**-power
    solved = bool(np.isfinite(weights).all() and (weights > 0).all())
    if not solved:
        return weights, False
    residual = weights ** (1 / alpha) * (gram @ weights) - 1
    return weights, bool(np.abs(residual).max() < 1e-9)


def damped(
    objective: Callable[[np.ndarray], float], point: np.ndarray, step: np.ndarray, decrement: float
) -> float:
    """The Newton step's size: backtrack to stay in w > 0 and decrease φ (Armijo) -- except
    close to the solution, where φ's decrease is below its rounding error and full steps
    converge."""
    size, current = 1.0, objective(point)
    while size > 1e-12:
        trial = point + size * step
        if (trial > 0).all() and (
            decrement < 1e-10 or objective(trial) <= current - 1e-4 * size * decrement
        ):
            break
        size /= 2
    return size

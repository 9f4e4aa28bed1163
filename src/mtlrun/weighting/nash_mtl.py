"""`nash_mtl`: the Nash bargaining solution of the tasks.

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022.
"""

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


def nash_weights(gram: np.ndarray, iterations: int = 50) -> tuple[np.ndarray, bool]:
    """α ≥ 0 with α_i (K α)_i = 1 for every task with a non-zero gradient (α_i = 0 for the
    others), and whether it was found to 1e-9; if no solution exists, MGDA's weights and
    False (see `NashMTL`)."""
    count = len(gram)
    if not np.isfinite(gram).all():  # non-finite gradients: no answer, and none is made up
        return np.full(count, np.nan), False
    active = np.diag(gram) > 0
    alpha = np.zeros(count)
    if not active.any():  # every gradient is zero: the update is zero whatever α is
        return alpha, True
    sub = gram[np.ix_(active, active)]
    solution, solved = bargain(sub, iterations)
    if not solved:  # no α > 0 exists: MGDA's bounded direction
        weights, _ = min_norm_weights(sub)
        alpha[active] = weights
        return alpha, False
    alpha[active] = solution
    return alpha, True


def bargain(gram: np.ndarray, iterations: int) -> tuple[np.ndarray, bool]:
    """Damped Newton on φ for gradients that are all non-zero: α and whether it solves
    α_i (K α)_i = 1 to 1e-9."""
    scale = float(np.max(np.diag(gram)))
    # Solve for K/scale, whose solution is α·sqrt(scale): the iteration then works on
    # numbers near 1 whatever the size of the gradients.
    matrix = gram / scale
    alpha = 1 / np.sqrt(np.diag(matrix))  # exact for orthogonal gradients

    def objective(point: np.ndarray) -> float:
        return 0.5 * point @ matrix @ point - np.log(point).sum()

    for _ in range(iterations):
        residual = alpha * (matrix @ alpha) - 1
        if np.abs(residual).max() < 1e-12:
            break
        gradient = matrix @ alpha - 1 / alpha
        try:
            step = -np.linalg.solve(matrix + np.diag(1 / alpha**2), gradient)
        except np.linalg.LinAlgError:  # α ran off to infinity: no solution exists
            break
        # Backtrack to stay in α > 0 and decrease φ (Armijo) -- except close to the solution,
        # where φ's decrease is below its rounding error and full Newton steps converge.
        decrement = -gradient @ step
        size, current = 1.0, objective(alpha)
        while size > 1e-12:
            trial = alpha + size * step
            if (trial > 0).all() and (
                decrement < 1e-10 or objective(trial) <= current - 1e-4 * size * decrement
            ):
                break
            size /= 2
        alpha = alpha + size * step
    alpha = alpha / np.sqrt(scale)
    solved = bool(np.isfinite(alpha).all() and (alpha > 0).all())
    return alpha, bool(solved and np.abs(alpha * (gram @ alpha) - 1).max() < 1e-9)

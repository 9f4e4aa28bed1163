"""Small exact solvers on the T x T Gram matrix K = [g_i · g_j] of the task gradients.

They run on the host in float64 (T is small, so the transfer of K is the only cost) and
return a flag saying whether the answer passed its optimality check; the caller counts
failures instead of replacing the answer.
"""

import numpy as np
import torch
from torch import Tensor

# Accepted relative violation of an optimality condition (in units of the largest squared
# gradient norm); the exact solvers below reach ~1e-15 on well-posed problems.
TOLERANCE = 1e-9


def host_gram(grads: Tensor) -> np.ndarray:
    """K = G Gᵀ of the [T, P] gradients, computed where they are, as float64 on the host."""
    return (grads @ grads.T).double().cpu().numpy()


def device_weights(weights: np.ndarray, grads: Tensor) -> Tensor:
    """Solver weights back as a tensor of the gradients' dtype and device."""
    return torch.as_tensor(weights, dtype=grads.dtype).to(grads.device)


def min_norm_weights(gram: np.ndarray) -> tuple[np.ndarray, bool]:
    """Weights w on the simplex minimising ||Σ_i w_i g_i||², i.e. the minimum-norm point of
    the convex hull of the gradients (Sener & Koltun 2018).

    Solved exactly by non-negative least squares: with v ≥ 0 minimising
    ||Σ v_i g_i||² + (Σ v_i - 1)², w = v / Σ v (for fixed Σ v = s the first term is
    s² times the hull problem, so v is a scaled hull solution). Lawson & Hanson's active
    set method solves that in at most a few passes over the tasks.

    Returns:
        The weights [T] and whether they satisfy the optimality condition
        min_i (K w)_i ≥ wᵀK w (the Frank-Wolfe gap is zero) to `TOLERANCE`.
    """
    count = len(gram)
    scale = float(np.max(np.diag(gram), initial=0.0))
    if not np.isfinite(gram).all():  # non-finite gradients: no answer, and none is made up
        return np.full(count, np.nan), False
    if scale <= 0.0:  # every gradient is zero: every weighting is a minimum
        return np.full(count, 1.0 / count), True
    v = nonnegative_least_squares(gram / scale + 1.0, np.ones(count))
    weights = v / v.sum()
    return weights, is_min_norm(gram, weights)


def is_min_norm(gram: np.ndarray, weights: np.ndarray, tolerance: float = TOLERANCE) -> bool:
    """Whether `weights` (on the simplex) minimise ||Σ w_i g_i||² to within `tolerance`."""
    scale = max(float(np.max(np.diag(gram))), np.finfo(float).tiny)
    products = gram @ weights
    gap = float(weights @ products - products.min()) / scale
    simplex = abs(weights.sum() - 1.0) < tolerance and weights.min() >= -tolerance
    return bool(simplex and gap <= tolerance and np.isfinite(weights).all())


def nonnegative_least_squares(matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """argmin_{v ≥ 0} ½ vᵀ A v - bᵀ v for a positive semi-definite A (Lawson & Hanson 1974,
    in normal-equation form: A = MᵀM, b = Mᵀy of the least-squares problem ||Mv - y||²)."""
    count = len(target)
    v = np.zeros(count)
    passive = np.zeros(count, dtype=bool)
    threshold = 1e-13 * max(1.0, float(np.abs(target).max(initial=0.0)))  # none: no target
    for _ in range(3 * count + 10):  # the method ends in a few passes; the cap is a guard
        residual = target - matrix @ v
        candidates = ~passive & (residual > threshold)
        if not candidates.any():
            break
        passive[np.argmax(np.where(candidates, residual, -np.inf))] = True
        for _ in range(count + 1):
            trial = np.zeros(count)
            trial[passive] = np.linalg.lstsq(
                matrix[np.ix_(passive, passive)], target[passive], rcond=None
            )[0]
            if (trial[passive] > 0).all():
                v = trial
                break
            # Step from v toward the trial point until the first passive entry hits zero.
            blocking = passive & (trial <= 0)
            gaps = v[blocking] - trial[blocking]  # >= 0; zero only for an entry just added
            ratios = np.divide(v[blocking], gaps, out=np.zeros_like(gaps), where=gaps > 0)
            step = ratios.min()
            v = v + step * (trial - v)
            passive &= v > threshold
            v[~passive] = 0.0
    return v


def dual_cone_weights(gram: np.ndarray, preference: np.ndarray) -> np.ndarray:
    """Weights w with Σ w_i g_i the projection of Σ u_i g_i (u = `preference`) onto the
    dual cone of the gradients, {d : ⟨g_i, d⟩ ≥ 0 for every i}.

    The projection's dual is min over w ≥ u of wᵀKw (as in Quinton & Rey 2024 and
    Lopez-Paz & Ranzato 2017): with w = u + λ, a non-negative least-squares
    problem in λ, solved on K scaled to unit size.
    """
    scale = float(np.max(np.diag(gram), initial=0.0))
    if scale <= 0.0 or not np.isfinite(gram).all():
        return preference.copy()
    matrix = gram / scale
    return preference + nonnegative_least_squares(matrix, -matrix @ preference)

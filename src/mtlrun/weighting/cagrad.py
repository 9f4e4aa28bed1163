"""`cagrad`: Conflict-Averse Gradient descent.

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021.
"""

from collections.abc import Callable

import numpy as np
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.solvers import TOLERANCE, device_weights, host_gram, min_norm_weights

# ||g_w|| computed from K carries rounding noise of about sqrt(eps)·max_i ||g_i||; below this
# multiple of max_i ||g_i|| it is treated as zero.
NEGLIGIBLE_NORM = 1e-6


class CAGrad(GradientWeighting):
    """Maximise the worst task's improvement within a ball around the average gradient.

    With g0 the average gradient and r = c·||g0||, the update d maximises min_i ⟨g_i, d⟩
    over ||d - g0|| ≤ r. Its dual is min over the simplex of F(w) = ⟨g_w, g0⟩ + r·||g_w||
    (g_w = Σ w_i g_i), and d = g0 + r / ||g_w|| · g_w. We solve the dual exactly: writing
    ||g_w|| = min_t (||g_w||²/t + t)/2 turns it into a one-dimensional search over t whose
    inner problem is the nearest point of the gradients' hull to -(t/r)·g0, a minimum-norm
    problem; the optimal t is the root of t = ||g_w(t)||, found by safeguarded regula falsi.

    Args:
        c: radius of the ball relative to ||g0|| (0 gives the average gradient; the paper
            uses 0.4 for its vision benchmarks).
        rescale: divide d by 1 + c², as the authors' code does, so its size stays close
            to that of g0 (the paper's algorithm does not).
    """

    solves = True

    def __init__(self, c: float = 0.4, rescale: bool = False) -> None:
        super().__init__()
        if not 0 <= c < 1:
            raise UserError(f"weighting.c must be in [0, 1), got {c}")
        self.c = c
        self.rescale = rescale

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        gram = host_gram(grads)
        coefficients, solved = cagrad_coefficients(gram, self.c)
        self.count_failure(not solved)
        if self.rescale:
            coefficients = coefficients / (1 + self.c**2)
        weights = device_weights(coefficients, grads)
        return weights @ grads, weights


def cagrad_coefficients(gram: np.ndarray, c: float) -> tuple[np.ndarray, bool]:
    """The coefficients of d = Σ_i (1/T + λ w_i) g_i, and whether the dual was solved.

    Args:
        gram: K = [g_i · g_j], [T, T].
        c: the ball's radius relative to the average gradient's norm.
    """
    weights, solved = cagrad_dual(gram, c)
    count = len(gram)
    radius = c * np.sqrt(max(gram.sum(), 0.0)) / count
    norm = np.sqrt(max(weights @ gram @ weights, 0.0))
    # With g_w = 0 (0 in the hull and F ≥ 0 on it) the direction g_w / ||g_w|| is undefined,
    # and d = g0 is used.
    largest = np.sqrt(max(float(np.max(np.diag(gram), initial=0.0)), 0.0))
    multiplier = radius / norm if norm > NEGLIGIBLE_NORM * largest else 0.0
    return 1.0 / count + multiplier * weights, solved


def cagrad_dual(gram: np.ndarray, c: float, iterations: int = 100) -> tuple[np.ndarray, bool]:
    """argmin over the simplex of F(w) = wᵀK 1/T + r·sqrt(wᵀKw), with r = c·||g0||.

    Returns:
        The weights and whether the solve met its optimality check.
    """
    count = len(gram)
    uniform = np.full(count, 1.0 / count)
    if not np.isfinite(gram).all():  # non-finite gradients: no answer, and none is made up
        return np.full(count, np.nan), False
    towards_mean = gram.sum(axis=1) / count  # K 1/T = [g_i · g0]
    mean_norm_sq = max(gram.sum() / count**2, 0.0)  # ||g0||²
    radius = c * np.sqrt(mean_norm_sq)
    scale = float(np.max(np.diag(gram), initial=0.0))
    if radius <= 0.0 or scale <= 0.0:  # F is linear (or zero): d = g0 whatever w is
        return uniform, True

    def nearest(t: float) -> tuple[np.ndarray, float, bool]:
        """Hull point nearest to -(t/r) g0: its weights, t - its norm, solve flag."""
        s = t / radius
        shifted = gram + s * (towards_mean[:, None] + towards_mean[None, :]) + s * s * mean_norm_sq
        weights, solved = min_norm_weights(shifted)
        return weights, t - np.sqrt(max(weights @ gram @ weights, 0.0)), solved

    # ψ(t) = t - ||g_w(t)|| has the sign of the derivative of the convex function minimised
    # over t > 0, so it is < 0 left of the optimum and > 0 right of it: a bracketed root.
    # The low end starts above 0, where ψ(0) = 0 would be a false root when 0 lies in the
    # hull, and above the rounding noise of ||g_w||; the high end is the largest gradient
    # norm, where ψ ≥ 0.
    low, high = NEGLIGIBLE_NORM * np.sqrt(scale), np.sqrt(scale)
    weights, value_low, solved = nearest(low)
    if value_low >= 0:
        # The optimum lies in (0, low]; since the function minimised over t has slope at most
        # r/2, F(w) exceeds the minimum by at most r·low/2: optimal to 1e-6 relative.
        return weights, solved
    tolerance = 1e-13 * np.sqrt(scale)
    weights, solved = illinois_root(
        nearest, low, high, (weights, value_low, solved), tolerance, iterations
    )
    return weights, solved and is_cagrad_optimal(gram, weights, c)


def illinois_root(
    gap: Callable[[float], tuple[np.ndarray, float, bool]],
    low: float,
    high: float,
    at_low: tuple[np.ndarray, float, bool],
    tolerance: float,
    iterations: int,
) -> tuple[np.ndarray, bool]:
    """The root of ψ(t) = `gap(t)[1]` bracketed by ψ(low) < 0 <= ψ(high): the weights `gap`
    gives there, and whether the search converged with every solve on the way flagged good.

    Args:
        gap: t -> (weights, ψ(t), solve flag), as `cagrad_dual`'s `nearest`.
        at_low: `gap(low)`, already evaluated.
        tolerance: stop when the bracket or |ψ| is this small.
    """
    weights, value_low, solved = at_low
    _, value_high, _ = gap(high)
    side = 0
    for _ in range(iterations):
        if high - low <= tolerance:
            break
        # Regula falsi with the Illinois modification: halve a stale end's value so both
        # ends keep moving and convergence stays superlinear.
        middle = (low * value_high - high * value_low) / (value_high - value_low)
        if not low < middle < high:
            middle = 0.5 * (low + high)
        weights, value, solved = gap(middle)
        if abs(value) <= tolerance:
            break
        if value < 0:
            low, value_low = middle, value
            value_high = value_high / 2 if side == -1 else value_high
            side = -1
        else:
            high, value_high = middle, value
            value_low = value_low / 2 if side == 1 else value_low
            side = 1
    else:
        solved = False
    return weights, solved


def is_cagrad_optimal(
    gram: np.ndarray, weights: np.ndarray, c: float, tolerance: float = 1e-7
) -> bool:
    """Whether `weights` minimise CAGrad's dual to within `tolerance`: on the simplex, with
    no vertex direction decreasing F (Frank-Wolfe gap ∇F·w - min_i ∇F_i ≈ 0)."""
    count = len(gram)
    scale = max(float(np.max(np.diag(gram))), np.finfo(float).tiny)
    radius = c * np.sqrt(max(gram.sum(), 0.0)) / count
    products = gram @ weights
    norm = np.sqrt(max(weights @ products, 0.0))
    if not np.isfinite(weights).all() or abs(weights.sum() - 1) > TOLERANCE:
        return False
    if norm <= NEGLIGIBLE_NORM * np.sqrt(scale):
        return False  # F is not differentiable here; cagrad_dual certifies this case itself
    gradient = gram.sum(axis=1) / count + radius * products / norm
    gap = (weights @ gradient - gradient.min()) / scale
    return bool(weights.min() >= -TOLERANCE and gap <= tolerance)

"""`cagrad`: Conflict-Averse Gradient descent.

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021.
"""

import numpy as np
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.solvers import (
    device_weights,
    host_gram,
    min_norm_weights,
    nonnegative_least_squares,
)

# A solve is certified when its duality gap is below GAP_TOLERANCE·||g_i||·max_j ||g_j|| (g_i
# the worst-served task, so that a small gradient is judged at its own scale) and it leaves
# the ball by less than ROUNDING·max_j ||g_j||² in squared distance; failures are counted.
GAP_TOLERANCE = 1e-9
ROUNDING = 1e-12


class CAGrad(GradientWeighting):
    """Maximise the worst task's improvement within a ball around the average gradient.

    With g0 the average gradient and r = c·||g0||, the update d solves the paper's primal
    problem max_d min_i ⟨g_i, d⟩ s.t. ||d - g0|| ≤ r. The paper goes through the
    dual, min over the simplex of F(w) = ⟨g_w, g0⟩ + r·||g_w|| (g_w = Σ w_i g_i), and
    d = g0 + r·g_w/||g_w||, which is undefined when g_w = 0 (0 in the gradients' hull, e.g.
    two opposite gradients) and, computed from the Gram matrix, lost in rounding when
    ||g_w|| is tiny next to the largest gradient (norms spread over many decades). We solve
    the primal directly instead: for a level v, the point of {d: ⟨g_i, d⟩ ≥ v ∀i} nearest g0
    is a small non-negative least-squares problem (`nearest_improving`), its distance to
    g0 grows with v, and the optimum is the largest v whose point lies in the ball
    (`best_level`, a safeguarded regula falsi on that distance). That d coincides with the
    paper's where the formula holds, and is optimal (the one nearest g0) where it does not.
    Each solve is certified by its duality gap, F(w) with w ∝ the multipliers minus
    min_i ⟨g_i, d⟩, and its distance to g0; failed certificates are counted.

    Args:
        c: radius of the ball relative to ||g0|| (0 gives the average gradient; the paper
            uses 0.4 for its vision benchmarks, LibMTL's default is 0.5 with rescale).
        rescale: divide d by 1 + c², as the authors' code (and LibMTL) does, so its size
            stays close to that of g0 (the paper's algorithm does not).
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
    """The coefficients α of the primal solution d = Σ_i α_i g_i, and whether the solve is
    certified (duality gap and ball constraint within the tolerances above).

    Args:
        gram: K = [g_i · g_j], [T, T].
        c: the ball's radius relative to the average gradient's norm.
    """
    count = len(gram)
    uniform = np.full(count, 1.0 / count)
    if not np.isfinite(gram).all():  # non-finite gradients: no answer, and none is made up
        return np.full(count, np.nan), False
    scale = float(np.max(np.diag(gram), initial=0.0))
    if c == 0 or scale <= 0.0 or gram.sum() <= 0.0:  # the ball is the point g0
        return uniform, True
    towards_mean = gram.sum(axis=1) / count  # [g_i · g0]
    radius = c * np.sqrt(gram.sum()) / count
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    # ⟨g_i, d⟩ ≤ ⟨g_i, g0⟩ + r||g_i|| in the ball, and F at any point of the simplex bounds
    # the optimum from above; F at the hull's minimum-norm point is 0 when 0 is in the hull
    # (then no level above 0 is reachable and the bound is tight).
    low = float(towards_mean.min())
    high = float((towards_mean + radius * norms).min())
    high = min(high, cagrad_dual_value(gram, min_norm_weights(gram)[0], c))
    multipliers = best_level(gram, radius, low, high)
    # Where d is on the sphere, the normalised multipliers are the dual's optimum: a tight
    # bound for the certificate.
    bound = high
    if multipliers.sum() > 0:
        bound = min(bound, cagrad_dual_value(gram, multipliers / multipliers.sum(), c))
    coefficients = uniform + multipliers
    return coefficients, is_primal_optimal(gram, coefficients, bound, c)


def best_level(
    gram: np.ndarray, radius: float, low: float, high: float, iterations: int = 100
) -> np.ndarray:
    """Multipliers λ of the largest level v in [low, high] whose nearest improving point
    d = g0 + Σ λ_i g_i lies within `radius` of g0 (at `low` it is g0 itself).

    The excess ||d - g0|| - r is non-decreasing in v (the sets shrink as v grows) and
    infinite where no d reaches v; regula falsi with the Illinois modification keeps a
    bracket whose low end is always a point in the ball, and returns that point.
    """
    scale = float(np.max(np.diag(gram)))

    def excess(level: float) -> tuple[np.ndarray, float]:
        step = nearest_improving(gram, level)
        reached = gram @ (step + 1.0 / len(gram))
        if (reached < level - ROUNDING * scale).any():  # the level is out of reach
            return step, radius
        return step, np.sqrt(max(float(step @ gram @ step), 0.0)) - radius

    best, at_low = np.zeros(len(gram)), -radius
    high = max(low, high - ROUNDING * scale)
    step, at_high = excess(high)
    if at_high <= 0:  # the upper bound is reached (to rounding): optimal
        return step
    side = 0
    for _ in range(iterations):
        if high - low <= 1e-15 * max(abs(low), abs(high)) + ROUNDING * scale:
            break
        middle = (low * at_high - high * at_low) / (at_high - at_low)
        if not low < middle < high:
            middle = 0.5 * (low + high)
        step, value = excess(middle)
        if value <= 0:
            low, at_low, best = middle, value, step
            if value >= -ROUNDING * radius:  # on the ball's boundary: optimal
                break
            at_high, side = (at_high / 2 if side == -1 else at_high), -1
        else:
            high, at_high = middle, value
            at_low, side = (at_low / 2 if side == 1 else at_low), 1
    return best


def cagrad_dual_value(gram: np.ndarray, weights: np.ndarray, c: float) -> float:
    """F(w) = ⟨g_w, g0⟩ + c·||g0||·||g_w||."""
    count = len(gram)
    radius = c * np.sqrt(max(gram.sum(), 0.0)) / count
    return float(weights @ gram.sum(axis=1) / count) + radius * np.sqrt(
        max(float(weights @ gram @ weights), 0.0)
    )


def nearest_improving(gram: np.ndarray, level: float) -> np.ndarray:
    """λ ≥ 0 such that d = g0 + Σ λ_i g_i is the point nearest g0 with ⟨g_i, d⟩ ≥ `level`
    for every i: the dual of that projection, min_λ≥0 ½λᵀKλ - λᵀ(level·1 - K1/T), solved
    by non-negative least squares on K scaled to unit size."""
    count = len(gram)
    scale = float(np.max(np.diag(gram)))
    target = (level - gram.sum(axis=1) / count) / scale
    return nonnegative_least_squares(gram / scale, target)


def is_primal_optimal(gram: np.ndarray, coefficients: np.ndarray, value: float, c: float) -> bool:
    """Whether d = Σ α_i g_i lies in the ball and improves the worst task by the dual value
    `value` (an upper bound of the optimum, by weak duality), to the tolerances above: a
    certificate that does not trust the dual solve."""
    count = len(gram)
    scale = float(np.max(np.diag(gram)))
    radius_sq = c * c * max(gram.sum(), 0.0) / count**2
    step = coefficients - 1.0 / count
    inside = float(step @ gram @ step) <= radius_sq + ROUNDING * scale
    improvements = gram @ coefficients
    worst = int(np.argmin(improvements))
    allowed = GAP_TOLERANCE * np.sqrt(gram[worst, worst] * scale) + ROUNDING * scale
    gap = value - float(improvements[worst])
    return bool(np.isfinite(coefficients).all() and inside and gap <= allowed)

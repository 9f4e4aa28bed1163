"""`fairgrad`: α-fair resource allocation among the tasks.

Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024.
"""

from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.nash_mtl import nash_weights
from mtlrun.weighting.solvers import device_weights, host_gram


class FairGrad(GradientWeighting):
    """Update along d = Σ w_i g_i where w > 0 solves K w = w^(-1/α) (the paper's eq. 4:
    the α-fair utility's optimality condition, ⟨g_i, d⟩ = w_i^(-1/α)). α = 1 is Nash-MTL's
    bargaining condition; α → ∞ approaches the max-min (worst task) allocation.

    Solved by damped Newton steps on a strictly convex potential (see
    `nash_mtl.bargain`), with Nash-MTL's handling of degenerate cases: a zero-gradient task
    gets w = 0, and when no solution exists the MGDA direction is used and counted as a
    failure. (The authors' code and TorchJD minimise the residual with
    scipy.optimize.least_squares instead.)

    Args:
        alpha: the fairness α > 0 (LibMTL's default 1.0).
        iterations: cap on the Newton steps.
    """

    solves = True

    def __init__(self, alpha: float = 1.0, iterations: int = 50) -> None:
        super().__init__()
        if alpha <= 0:
            raise UserError(f"weighting.alpha must be > 0, got {alpha}")
        self.alpha = alpha
        self.iterations = iterations

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        weights, solved = nash_weights(host_gram(grads), self.iterations, self.alpha)
        self.count_failure(not solved)
        tensor = device_weights(weights, grads)
        return tensor @ grads, tensor

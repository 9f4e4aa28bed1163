"""`mgda`: the multiple-gradient descent algorithm, and its cheaper upper bound MGDA-UB.

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018.
"""

from torch import Tensor

from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.solvers import device_weights, host_gram, min_norm_weights


class MGDA(GradientWeighting):
    """Update along the minimum-norm point of the convex hull of the task gradients, a
    direction that decreases every task's loss unless the point is Pareto-stationary.

    The min-norm problem is solved exactly (see `solvers.min_norm_weights`) rather than by
    the paper's Frank-Wolfe iterations.

    Args:
        on: "parameters" (MGDA: gradients on the shared parameters) or "features"
            (MGDA-UB: gradients on the shared representation, which needs one backward
            through the backbone instead of one per task).
    """

    sides = ("parameters", "features")
    solves = True

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        gram = host_gram(grads)
        solution, solved = min_norm_weights(gram)
        self.count_failure(not solved)
        weights = device_weights(solution, grads)
        return weights @ grads, weights

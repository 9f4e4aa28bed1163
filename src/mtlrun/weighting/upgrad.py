"""`upgrad`: unconflicting projection of gradients.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232, 2024.
"""

import numpy as np
from torch import Tensor

from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.solvers import device_weights, dual_cone_weights, host_gram


class UPGrad(GradientWeighting):
    """Project every task gradient onto the dual cone of all of them,
    {d : ⟨g_i, d⟩ ≥ 0 for every i}, and average the projections (the paper's aggregator with
    the uniform preference 1/T, TorchJD's default). The update conflicts with no task,
    and equals the average gradient when no two gradients conflict.

    Each projection is solved exactly from the Gram matrix (`solvers.dual_cone_weights`).
    """

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        gram = host_gram(grads)
        count = len(gram)
        total = sum(dual_cone_weights(gram, row) for row in np.eye(count) / count)
        weights = device_weights(np.asarray(total), grads)
        return weights @ grads, weights

"""`dualproj`: the average gradient projected onto the dual cone of the task gradients.

Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017
(eq. 11); as an aggregator in Quinton & Rey, "Jacobian Descent for Multi-Objective
Optimization", arXiv:2406.16232, 2024.
"""

import numpy as np
from torch import Tensor

from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.solvers import device_weights, dual_cone_weights, host_gram


class DualProj(GradientWeighting):
    """Step along the point nearest the average gradient that conflicts with no task: the
    projection of g0 = Σ g_i / T onto {d : ⟨g_i, d⟩ ≥ 0 for every i}, solved exactly from
    the Gram matrix (`solvers.dual_cone_weights`)."""

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        gram = host_gram(grads)
        weights = dual_cone_weights(gram, np.full(len(gram), 1.0 / len(gram)))
        tensor = device_weights(weights, grads)
        return tensor @ grads, tensor

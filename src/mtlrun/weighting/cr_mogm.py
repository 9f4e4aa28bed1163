"""`cr_mogm`: correlation-reduced stochastic multi-objective gradient manipulation.

Zhou, Zhang, Jiang, Zhong, Gu & Zhu, "On the Convergence of Stochastic Multi-Objective
Gradient Manipulation and Beyond", NeurIPS 2022.
"""

import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.solvers import device_weights, host_gram, min_norm_weights


class CRMOGM(GradientWeighting):
    """MGDA with its weights smoothed over the steps: λ_k = α λ_{k-1} + (1 - α) λ̂_k, λ̂_k
    the minimum-norm weights of this step's gradients (the paper's correlation-reduced
    MOGM, which removes the bias that stochastic gradients give MGDA's weights); λ_1 = λ̂_1,
    as in TorchJD. The update is Σ λ_k,t g_t.

    Args:
        alpha: the weight α of the previous weights (0 is MGDA).
    """

    solves = True
    smoothed: Tensor
    started: Tensor

    def __init__(self, alpha: float = 0.9) -> None:
        super().__init__()
        if not 0 <= alpha < 1:
            raise UserError(f"weighting.alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        self.register_buffer("smoothed", torch.zeros(len(task_names), dtype=torch.float64))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        current, solved = min_norm_weights(host_gram(grads))
        self.count_failure(not solved)
        fresh = device_weights(current, self.smoothed)
        mixed = self.alpha * self.smoothed + (1 - self.alpha) * fresh
        self.smoothed.copy_(torch.where(self.started, mixed, fresh))
        self.started.fill_(True)
        weights = self.smoothed.to(grads)
        return weights @ grads, weights

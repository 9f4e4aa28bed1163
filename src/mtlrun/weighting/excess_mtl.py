"""`excess_mtl`: robust multi-task learning with excess risks.

He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao, "Robust Multi-Task Learning with Excess
Risks", ICML 2024.
"""

import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import GradientWeighting


class ExcessMTL(GradientWeighting):
    """Weigh the tasks by their estimated excess risk, the distance of each task's loss to
    its own optimum, instead of the loss itself (robust to label noise in one task).

    Each step, the excess risk of task t is estimated as gᵀ H_t⁻¹ g with H_t the
    AdaGrad-style diagonal √(Σ_steps g_t² + 1e-7) (the paper's eqs. 6-7); the estimate is
    divided by the first step's (scale processing, its section 3.2) and the weights take
    an exponentiated-gradient step w_t ← w_t exp(η e_t), renormalised to sum to T (eq. 9).
    The update is Σ_t w_t g_t. LibMTL's weights also sum to T; TorchJD's sum to 1.

    Args:
        robust_step_size: η (LibMTL's default 0.01).
    """

    sized_on_first_step = ("squares",)
    squares: Tensor
    baseline: Tensor
    weights: Tensor
    steps: Tensor

    def __init__(self, robust_step_size: float = 0.01) -> None:
        super().__init__()
        if robust_step_size < 0:
            raise UserError(f"weighting.robust_step_size must be >= 0, got {robust_step_size}")
        self.robust_step_size = robust_step_size

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        count = len(task_names)
        self.register_buffer("squares", torch.zeros(0))
        self.register_buffer("baseline", torch.ones(count))
        self.register_buffer("weights", torch.ones(count))
        self.register_buffer("steps", torch.zeros(()))

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        if self.squares.shape != grads.shape:
            self.squares = torch.zeros_like(grads)
        self.squares.add_(grads * grads)
        excess = (grads * grads / (self.squares + 1e-7).sqrt()).sum(1)
        first = self.steps == 0
        self.baseline.copy_(torch.where(first, excess, self.baseline))
        ratio = excess / self.baseline.clamp_min(torch.finfo(excess.dtype).tiny)
        grown = self.weights * torch.exp(self.robust_step_size * ratio)
        grown = grown / grown.sum() * len(grown)
        self.weights.copy_(torch.where(first, self.weights, grown))
        self.steps += 1
        weights = self.weights.to(grads)
        return weights @ grads, weights

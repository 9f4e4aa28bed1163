"""`db_mtl`: dual-balancing multi-task learning.

Lin, Ye, Xu, Shi, Zhang & Kwok, "Dual-Balancing for Multi-Task Learning", arXiv:2308.12029,
2023.
"""

import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import LOSS_FLOOR, GradientWeighting


class DBMTL(GradientWeighting):
    """Balance the losses by a logarithm and the gradients by their norms (the paper's
    algorithm): the gradient of log L_t is g_t / L_t; an exponential moving average
    ĝ_t ← r_k ĝ_t + (1 - r_k) g_t / L_t (r_k = β / k^σ at step k, ĝ starting at 0) smooths
    it; the update Σ_t (max_s ||ĝ_s|| / ||ĝ_t||) ĝ_t gives every task the largest task's
    gradient size. The reported weight of a task is its scale max_s ||ĝ_s|| / ||ĝ_t||
    (0 for a task whose average is zero).

    The averages live in a [T, P] buffer of the state (checkpointed), so only the shared
    parameters' gradients are supported (their size does not change between batches).

    Args:
        beta: the average's rate β (LibMTL's default 0.9).
        beta_sigma: its decay σ over the steps (LibMTL's default 0: constant).
    """

    sized_on_first_step = ("averages",)
    averages: Tensor
    steps: Tensor

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        super().__init__()
        if not 0 <= beta < 1:
            raise UserError(f"weighting.beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.beta_sigma = beta_sigma
        self.uses_losses = True

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        self.register_buffer("averages", torch.zeros(0))
        self.register_buffer("steps", torch.zeros((), dtype=torch.float64))

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        losses = self.loss_values
        if losses is None:
            raise UserError("DB-MTL needs the losses: call `backward`, not `combine`")
        if self.averages.shape != grads.shape:
            self.averages = torch.zeros_like(grads)
        log_grads = grads / losses.to(grads).clamp_min(LOSS_FLOOR)[:, None]
        self.steps += 1
        rate = self.beta / self.steps**self.beta_sigma
        self.averages.copy_(log_grads + rate.to(grads) * (self.averages - log_grads))
        norms = self.averages.norm(dim=1)
        scales = torch.where(norms > 0, norms.max() / norms.clamp_min(1e-30), 0.0)
        return scales @ self.averages, scales

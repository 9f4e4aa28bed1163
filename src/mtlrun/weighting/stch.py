"""`stch`: smooth Tchebycheff scalarisation.

Lin, Zhang, Zhang, Liu & Zhang, "Smooth Tchebycheff Scalarization for Multi-Objective
Optimization", ICML 2024.
"""

import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import LOSS_FLOOR, StepContext, Weighting


class STCH(Weighting):
    """Minimise the smooth maximum μ log Σ_t exp(f_t / μ) of the normalised log-losses
    f_t = log(L_t / z_t) (the paper's smooth Tchebycheff scalarisation with equal
    preferences, on log-losses as its multi-task experiments and LibMTL do), times T so
    that its size matches a sum of T losses. As μ → 0 it approaches the worst task's f_t
    (Tchebycheff); each task's weight is softmax(f / μ)_t · T / L_t.

    During the first `warmup_epochs` epochs the loss is Σ_t log L_t and the losses of the
    last warm-up epoch are averaged into the nadir point z (the authors' MTL code and
    LibMTL do the same); with no warm-up, z = 1.

    Args:
        mu: the smoothing μ > 0 (LibMTL's default 1.0).
        warmup_epochs: epochs of Σ log L_t before z is fixed (LibMTL's default 4).
    """

    nadir: Tensor
    loss_sum: Tensor
    loss_count: Tensor

    def __init__(self, mu: float = 1.0, warmup_epochs: int = 4) -> None:
        super().__init__()
        if mu <= 0:
            raise UserError(f"weighting.mu must be > 0, got {mu}")
        self.mu = mu
        self.warmup_epochs = warmup_epochs

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        count = len(task_names)
        self.register_buffer("nadir", torch.ones(count))
        self.register_buffer("loss_sum", torch.zeros(count))
        self.register_buffer("loss_count", torch.zeros(()))

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        vector = self.loss_vector(losses).clamp_min(LOSS_FLOOR)
        count = len(vector)
        if context.epoch < self.warmup_epochs:
            if context.epoch == self.warmup_epochs - 1:
                self.loss_sum += vector.detach()
                self.loss_count += 1
            vector.log().sum().backward()
            return self.named_weights(1 / vector)
        # The first step after the warm-up fixes z (without reading the flag on the host).
        fix = self.loss_count > 0
        self.nadir.copy_(torch.where(fix, self.loss_sum / self.loss_count.clamp_min(1), self.nadir))
        self.loss_sum.mul_(~fix)
        self.loss_count.mul_(~fix)
        normalised = (vector / self.nadir).log()
        (self.mu * torch.logsumexp(normalised / self.mu, 0) * count).backward()
        shares = torch.softmax(normalised.detach() / self.mu, 0)
        return self.named_weights(shares * count / vector.detach())

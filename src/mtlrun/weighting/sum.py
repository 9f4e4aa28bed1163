"""`sum`: the plain sum of the task losses."""

import torch
from torch import Tensor

from mtlrun.weighting.base import StepContext, Weighting


class Sum(Weighting):
    """Minimise Σ_t L_t: every task has weight 1."""

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        torch.stack(list(losses.values())).sum().backward()
        one = torch.ones((), device=context.features.device)
        return {name: one for name in losses}

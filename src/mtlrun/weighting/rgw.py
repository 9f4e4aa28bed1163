"""`rgw`: random gradient weighting.

Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022 (the gradient-side variant; LibMTL's RGW).
"""

import torch
from torch import Tensor

from mtlrun.weighting.base import GradientWeighting


class RandomGradientWeighting(GradientWeighting):
    """Update along Σ_t λ_t g_t with λ = softmax(z), z ~ N(0, I) drawn afresh every step:
    `rlw`'s random weights applied to the shared part's task gradients instead of the
    losses (the heads get their own task's plain gradient, as with every gradient method).
    The draws come from torch's global generator, whose state checkpoints carry."""

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        weights = torch.softmax(torch.randn(len(grads), device=grads.device), dim=0)
        weights = weights.to(grads.dtype)
        return weights @ grads, weights

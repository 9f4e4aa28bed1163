"""`rlw`: random loss weighting.

Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022.
"""

import torch
from torch import Tensor

from mtlrun.weighting.base import StepContext, Weighting


class RandomLossWeighting(Weighting):
    """Minimise Σ_t λ_t L_t with λ = softmax(z), z ~ N(0, I) drawn afresh every step (the
    paper's default distribution); the weights sum to 1.

    The draws come from torch's global generator, whose state checkpoints carry.
    """

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        vector = self.loss_vector(losses)
        weights = torch.softmax(torch.randn(len(vector), device=vector.device), dim=0)
        (weights * vector).sum().backward()
        return self.named_weights(weights)

"""`uw`: uncertainty weighting.

Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
Geometry and Semantics", CVPR 2018.
"""

import torch
from torch import Tensor, nn

from mtlrun.weighting.base import StepContext, Weighting


class UncertaintyWeighting(Weighting):
    """Minimise Σ_t ½ exp(-s_t) L_t + ½ s_t over the network and the learned log-variances
    s_t = log σ_t² (the Gaussian-likelihood form of the paper's objective, used for every
    task). For a fixed loss the optimum is s_t = log L_t, so each task's weight ½ exp(-s_t)
    settles at 1 / (2 L_t).

    The s_t are parameters: they join the run's optimizer.

    Args:
        init: initial log-variance of every task (0: weight ½; LibMTL starts at -0.5,
            weight ½e^0.5 ≈ 0.82: set init=-0.5 to compare with it).
    """

    def __init__(self, init: float = 0.0) -> None:
        super().__init__()
        self.init = init

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        self.log_variances = nn.Parameter(torch.full((len(task_names),), float(self.init)))

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        weights = 0.5 * torch.exp(-self.log_variances)
        (weights * self.loss_vector(losses) + 0.5 * self.log_variances).sum().backward()
        return self.named_weights(weights)

    def extra_scalars(self) -> dict[str, Tensor | float]:
        values = self.log_variances.detach().unbind()
        return {
            f"log_variance/{name}": value
            for name, value in zip(self.task_names, values, strict=True)
        }

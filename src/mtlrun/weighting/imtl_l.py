"""`imtl_l`: impartial multi-task learning, loss balance (IMTL-L).

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021 (the loss-balance half; `imtl` is the gradient half, IMTL-G).
"""

import torch
from torch import Tensor, nn

from mtlrun.weighting.base import StepContext, Weighting


class IMTLL(Weighting):
    """Minimise Σ_t (e^{s_t} L_t - s_t) over the network and learned scales s_t: the
    network's gradient weighs task t by e^{s_t}, and ∂/∂s_t = e^{s_t} L_t - 1 = 0 drives
    each scaled loss e^{s_t} L_t to 1, so every task's loss counts equally whatever its
    scale. The s_t are parameters and join the run's optimizer.

    Args:
        init: initial s_t of every task (0: weight 1).
    """

    def __init__(self, init: float = 0.0) -> None:
        super().__init__()
        self.init = init

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        self.scales = nn.Parameter(torch.full((len(task_names),), float(self.init)))

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        weights = torch.exp(self.scales)
        (weights * self.loss_vector(losses) - self.scales).sum().backward()
        return self.named_weights(weights)

"""`gls`: the geometric loss strategy.

Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream Feature Aggregation
and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019.
"""

from torch import Tensor

from mtlrun.weighting.base import LOSS_FLOOR, StepContext, Weighting


class GeometricLoss(Weighting):
    """Minimise the geometric mean of the task losses, (Π_t L_t)^(1/T). Its gradient is
    Σ_t G / (T L_t) ∇L_t (G the geometric mean): task t's weight G / (T L_t), so a task
    whose loss is small relative to the others counts more, and rescaling one loss by a
    constant only rescales the update."""

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        vector = self.loss_vector(losses).clamp_min(LOSS_FLOOR)
        geometric = vector.log().mean().exp()
        geometric.backward()
        return self.named_weights(geometric.detach() / (len(vector) * vector.detach()))

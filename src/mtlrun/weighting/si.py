"""`si`: the scale-invariant baseline, Σ_t log L_t.

As defined among the baselines of Navon et al., "Multi-Task Learning as a Bargaining
Game", ICML 2022.
"""

from torch import Tensor

from mtlrun.weighting.base import LOSS_FLOOR, StepContext, Weighting


class ScaleInvariant(Weighting):
    """Minimise Σ_t log L_t: multiplying a task's loss by a constant leaves the update
    unchanged. Its gradient is Σ_t ∇L_t / L_t, so task t's weight is 1 / L_t."""

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        vector = self.loss_vector(losses).clamp_min(LOSS_FLOOR)
        vector.log().sum().backward()
        return self.named_weights(1 / vector)

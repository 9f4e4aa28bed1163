"""`mean`: the average of the task losses (TorchJD's Mean, LibMTL's EW divided by T)."""

from torch import Tensor

from mtlrun.weighting.base import StepContext, Weighting


class Mean(Weighting):
    """Minimise Σ_t L_t / T: `sum` scaled by 1/T, so that the step size does not grow with
    the number of tasks."""

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        vector = self.loss_vector(losses)
        vector.mean().backward()
        return self.named_weights(vector.new_full(vector.shape, 1 / len(vector)))

"""`dwa`: dynamic weight average.

Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019.
"""

import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import StepContext, Weighting


class DynamicWeightAverage(Weighting):
    """Minimise Σ_k w_k L_k with w_k = K softmax_k(r_k / T), where r_k = L_k(e-1) / L_k(e-2)
    is the ratio of task k's average training loss over the previous two epochs; w_k = 1
    until two epochs are complete.

    Each step adds the losses to the running sums of its epoch; the first step of a new
    epoch (`context.epoch` changed) closes the previous one. All of it stays on the device
    (no branch reads a value back), and the sums and history are buffers, so a resumed run
    continues with the same weights.

    Args:
        temperature: T; larger values make the weights more even.
    """

    # Buffers (register_buffer), typed for the checker: nn.Module's __getattr__ is not.
    epoch_sums: Tensor
    epoch_steps: Tensor
    running_epoch: Tensor
    history: Tensor
    epochs_done: Tensor

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise UserError(f"weighting.temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        count = len(task_names)
        self.register_buffer("epoch_sums", torch.zeros(count))  # of the epoch in progress
        self.register_buffer("epoch_steps", torch.zeros(()))
        self.register_buffer("running_epoch", torch.full((), -1, dtype=torch.long))
        self.register_buffer("history", torch.ones(2, count))  # averages of epochs e-2, e-1
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.long))

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        vector = self.loss_vector(losses)
        self.record(vector.detach(), context.epoch)
        ratios = self.history[1] / self.history[0].clamp_min(torch.finfo(vector.dtype).tiny)
        weights = len(vector) * torch.softmax(ratios / self.temperature, dim=0)
        weights = torch.where(self.epochs_done >= 2, weights, torch.ones_like(weights))
        (weights * vector).sum().backward()
        return self.named_weights(weights)

    def record(self, losses: Tensor, epoch: int) -> None:
        """Add one step's losses to the running epoch, closing the previous one first."""
        new_epoch = self.running_epoch != epoch
        closing = new_epoch & (self.epoch_steps > 0)
        average = self.epoch_sums / self.epoch_steps.clamp_min(1)
        shifted = torch.stack([self.history[1], average])
        self.history.copy_(torch.where(closing, shifted, self.history))
        self.epochs_done += closing.to(torch.long)
        self.epoch_sums.copy_(torch.where(new_epoch, losses, self.epoch_sums + losses))
        self.epoch_steps.copy_(torch.where(new_epoch, 1.0, self.epoch_steps + 1))
        self.running_epoch.fill_(epoch)

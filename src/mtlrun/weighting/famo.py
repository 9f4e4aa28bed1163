"""`famo`: fast adaptive multitask optimization.

Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.
"""

import torch
from torch import Tensor

from mtlrun.weighting.base import LOSS_FLOOR, StepContext, Weighting, adam_step


class FAMO(Weighting):
    """Decrease every task's log-loss at about the same rate, from the losses alone.

    The network follows the gradient of Σ_i c z_i log L_i, i.e. task i has weight
    c z_i / L_i, where z = softmax(ξ) and c = (Σ_i z_i / L_i)⁻¹. The logits ξ learn from
    the observed decrease of the log-losses, δ_i = log L_i(before) - log L_i(after): their
    gradient is J_zᵀ δ (J_z the softmax Jacobian), applied by Adam with L2 decay γ (the
    paper's practical algorithm).

    "After" should be the losses after the update. They are first seen at the next step, so
    each backward first updates ξ with (previous step's losses, this step's losses) and then
    weights this step; the two losses come from consecutive batches rather than one batch
    twice, which spares an extra forward pass. The first step only records its losses.
    (A deliberate difference: the authors' code and LibMTL run that second forward pass on
    the same batch after the optimizer step, at the cost of one forward per step.)

    ξ, Adam's moments and the previous losses are buffers: a resumed run continues exactly.

    Args:
        lr: β, the logits' learning rate.
        decay: γ, the logits' L2 regularisation.
    """

    # Buffers (register_buffer), typed for the checker: nn.Module's __getattr__ is not.
    logits: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    adam_steps: Tensor
    previous_losses: Tensor
    has_previous: Tensor

    def __init__(self, lr: float = 0.025, decay: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.decay = decay

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        count = len(task_names)
        self.register_buffer("logits", torch.zeros(count))
        self.register_buffer("exp_avg", torch.zeros(count))
        self.register_buffer("exp_avg_sq", torch.zeros(count))
        self.register_buffer("adam_steps", torch.zeros(()))
        self.register_buffer("previous_losses", torch.ones(count))
        self.register_buffer("has_previous", torch.zeros((), dtype=torch.bool))

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        vector = self.loss_vector(losses).clamp_min(LOSS_FLOOR)
        current = vector.detach()
        self.update_logits(current)
        z = torch.softmax(self.logits, dim=0)
        weights = z / current / (z / current).sum()  # c z_i / L_i
        (weights * vector).sum().backward()
        return self.named_weights(weights)

    def update_logits(self, current: Tensor) -> None:
        """One Adam step on ξ from the decrease previous -> current (none at the first step)."""
        decrease = self.previous_losses.log() - current.log()
        z = torch.softmax(self.logits, dim=0)
        grad = z * (decrease - (z * decrease).sum())  # J_zᵀ δ; the softmax Jacobian is symmetric
        adam_step(
            self.logits, grad, self.exp_avg, self.exp_avg_sq, self.adam_steps,
            lr=self.lr, weight_decay=self.decay, enabled=self.has_previous,
        )  # fmt: skip
        self.previous_losses.copy_(current)
        self.has_previous.fill_(True)

"""`graddrop`: gradient sign dropout.

Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a Sign: Optimizing
Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020.
"""

import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import GradientWeighting, StepContext


class GradDrop(GradientWeighting):
    """Keep, at every position, only the gradients of one sign, chosen at random with the
    probability given by the sign purity P = ½ (1 + Σ_i g_i / Σ_i |g_i|).

    A task's gradient at a position survives if (P > U and G_i > 0) or (P < U and
    G_i < 0), U ~ Uniform(0, 1) drawn per position; the update is the sum of survivors
    (Algorithm 1, lines 10-15). On the shared representation A (the paper's placement,
    batch-separated) the signals are G_i = Σ_batch sign(A) ∘ ∇_A L_i (Algorithm 1's first
    step, before the purity: the sign of the layer's input decides which way a gradient
    moves the weights that read it, so samples are summed after multiplying by it), and
    the mask applies to every sample. On the parameters, G_i = g_i. The reported weight of
    a task is the share of its squared gradient norm that survived.

    Args:
        on: "features" (as in the paper) or "parameters".
        leak: fraction of each task's gradient passed through unmasked (the paper's ℓ;
            0 = pure GradDrop, 1 = plain sum).
    """

    sides = ("features", "parameters")

    def __init__(self, on: str | None = None, leak: float = 0.0) -> None:
        super().__init__(on)
        if not 0 <= leak <= 1:
            raise UserError(f"weighting.leak must be in [0, 1], got {leak}")
        self.leak = leak
        self.input_signs: Tensor | None = None  # sign(A) of the current step's features

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        self.input_signs = context.features.detach().sign() if self.on == "features" else None
        try:
            return super().backward(losses, context)
        finally:
            self.input_signs = None

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        per_sample = self.on == "features" and len(self.row_shape) > 1
        # Rows as [T, B, N] (features) or [T, 1, P] (parameters): signs from the batch sum.
        shaped = grads.view(len(grads), self.row_shape[0], -1) if per_sample else grads[:, None]
        signs = self.input_signs
        if per_sample and signs is not None:
            summed = (shaped * signs.reshape(1, len(signs), -1).to(grads.dtype)).sum(1)
        else:
            summed = shaped.sum(1)
        tiny = torch.finfo(grads.dtype).tiny
        purity = 0.5 * (1 + summed.sum(0) / summed.abs().sum(0).clamp_min(tiny))
        uniform = torch.rand_like(purity)
        keep = torch.where(purity > uniform, summed > 0, summed < 0)
        factor = self.leak + (1 - self.leak) * keep.to(grads.dtype)
        kept = (shaped * factor[:, None]).view_as(grads)
        weights = (kept * grads).sum(1) / (grads * grads).sum(1).clamp_min(tiny)
        return kept.sum(0), weights

"""`gradnorm`: gradient normalization.

Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for Adaptive
Loss Balancing in Deep Multitask Networks", ICML 2018.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import StepContext, Weighting, adam_step, feature_gradients

# Weights are kept at least this large: at zero a task would be switched off for good
# (its gradient norm, which drives the update, would vanish with it).
MIN_WEIGHT = 1e-3


class GradNorm(Weighting):
    """Minimise Σ_i w_i L_i while learning w so that the tasks' gradient norms on the last
    shared layer W, G_i = ||∇_W w_i L_i||, approach Ḡ · r_i^α, where Ḡ is their mean and
    r_i = L̃_i / mean(L̃) the relative inverse training rate, L̃_i = L_i(t) / L_i(0).

    Each step: the network's gradient uses the current w; then w takes one step of its own
    optimizer on L_grad = Σ_i |G_i - Ḡ r_i^α| (the target held constant, as in the paper),
    and is renormalised to Σ_i w_i = T. The optimizer is Adam (on buffers), so the step
    size does not depend on the scale of the gradient norms.

    W is the last shared parameter with more than one dimension (the last convolution or
    linear weight of the backbone). Per-task gradients are taken on the shared features,
    one head at a time, and carried down to W; the backbone is backpropagated once, so a
    step costs about as much as a plain sum.

    L_i(0) is the loss at the first step, as in the paper. (A deliberate difference:
    LibMTL trains the first epoch with w = 1 and takes the epoch's mean losses as L_i(0).)

    Args:
        alpha: the asymmetry α (larger pulls the tasks' training rates together harder).
        lr: the weights' learning rate.
    """

    # Buffers (register_buffer), typed for the checker: nn.Module's __getattr__ is not.
    weights: Tensor
    initial_losses: Tensor
    has_initial: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    adam_steps: Tensor

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__()
        if alpha < 0 or lr <= 0:
            raise UserError(f"weighting.alpha must be >= 0 and lr > 0, got {alpha}, {lr}")
        self.alpha = alpha
        self.lr = lr

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        count = len(task_names)
        self.register_buffer("weights", torch.ones(count))
        self.register_buffer("initial_losses", torch.ones(count))
        self.register_buffer("has_initial", torch.zeros((), dtype=torch.bool))
        self.register_buffer("exp_avg", torch.zeros(count))
        self.register_buffer("exp_avg_sq", torch.zeros(count))
        self.register_buffer("adam_steps", torch.zeros(()))

    def requires(self) -> set[str]:
        return {"shared_parameters"}  # the gradient norms are taken on the last shared layer

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        task_losses = [losses[name] for name in self.task_names]
        weights = self.weights.clone()  # this step's weights, before the update below
        layer = last_weight(context.shared_parameters)
        features = context.features
        grads = feature_gradients(task_losses, features, scales=weights)
        norms = torch.stack([
            torch.autograd.grad(features, layer, grad, retain_graph=True)[0].norm()
            for grad in grads
        ])  # fmt: skip
        features.backward(grads.sum(0))
        self.update_weights(torch.stack(task_losses).detach(), norms)
        return self.named_weights(weights)

    def update_weights(self, losses: Tensor, norms: Tensor) -> None:
        """One step on L_grad, given this step's losses and G_i = ||∇_W w_i L_i||."""
        self.initial_losses.copy_(torch.where(self.has_initial, self.initial_losses, losses))
        self.has_initial.fill_(True)
        ratios = losses / self.initial_losses.clamp_min(torch.finfo(losses.dtype).tiny)
        target = norms.mean() * (ratios / ratios.mean()) ** self.alpha
        # ∂|w_i n_i - target_i| / ∂w_i = sign(G_i - target_i) · n_i, with n_i = G_i / w_i
        grad = torch.sign(norms - target) * norms / self.weights
        adam_step(self.weights, grad, self.exp_avg, self.exp_avg_sq, self.adam_steps, self.lr)
        clamped = self.weights.clamp_min(MIN_WEIGHT)
        self.weights.copy_(clamped * len(clamped) / clamped.sum())


def last_weight(parameters: Sequence[Tensor]) -> Tensor:
    """The last parameter with more than one dimension (else the last parameter)."""
    for parameter in reversed(parameters):
        if parameter.dim() > 1:
            return parameter
    if not parameters:
        raise UserError("weighting=gradnorm needs shared parameters (is the backbone frozen?)")
    return parameters[-1]

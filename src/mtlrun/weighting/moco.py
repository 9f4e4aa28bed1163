"""`moco`: multi-objective gradient correction.

Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias in
Multi-objective Learning: A Provably Convergent Approach", ICLR 2023.
"""

import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import GradientWeighting


class MoCo(GradientWeighting):
    """MGDA on tracked gradients (the paper's algorithm): at step k each task's estimate
    moves toward its new gradient, y_t ← y_t - β_k (y_t - g_t), the weights take one
    projected gradient step on the min-norm objective, λ ← Π_Δ(λ - γ_k (Y Yᵀ + ρI) λ), and
    the update is Σ_t λ_t y_t; β_k = β / k^σβ, γ_k = γ / k^σγ, λ starts at 1/T and y at 0.

    Π_Δ is the Euclidean projection onto the simplex, as in the paper; LibMTL uses a softmax
    instead, and first rescales each gradient to ||g_t|| = L_t (the authors' shared code).

    Args:
        beta, beta_sigma: the tracking rate and its decay (LibMTL's defaults 0.5, 0.5).
        gamma, gamma_sigma: the weights' step size and its decay (0.1, 0.5).
        rho: the weights' ℓ2 regularisation ρ (0).
    """

    sized_on_first_step = ("tracked",)
    tracked: Tensor
    weights: Tensor
    steps: Tensor

    def __init__(
        self,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 < beta <= 1 or gamma <= 0 or rho < 0:
            raise UserError("weighting.beta must be in (0, 1], gamma > 0 and rho >= 0")
        self.beta, self.beta_sigma = beta, beta_sigma
        self.gamma, self.gamma_sigma = gamma, gamma_sigma
        self.rho = rho

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        count = len(task_names)
        self.register_buffer("tracked", torch.zeros(0))
        self.register_buffer("weights", torch.full((count,), 1.0 / count))
        self.register_buffer("steps", torch.zeros((), dtype=torch.float64))

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        if self.tracked.shape != grads.shape:
            self.tracked = torch.zeros_like(grads)
        self.steps += 1
        rate = (self.beta / self.steps**self.beta_sigma).to(grads)
        self.tracked.sub_(rate * (self.tracked - grads))
        step = (self.gamma / self.steps**self.gamma_sigma).to(grads)
        weights = self.weights.to(grads)
        descent = (self.tracked @ self.tracked.T) @ weights + self.rho * weights
        self.weights.copy_(simplex_projection(weights - step * descent))
        combined = self.weights.to(grads) @ self.tracked
        return combined, self.weights.to(grads)


def simplex_projection(vector: Tensor) -> Tensor:
    """The Euclidean projection of a vector onto the probability simplex (the sort-based
    method of Held, Wolfe & Crowder 1974; Duchi et al. 2008)."""
    ordered = vector.sort(descending=True).values
    cumulative = ordered.cumsum(0) - 1
    ranks = torch.arange(1, len(vector) + 1, dtype=vector.dtype, device=vector.device)
    support = (ordered - cumulative / ranks > 0).sum()
    threshold = cumulative[support - 1] / support.to(vector.dtype)
    return (vector - threshold).clamp_min(0)

"""`gradvac`: gradient vaccine.

Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021.
"""

import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import GradientWeighting


class GradVac(GradientWeighting):
    """Like PCGrad, but instead of only removing conflicts, raise the cosine φ_ij between
    task i's (already modified) gradient and task j's to an adaptive target φ̂_ij, an
    exponential moving average of the observed cosines (the paper's Algorithm 2, applied
    to the whole shared model): where φ_ij < φ̂_ij,

        g_i += ||g_i|| (φ̂_ij √(1-φ_ij²) - φ_ij √(1-φ̂_ij²)) / (||g_j|| √(1-φ̂_ij²)) · g_j,

    then φ̂_ij ← (1-β) φ̂_ij + β φ_ij. Pairs are visited in a random order per task; the
    update is the sum of the modified gradients. Like `pcgrad`, it runs on the Gram matrix
    and coefficients only. The targets start at 0 (LibMTL and TorchJD do the same).

    Args:
        beta: the moving average's rate β (LibMTL's default 0.5).
    """

    targets: Tensor

    def __init__(self, beta: float = 0.5) -> None:
        super().__init__()
        if not 0 <= beta <= 1:
            raise UserError(f"weighting.beta must be in [0, 1], got {beta}")
        self.beta = beta

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        count = len(task_names)
        self.register_buffer("targets", torch.zeros(count, count, dtype=torch.float64))

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        gram = (grads @ grads.T).double().cpu()
        targets = self.targets.cpu()
        coefficients = vaccinate(gram, targets, self.beta)
        self.targets.copy_(targets)
        weights = coefficients.sum(0).to(grads)
        return weights @ grads, weights


def vaccinate(gram: Tensor, targets: Tensor, beta: float) -> Tensor:
    """Coefficients C [T, T] of the modified gradients (g_i^GV = Σ_j C[i, j] g_j); updates
    `targets` in place."""
    count = len(gram)
    coefficients = torch.eye(count, dtype=gram.dtype)
    norms = gram.diagonal().clamp_min(0).sqrt()
    tiny = torch.finfo(gram.dtype).tiny
    for i in range(count):
        for j in torch.randperm(count).tolist():
            if j == i:
                continue
            row = coefficients[i]
            norm_i = (row @ gram @ row).clamp_min(0).sqrt()
            cosine = float((row @ gram[:, j]) / (norm_i * norms[j]).clamp_min(tiny))
            cosine = min(max(cosine, -1.0), 1.0)  # rounding can leave [-1, 1]
            target = float(targets[i, j])
            if cosine < target and float(norms[j]) > 0:
                lift = target * (1 - cosine**2) ** 0.5 - cosine * max(1 - target**2, 0.0) ** 0.5
                base = float(norms[j]) * max(1 - target**2, 0.0) ** 0.5
                coefficients[i, j] += norm_i * lift / max(base, tiny)
            targets[i, j] = (1 - beta) * target + beta * cosine
    return coefficients

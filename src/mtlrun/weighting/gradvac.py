"""`gradvac`: gradient vaccine.

Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021.
"""

import numpy as np
import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.solvers import device_weights, host_gram


class GradVac(GradientWeighting):
    """Like PCGrad, but instead of only removing conflicts, raise the cosine φ_ij between
    task i's (already modified) gradient and task j's to an adaptive target φ̂_ij, an
    exponential moving average of the observed cosines (the paper's algorithm, applied
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
        targets = self.targets.cpu().numpy()
        order = [torch.randperm(len(grads)).tolist() for _ in range(len(grads))]
        coefficients = vaccinate(host_gram(grads), targets, self.beta, order)
        self.targets.copy_(torch.from_numpy(targets))
        weights = device_weights(coefficients.sum(0), grads)
        return weights @ grads, weights


def vaccinate(
    gram: np.ndarray, targets: np.ndarray, beta: float, order: list[list[int]]
) -> np.ndarray:
    """Coefficients C [T, T] of the modified gradients (g_i^GV = Σ_j C[i, j] g_j), visiting
    task i's partners in the order `order[i]`; updates `targets` in place. On the host in
    float64: T is small, and scalar steps there cost far less than on a device."""
    count = len(gram)
    coefficients = np.eye(count)
    norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
    tiny = np.finfo(float).tiny
    for i in range(count):
        row = coefficients[i]
        for j in order[i]:
            if j == i:
                continue
            norm_i = np.sqrt(max(float(row @ gram @ row), 0.0))
            cosine = float(row @ gram[:, j]) / max(norm_i * norms[j], tiny)
            cosine = min(max(cosine, -1.0), 1.0)  # rounding can leave [-1, 1]
            target = float(targets[i, j])
            if cosine < target and norms[j] > 0:
                lift = target * np.sqrt(1 - cosine**2) - cosine * np.sqrt(max(1 - target**2, 0.0))
                base = norms[j] * np.sqrt(max(1 - target**2, 0.0))
                row[j] += norm_i * lift / max(base, tiny)
            targets[i, j] = (1 - beta) * target + beta * cosine
    return coefficients

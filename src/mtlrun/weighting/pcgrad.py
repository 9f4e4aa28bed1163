"""`pcgrad`: projecting conflicting gradients ("gradient surgery").

Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task Learning",
NeurIPS 2020.
"""

import torch
from torch import Tensor

from mtlrun.weighting.base import GradientWeighting


class PCGrad(GradientWeighting):
    """For each task i, go through the other tasks j in random order and, where the
    (already projected) g_i conflicts with g_j (negative dot product), remove its component
    along g_j; step along the sum of the projected gradients.

    Every projected gradient stays a linear combination of the original ones, so the
    surgery runs on the T x T Gram matrix and coefficients only; the reported weight of a
    task is the coefficient of its original gradient in the final sum.
    """

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        coefficients = project_conflicting(grads @ grads.T)
        weights = coefficients.sum(0).to(grads.dtype)
        return weights @ grads, weights


def project_conflicting(gram: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Coefficients C [T, T] of the projected gradients: g_i^PC = Σ_j C[i, j] g_j.

    Args:
        gram: K = [g_i · g_j], [T, T].
        generator: the source of the random orders (the global one by default).
    """
    gram = gram.double()
    count = len(gram)
    coefficients = torch.eye(count, dtype=gram.dtype, device=gram.device)
    squared_norms = gram.diagonal().clamp_min(torch.finfo(gram.dtype).tiny)
    for i in range(count):
        for j in torch.randperm(count, generator=generator).tolist():
            if j == i:
                continue
            dot = coefficients[i] @ gram[:, j]  # g_i^PC · g_j
            coefficients[i, j] -= dot.clamp(max=0) / squared_norms[j]
    return coefficients

"""`aligned_mtl`: align the task gradients into an orthogonal, equally scaled system.

Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for Multi-Task
Learning", CVPR 2023.
"""

import torch
from torch import Tensor

from mtlrun.weighting.base import GradientWeighting


class AlignedMTL(GradientWeighting):
    """Replace the gradient matrix G by Ĝ = B G whose rows are orthogonal with equal norms
    σ_min (the smallest non-zero singular value of G), then step along Σ_t Ĝ_t.

    With the Gram matrix K = G Gᵀ = V Λ Vᵀ, B = σ_min V Λ^{-1/2} Vᵀ (on the non-zero
    eigenvalues), so Ĝ Ĝᵀ = σ_min² I: the aligned system has condition number 1. The
    update Σ_t Ĝ_t = (B 1)ᵀ G is linear in the task gradients, with weights B 1.
    Eigenvalues below T·eps·λ_max (eps of the gradients' dtype) count as zero.

    Args:
        on: "parameters" (Aligned-MTL) or "features" (Aligned-MTL-UB: gradients on the
            shared representation).
    """

    sides = ("parameters", "features")

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        gram = (grads @ grads.T).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(gram)
        cutoff = len(gram) * torch.finfo(grads.dtype).eps * eigenvalues.max()
        kept = eigenvalues > cutoff
        inverse_sqrt = torch.where(kept, eigenvalues.clamp_min(cutoff).rsqrt(), 0.0)
        smallest = torch.where(kept, eigenvalues, torch.inf).min()
        sigma_min = torch.where(kept.any(), smallest, 0.0).sqrt()
        balance = sigma_min * (eigenvectors * inverse_sqrt) @ eigenvectors.T
        weights = balance.sum(1).to(grads.dtype)
        return weights @ grads, weights

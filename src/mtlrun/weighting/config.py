"""`config`: conflict-free inverse gradients (ConFIG).

Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks", ICLR 2025 (arXiv:2408.11104).
"""

import torch
from torch import Tensor

from mtlrun.weighting.base import GradientWeighting


class ConFIG(GradientWeighting):
    """Step along the direction with equal cosine to every task gradient, scaled by the sum
    of the gradients' projections on it (the paper's eq. 2): with u_i = g_i / ||g_i||,
    v = pinv([u_1 ... u_T]ᵀ) 1, d = (Σ_i ⟨g_i, v̂⟩) v̂ with v̂ = v / ||v||.

    Everything is computed from the Gram matrix: v = Σ a_i u_i with a = C⁺ 1, C the
    cosine matrix, so d is a combination of the gradients whose weights are reported. A
    zero gradient has no direction and is left out (its u_i = 0, as TorchJD does).
    """

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        gram = (grads @ grads.T).double()
        norms = gram.diagonal().clamp_min(0).sqrt()
        inverse = torch.where(norms > 0, 1 / norms.clamp_min(torch.finfo(gram.dtype).tiny), 0)
        cosines = gram * inverse[:, None] * inverse[None, :]
        coefficients = torch.linalg.pinv(cosines, hermitian=True) @ torch.ones_like(norms)
        on_grads = coefficients * inverse  # v = Σ on_grads_i g_i
        length_sq = on_grads @ gram @ on_grads
        unit = on_grads / length_sq.clamp_min(torch.finfo(gram.dtype).tiny).sqrt()
        weights = ((gram @ unit).sum() * unit).to(grads.dtype)
        return weights @ grads, weights

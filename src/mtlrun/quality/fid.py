"""Fréchet distance (FID) and kernel distance (KID) between two sets of image features.

Both take features of shape [N, D] (any float dtype, any device) and compute in float64 on
the CPU, where the eigendecompositions are accurate and reproducible.
"""

import torch
from torch import Tensor


def _as_float64(features: Tensor, name: str) -> Tensor:
    if features.ndim != 2:
        raise ValueError(f"{name} features must have shape [N, D], got {tuple(features.shape)}")
    return features.detach().to(device="cpu", dtype=torch.float64)


def _symmetric_sqrt(matrix: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix via its eigendecomposition."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    # Rounding leaves tiny negative eigenvalues on a singular covariance (N <= D); they are 0.
    roots = eigenvalues.clamp(min=0).sqrt()
    return (eigenvectors * roots) @ eigenvectors.T


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
    Equilibrium", NeurIPS 2017:
    ``|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))``, with unbiased covariances.

    ``Tr((S1 S2)^(1/2))`` is the sum of the square roots of the eigenvalues of
    ``S1^(1/2) S2 S1^(1/2)``: that matrix is similar to ``S1 S2`` but symmetric, so a symmetric
    eigensolver applies and no complex intermediate arises (unlike a general ``sqrtm``).

    Args:
        real: features of real images, [N1, D], N1 >= 2.
        fake: features of generated images, [N2, D], N2 >= 2.

    Returns:
        The distance (>= 0 up to rounding).
    """
    real, fake = _as_float64(real, "real"), _as_float64(fake, "fake")
    if real.shape[1] != fake.shape[1] or min(len(real), len(fake)) < 2:
        raise ValueError(
            "frechet_distance needs at least 2 samples per set and equal feature sizes; got "
            f"{tuple(real.shape)} and {tuple(fake.shape)}"
        )
    mean_real, mean_fake = real.mean(dim=0), fake.mean(dim=0)
    cov_real, cov_fake = torch.cov(real.T), torch.cov(fake.T)
    sqrt_real = _symmetric_sqrt(cov_real)
    product = sqrt_real @ cov_fake @ sqrt_real
    product = (product + product.T) / 2  # remove rounding asymmetry before eigvalsh
    trace_sqrt = torch.linalg.eigvalsh(product).clamp(min=0).sqrt().sum()
    distance = (
        (mean_real - mean_fake).square().sum()
        + cov_real.trace()
        + cov_fake.trace()
        - 2 * trace_sqrt
    )
    return float(distance)


def _polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """The cubic kernel ``(x . y / D + 1)^3`` of Bińkowski et al."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _unbiased_mmd2(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased estimate of the squared MMD between equal-sized samples ``x`` and ``y``."""
    m = len(x)
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    # The U-statistic leaves out the diagonal of the within-set kernels (a sample with itself).
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (
        m * (m - 1)
    )
    return within - 2 * k_xy.mean()


def kernel_inception_distance(
    real: Tensor, fake: Tensor, subsets: int = 10, subset_size: int = 100, seed: int = 0
) -> tuple[float, float]:
    """Kernel distance: the unbiased squared MMD with a cubic polynomial kernel, over subsets.

    Bińkowski et al., "Demystifying MMD GANs", ICLR 2018. Each of ``subsets`` rounds draws
    ``subset_size`` real and ``subset_size`` fake samples without replacement and estimates
    the MMD²; the result is the mean and the (population) standard deviation of the rounds.

    Args:
        real: features of real images, [N1, D].
        fake: features of generated images, [N2, D].
        subsets: number of subset rounds.
        subset_size: samples per set per round, clipped to min(N1, N2) (at least 2).
        seed: seed of the subset draws; equal inputs and seed give equal results.

    Returns:
        (mean, std) of the per-subset MMD² estimates.
    """
    real, fake = _as_float64(real, "real"), _as_float64(fake, "fake")
    size = min(subset_size, len(real), len(fake))
    if real.shape[1] != fake.shape[1] or size < 2 or subsets < 1:
        raise ValueError(
            "kernel_inception_distance needs subsets >= 1, at least 2 samples per set and "
            f"equal feature sizes; got {tuple(real.shape)}, {tuple(fake.shape)}, "
            f"subsets={subsets}, subset_size={subset_size}"
        )
    generator = torch.Generator().manual_seed(seed)
    estimates = torch.empty(subsets, dtype=torch.float64)
    for index in range(subsets):
        real_pick = torch.randperm(len(real), generator=generator)[:size]
        fake_pick = torch.randperm(len(fake), generator=generator)[:size]
        estimates[index] = _unbiased_mmd2(real[real_pick], fake[fake_pick])
    return float(estimates.mean()), float(estimates.std(correction=0))

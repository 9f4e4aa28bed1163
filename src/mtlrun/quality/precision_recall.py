"""Improved precision and recall of generated samples against real ones, in feature space.

Kynkäänniemi et al., "Improved Precision and Recall Metric for Assessing Generative Models",
NeurIPS 2019. Each set's manifold is the union of balls around its samples, each ball's radius
being the distance to that sample's k-th nearest neighbour within the set (itself excluded).
Precision is the fraction of generated samples inside the real manifold (fidelity); recall is
the fraction of real samples inside the generated manifold (coverage).
"""

import torch
from torch import Tensor


def _squared_distances(queries: Tensor, references: Tensor) -> Tensor:
    """Squared Euclidean distances [Q, R]; the matmul form is fast, and float64 keeps it exact
    enough, clamped because rounding can take a zero distance slightly below 0."""
    dots = queries @ references.T
    squared = queries.square().sum(1)[:, None] + references.square().sum(1)[None, :] - 2 * dots
    return squared.clamp(min=0)


def _radii(features: Tensor, k: int, batch_size: int) -> Tensor:
    """Squared distance of each sample to its k-th nearest other sample of the same set."""
    radii = torch.empty(len(features), dtype=features.dtype)
    for begin in range(0, len(features), batch_size):
        block = _squared_distances(features[begin : begin + batch_size], features)
        # The k+1 smallest include the sample itself at distance 0; its k-th neighbour is last.
        radii[begin : begin + batch_size] = block.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def _inside(queries: Tensor, references: Tensor, radii: Tensor, batch_size: int) -> Tensor:
    """Which queries fall within the ball of at least one reference sample."""
    inside = torch.empty(len(queries), dtype=torch.bool)
    for begin in range(0, len(queries), batch_size):
        block = _squared_distances(queries[begin : begin + batch_size], references)
        inside[begin : begin + batch_size] = (block <= radii[None, :]).any(dim=1)
    return inside


def precision_recall(
    real: Tensor, fake: Tensor, k: int = 3, batch_size: int = 1024
) -> tuple[float, float]:
    """Precision and recall of `fake` against `real` with k-NN manifolds.

    Distances are computed `batch_size` rows at a time against the whole other set, so memory
    is [batch_size, N] float64 (80 MB for 10,000 samples per set at the default).

    Args:
        real: features of real images, [N1, D], N1 > k.
        fake: features of generated images, [N2, D], N2 > k.
        k: the neighbourhood size that sets each sample's radius (the paper uses 3).
        batch_size: query rows per distance block.

    Returns:
        (precision, recall), each in [0, 1].
    """
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"precision_recall needs features [N, D] of equal D; got {tuple(real.shape)} "
            f"and {tuple(fake.shape)}"
        )
    if min(len(real), len(fake)) <= k or k < 1:
        raise ValueError(
            f"precision_recall needs k >= 1 and more than k={k} samples per set; got "
            f"{len(real)} real and {len(fake)} fake"
        )
    real = real.detach().to(device="cpu", dtype=torch.float64)
    fake = fake.detach().to(device="cpu", dtype=torch.float64)
    real_radii = _radii(real, k, batch_size)
    fake_radii = _radii(fake, k, batch_size)
    precision = _inside(fake, real, real_radii, batch_size).double().mean()
    recall = _inside(real, fake, fake_radii, batch_size).double().mean()
    return float(precision), float(recall)

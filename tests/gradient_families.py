"""Per-task gradient matrices of the families the weighting tests check every method on:
random, and the degenerate cases where methods break (opposite gradients, a solved task,
nearly collinear gradients, norms over six decades)."""

import torch
from torch import Tensor

FAMILIES = ["random", "opposite", "zero", "collinear", "spread"]


def family(name: str, tasks: int, size: int = 12, seed: int = 0) -> Tensor:
    """[T, P] float64 gradients of one family, a pure function of its arguments (the seed is
    offset by the task count, so each T draws its own matrices)."""
    generator = torch.Generator().manual_seed(seed + 7 * tasks)
    grads = torch.randn(tasks, size, generator=generator, dtype=torch.float64)
    if name == "opposite":  # 0 in the hull: no direction improves every task
        grads[1] = -grads[0]
    elif name == "zero":  # a solved task
        grads[0] = 0
    elif name == "collinear":
        grads = grads[:1] + 1e-6 * grads
    elif name == "spread":  # norms over six decades
        grads = grads * torch.logspace(-3, 3, tasks, dtype=torch.float64)[:, None]
    return grads

"""`krum` and `trimmed_mean`: Byzantine-robust aggregations of the task gradients.

Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent", NeurIPS 2017 (Krum); Yin, Chen, Ramchandran & Bartlett,
"Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018
(coordinate-wise trimmed mean). TorchJD offers both as aggregators of a Jacobian.
"""

import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import GradientWeighting


class Krum(GradientWeighting):
    """Step along the average of the `selected` task gradients with the smallest Krum
    score: the sum of squared distances to their T - f - 2 nearest other gradients (f =
    `byzantine`), so that gradients far from the others (outlying tasks) are left out.

    Args:
        byzantine: f, the number of gradients that may be adversarial (T ≥ f + 3).
        selected: how many gradients are averaged (Multi-Krum; 1 is Krum).
    """

    def __init__(self, byzantine: int = 0, selected: int = 1) -> None:
        super().__init__()
        self.byzantine = byzantine
        self.selected = selected

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        count = len(task_names)
        if self.byzantine < 0 or count < self.byzantine + 3 or not 1 <= self.selected <= count:
            raise UserError(
                f"weighting=krum needs at least byzantine + 3 tasks and 1 <= selected <= "
                f"{count}; got {count} tasks, byzantine={self.byzantine}, "
                f"selected={self.selected}"
            )

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        gram = (grads @ grads.T).double()
        squared = gram.diagonal()
        distances = (squared[:, None] + squared[None, :] - 2 * gram).clamp_min(0)
        neighbours = len(grads) - self.byzantine - 2
        nearest = distances.topk(neighbours + 1, dim=1, largest=False).values[:, 1:]
        chosen = nearest.sum(1).topk(self.selected, largest=False).indices
        weights = torch.zeros(len(grads), dtype=grads.dtype, device=grads.device)
        weights[chosen] = 1 / self.selected
        return weights @ grads, weights


class TrimmedMean(GradientWeighting):
    """Average the task gradients coordinate by coordinate after dropping the `trim`
    largest and the `trim` smallest values of each coordinate. Not a linear combination:
    the reported weight of a task is the fraction of its coordinates that were kept.

    Args:
        trim: values dropped at each end of every coordinate (T > 2·trim).
    """

    def __init__(self, trim: int = 1) -> None:
        super().__init__()
        self.trim = trim

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        if self.trim < 0 or len(task_names) <= 2 * self.trim:
            raise UserError(
                f"weighting=trimmed_mean needs more than 2·trim tasks; got "
                f"{len(task_names)} tasks and trim={self.trim}"
            )

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        count = len(grads)
        ordered = grads.sort(dim=0)
        middle = slice(self.trim, count - self.trim)
        combined = ordered.values[middle].mean(0)
        kept = torch.bincount(ordered.indices[middle].flatten(), minlength=count)
        return combined, kept.to(grads.dtype) / grads.shape[1]

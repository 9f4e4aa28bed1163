"""`static`: one fixed weight λ_t per task, from the config."""

import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import StepContext, Weighting


class Static(Weighting):
    """Minimise Σ_t λ_t L_t with fixed λ_t ≥ 0 (tasks not listed get λ = 1).

    Args:
        weights: λ by task name.
    """

    # Buffers (register_buffer), typed for the checker: nn.Module's __getattr__ is not.
    lambdas: Tensor

    def __init__(self, weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.weights = {name: float(value) for name, value in (weights or {}).items()}

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        self.check_task_keys("weighting.weights", self.weights)
        negative = {name: value for name, value in self.weights.items() if not value >= 0}
        if negative:
            raise UserError(f"weighting.weights must be >= 0, got {negative}")
        lambdas = [self.weights.get(name, 1.0) for name in task_names]
        self.register_buffer("lambdas", torch.tensor(lambdas), persistent=False)

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        lambdas = self.lambdas.to(context.features.device)
        (torch.stack([losses[name] for name in self.task_names]) * lambdas).sum().backward()
        return dict(zip(self.task_names, lambdas.unbind(), strict=True))

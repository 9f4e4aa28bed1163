"""The weighting interface: per-task losses + a small context in, gradients out.

The engine calls `weighting.backward(losses, context)` once per step, after zeroing the
gradients and before the optimizer step. A method leaves `.grad` set on every parameter it
updates and returns the weight it gave each task (for logging). Because the method performs
the backward pass itself, methods that need per-task gradients (PCGrad, MGDA, ...) plug in
here without the loop knowing about them.

A weighting is an `nn.Module`: learnable weights (e.g. uncertainty weighting's log-variances)
are its parameters and join the optimizer, and any other state belongs in buffers so that
`state_dict()` carries it into checkpoints.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor, nn

from mtlrun.errors import UserError


@dataclass
class StepContext:
    """What a weighting may look at besides the losses.

    Attributes:
        shared_parameters: parameters every task's loss depends on (the backbone).
        features: the shared representation the heads read (for methods that work on it).
        step: the global training step, counted from 0.
        epoch: the current epoch, counted from 0.
    """

    shared_parameters: list[nn.Parameter]
    features: Tensor
    step: int
    epoch: int = 0


class Weighting(nn.Module, ABC):
    """Base class of loss-weighting methods."""

    def __init__(self) -> None:
        super().__init__()
        self.task_names: list[str] = []

    def setup(self, task_names: list[str]) -> None:
        """Learn the run's tasks, before training; check task-specific settings here."""
        self.task_names = list(task_names)

    @abstractmethod
    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        """Set `.grad` from the per-task losses; return each task's weight (tensors, so
        that no host synchronisation is needed)."""

    def extra_scalars(self) -> dict[str, Tensor | float]:
        """Method-specific values to log at log steps as `train/weighting/<key>`
        (e.g. solver failures); none by default."""
        return {}

    def check_task_keys(self, setting: str, mapping: dict[str, object]) -> None:
        """Reject settings that name tasks the run does not have."""
        unknown = sorted(set(mapping) - set(self.task_names))
        if unknown:
            raise UserError(
                f"{setting} names task(s) {unknown} that are not selected; selected tasks: "
                f"{self.task_names} (change 'tasks=[...]' or the {setting} entries)"
            )

"""The weighting interface: per-task losses + a small context in, gradients out.

The engine calls `weighting.backward(losses, context)` once per step, after zeroing the
gradients and before the optimizer step. A method leaves `.grad` set on every parameter it
updates and returns the weight it gave each task (for logging). Because the method performs
the backward pass itself, methods that need per-task gradients (PCGrad, MGDA, ...) plug in
here without the loop knowing about them.

A weighting is an `nn.Module`: learnable weights (e.g. uncertainty weighting's log-variances)
are its parameters and join the optimizer, and any other state belongs in buffers so that
`state_dict()` carries it into checkpoints.

Gradient-based methods subclass `GradientWeighting` and implement only `combine`: this
module computes the per-task gradients (one backward pass per task through the shared
part), hands them over as one [T, P] matrix and writes the combination back.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlrun.errors import UserError

# Losses are floored here before a logarithm or a division, so that a loss of exactly zero
# (a solved task) gives a zero weight change instead of inf/NaN.
LOSS_FLOOR = 1e-8


def _alone(tensor: Tensor) -> Tensor:
    """The mean over one process: the tensor itself."""
    return tensor


@dataclass
class StepContext:
    """What a weighting may look at besides the losses.

    Attributes:
        shared_parameters: parameters every task's loss depends on (the backbone).
        features: the shared representation the heads read (for methods that work on it).
        step: the global training step, counted from 0.
        epoch: the current epoch, counted from 0.
        task_parameters: each task's task-specific parameters of identical shape across
            tasks (per-task adapters or backbones), in the same order for every task;
            empty when the model has none (hard sharing without adapters).
        average: the mean of a tensor over all data-parallel processes (the identity in a
            single process); per-task gradients pass through it before they are combined.
    """

    shared_parameters: list[nn.Parameter]
    features: Tensor
    step: int
    epoch: int = 0
    task_parameters: dict[str, list[nn.Parameter]] = field(default_factory=dict)
    average: Callable[[Tensor], Tensor] = _alone


class Weighting(nn.Module, ABC):
    """Base class of loss-weighting methods.

    Class attributes:
        sized_on_first_step: names of buffers whose shape is only known at the first step
            (a memory of the [T, P] task gradients); they are registered empty and take the
            saved shape when a checkpoint is loaded.
    """

    sized_on_first_step: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.task_names: list[str] = []

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        for name in self.sized_on_first_step:
            saved = state_dict.get(prefix + name)
            if saved is not None:
                device = getattr(self, name).device
                setattr(self, name, torch.empty_like(saved, device=device))
        super()._load_from_state_dict(state_dict, prefix, *args)

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

    def requires(self) -> set[str]:
        """What the method needs the model to offer in its `StepContext`:
        "shared_parameters" and/or "task_parameters" (non-empty); `build` checks it."""
        return set()

    def check_data_parallel(self) -> None:
        """Raise `UserError` if the method cannot train data-parallel (trainer.strategy=ddp);
        every method can unless it says otherwise."""

    def check_task_keys(self, setting: str, mapping: Mapping[str, object]) -> None:
        """Reject settings that name tasks the run does not have."""
        unknown = sorted(set(mapping) - set(self.task_names))
        if unknown:
            raise UserError(
                f"{setting} names task(s) {unknown} that are not selected; selected tasks: "
                f"{self.task_names} (change 'tasks=[...]' or the {setting} entries)"
            )

    def loss_vector(self, losses: dict[str, Tensor]) -> Tensor:
        """The losses as one [T] tensor, in the order of `task_names`."""
        return torch.stack([losses[name] for name in self.task_names])

    def named_weights(self, weights: Tensor) -> dict[str, Tensor]:
        """A [T] weight vector as {task: weight}, detached, for the engine to log."""
        return dict(zip(self.task_names, weights.detach().unbind(), strict=True))


class GradientWeighting(Weighting):
    """Base class of methods that combine per-task gradients of the shared part.

    Subclasses implement `combine`. With `on="parameters"` a row of the matrix it receives
    is one task's gradient on all shared parameters, flattened and concatenated; with
    `on="features"` (where the class allows it, see `sides`) it is the task's gradient on
    the shared representation `context.features`, whose combination is then
    backpropagated through the backbone once (e.g. MGDA-UB). Either way every task-specific
    parameter (a head) receives its own task's plain gradient.

    Class attributes:
        sides: the values `on` may take for this method; the first is its default.
        solves: whether `combine` solves an optimisation problem; if so, failed or
            inaccurate solves are counted in the `solver_failures` buffer and logged.

    Args:
        on: "parameters" or "features": where the per-task gradients are taken.
    """

    solver_failures: Tensor  # a buffer, registered when the method `solves`
    sides: ClassVar[tuple[str, ...]] = ("parameters",)
    solves: ClassVar[bool] = False

    def __init__(self, on: str | None = None) -> None:
        super().__init__()
        on = on or self.sides[0]
        if on not in self.sides:
            raise UserError(
                f"weighting.on={on} is not supported by {type(self).__name__}; "
                f"choose from: {', '.join(self.sides)}"
            )
        self.on = on
        # The shape one row of the gradient matrix stands for (features: [B, ...];
        # parameters: [P]); set before each `combine` for methods that need the structure.
        self.row_shape: torch.Size = torch.Size()
        self._sizes: list[int] | None = None  # numel of each shared parameter, found once
        # The current step's losses [T], detached, while `combine` runs, for methods that set
        # `uses_losses` (they scale the gradients by them); None otherwise.
        self.uses_losses = False
        self.loss_values: Tensor | None = None
        if self.solves:
            self.register_buffer("solver_failures", torch.zeros((), dtype=torch.long))

    @abstractmethod
    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        """Combine per-task gradients into one update direction.

        Args:
            grads: [T, P] per-task gradients (rows in the order of `task_names`).

        Returns:
            The combined gradient [P] and each task's weight [T] (for linear methods the
            coefficient of its gradient in the combination).
        """

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        task_losses = [losses[name] for name in self.task_names]
        if self.uses_losses:  # averaged over processes like the gradients
            self.loss_values = context.average(torch.stack(task_losses).detach())
        try:
            return self.combine_and_write(task_losses, context)
        finally:
            self.loss_values = None

    def combine_and_write(
        self, task_losses: list[Tensor], context: StepContext
    ) -> dict[str, Tensor]:
        """The per-task gradients, their combination by `combine`, written to `.grad`."""
        if self.on == "features":
            features = context.features
            grads = feature_gradients(task_losses, features)
            self.row_shape = grads.shape[1:]
            with torch.no_grad():
                combined, weights = self.combine(grads.flatten(1).float())
            features.backward(combined.view(features.shape).to(features.dtype))
        else:
            parameters = context.shared_parameters
            if self._sizes is None:
                self._sizes = [parameter.numel() for parameter in parameters]
            grads = context.average(parameter_gradients(task_losses, parameters, sum(self._sizes)))
            self.row_shape = grads.shape[1:]
            with torch.no_grad():
                combined, weights = self.combine(grads)
            for parameter, grad in zip(parameters, combined.split(self._sizes), strict=True):
                parameter.grad = grad.view(parameter.shape)
        return self.named_weights(weights)

    def extra_scalars(self) -> dict[str, Tensor | float]:
        return {"solver_failures": self.solver_failures} if self.solves else {}

    def requires(self) -> set[str]:
        return {"shared_parameters"} if self.on == "parameters" else set()

    def check_data_parallel(self) -> None:
        # Feature gradients are per sample, and each rank holds only its own samples, so a
        # combination of them would differ from rank to rank.
        if self.on == "features":
            raise UserError(
                f"weighting.on=features cannot train data-parallel ({type(self).__name__} "
                "would combine each rank's own samples differently); use weighting.on="
                "parameters with trainer.strategy=ddp"
            )

    def count_failure(self, failed: bool | Tensor) -> None:
        """Count one failed or inaccurate solve (a host bool or a device bool tensor; adding
        either to the device counter needs no synchronisation)."""
        if isinstance(failed, Tensor):
            self.solver_failures += failed.to(torch.long)
        elif failed:
            self.solver_failures += 1


def parameter_gradients(
    losses: list[Tensor], parameters: Sequence[Tensor], size: int, retain_graph: bool = False
) -> Tensor:
    """Per-task gradients on the shared `parameters` as one [T, size] matrix.

    Each loss is backpropagated once through everything it depends on. Task-specific
    parameters accumulate their `.grad` as usual; since a head depends on its own loss only,
    it ends with its own task's gradient. The shared parameters' `.grad` is read into the
    task's row and cleared before the next task, and is left unset at the end. With
    `retain_graph` the graph survives the last pass too (for a caller that measures first).
    """
    reference = parameters[0] if parameters else losses[0]
    grads = torch.empty((len(losses), size), dtype=reference.dtype, device=reference.device)
    for index, loss in enumerate(losses):
        loss.backward(retain_graph=retain_graph or index < len(losses) - 1)
        flat = [
            p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in parameters
        ]
        torch.cat(flat, out=grads[index])
        for parameter in parameters:
            parameter.grad = None
    return grads


def feature_gradients(
    losses: list[Tensor], features: Tensor, scales: Tensor | None = None
) -> Tensor:
    """Per-task gradients on the shared representation, [T, *features.shape].

    Each loss (times `scales[t]`, if given) is backpropagated through its own head only:
    the head's parameters accumulate `.grad` and the backbone is not visited. The caller
    then backpropagates its combination with `features.backward(...)` (and must, since the
    graph is retained for it). The losses must be the tasks' own loss tensors: a view of a
    stacked vector would lead each pass through every head.
    """
    boundary = features.grad_fn
    grads = features.new_empty((len(losses), *features.shape))
    for index, loss in enumerate(losses):
        head = head_parameters(loss, boundary)
        scale = None if scales is None else scales[index].to(loss.dtype)
        torch.autograd.backward(loss, scale, retain_graph=True, inputs=[features, *head])
        assert features.grad is not None  # `inputs` names features: its .grad is set
        grads[index] = features.grad
        features.grad = None
    return grads


def head_parameters(loss: Tensor, boundary: object) -> list[Tensor]:
    """The leaves `loss` depends on without passing through the autograd node `boundary`
    (the node that produced the shared features): the parameters of the task's head.

    The weighting does not know the model, so it reads them off the autograd graph; a walk
    over a head's few dozen nodes costs microseconds, far less than the backward itself.
    """
    found: list[Tensor] = []
    seen: set[object] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node is boundary or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad nodes hold a leaf
        if variable is not None:
            found.append(variable)
        stack.extend(child for child, _ in node.next_functions)
    return found


def adam_step(
    value: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    steps: Tensor,
    lr: float,
    weight_decay: float = 0.0,
    enabled: Tensor | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One Adam step (Kingma & Ba 2015; L2 weight decay as in `torch.optim.Adam`) on
    buffers, in place, so a method's own small optimizer lives in its `state_dict`.

    Args:
        value, grad: the quantity to update and its gradient.
        exp_avg, exp_avg_sq, steps: Adam's moment estimates and step count (float).
        enabled: a bool tensor; where false, nothing changes (lets a method skip a step
            without reading the flag back to the host).
    """
    beta1, beta2 = betas
    grad = grad + weight_decay * value
    new_steps = steps + 1
    new_avg = exp_avg + (1 - beta1) * (grad - exp_avg)
    new_avg_sq = exp_avg_sq + (1 - beta2) * (grad * grad - exp_avg_sq)
    corrected_avg = new_avg / (1 - beta1**new_steps)
    corrected_sq = new_avg_sq / (1 - beta2**new_steps)
    new_value = value - lr * corrected_avg / (corrected_sq.sqrt() + eps)
    for old, new in ((value, new_value), (exp_avg, new_avg), (exp_avg_sq, new_avg_sq)):
        old.copy_(new if enabled is None else torch.where(enabled, new, old))
    steps.copy_(new_steps if enabled is None else torch.where(enabled, new_steps, steps))

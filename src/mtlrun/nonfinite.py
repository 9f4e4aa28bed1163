"""What happens when a loss becomes NaN or infinite: stop the run, or skip that step.

The loop asks its policy twice per step: `before_forward` (the skip policy remembers the
BatchNorm buffers the forward pass is about to change) and `admit` (whether this step's
losses may update the weights). Both policies also remember, on the device, the first step
at which each task's loss went non-finite, and `check` raises at log steps and epoch ends,
so the hot path never waits for the host.
"""

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from mtlrun.distributed import Distributed
from mtlrun.errors import NonFiniteLossError
from mtlrun.run import Progress
from mtlrun.trainer import TrainerConfig


class NonFiniteGuard:
    """The first step at which each task's loss was not finite, kept on the device."""

    def __init__(
        self, task_names: list[str], device: torch.device, distributed: Distributed | None = None
    ) -> None:
        self.task_names = task_names
        self.first_bad_step = torch.full((len(task_names),), -1, dtype=torch.long, device=device)
        self.distributed = distributed or Distributed()
        self.extra: dict[str, Tensor] = {}

    def observe(self, losses: Tensor, step: int) -> None:
        bad = ~torch.isfinite(losses.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, step, self.first_bad_step)

    def observe_one(self, name: str, loss: Tensor, step: int) -> None:
        """Also watch a value outside the per-task vector (a second player's loss)."""
        if name not in self.extra:
            self.extra[name] = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach()) & (self.extra[name] < 0)
        self.extra[name] = torch.where(bad, step, self.extra[name])

    def check(self, progress: Progress) -> None:
        for name, first in self.extra.items():
            step = int(self.distributed.max(first[None]).item())
            if step >= 0:
                raise NonFiniteLossError(
                    f"the loss of the second player '{name}' became NaN/inf at step {step}; "
                    f"stopped, {progress.checkpoint_note()}. Lower its learning rate, set "
                    "trainer.grad_clip or trainer.nonfinite=skip"
                )
        steps = self.distributed.max(self.first_bad_step).tolist()  # every rank stops alike
        for name, step in zip(self.task_names, steps, strict=True):
            if step >= 0:
                raise NonFiniteLossError(
                    f"the loss of task '{name}' became NaN/inf at step {step}; stopped, "
                    f"{progress.checkpoint_note()}. Lower optimizer.lr, set trainer.grad_clip "
                    "or trainer.nonfinite=skip, or check the task's targets"
                )


class BufferSnapshot:
    """The buffers (BatchNorm running statistics) of some modules as they were before a
    forward pass, so that a skipped step leaves no trace of its batch in them either."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.buffers = [buffer for module in modules for buffer in module.buffers()]
        self.copies = [buffer.clone() for buffer in self.buffers]

    def take(self) -> None:
        for copy, buffer in zip(self.copies, self.buffers, strict=True):
            copy.copy_(buffer)

    def restore(self) -> None:
        for copy, buffer in zip(self.copies, self.buffers, strict=True):
            buffer.copy_(copy)


class NonFinitePolicy(ABC):
    """Base of the `trainer.nonfinite` policies."""

    def __init__(
        self, task_names: list[str], device: torch.device, distributed: Distributed
    ) -> None:
        self.guard = NonFiniteGuard(task_names, device, distributed)
        self.distributed = distributed

    def before_forward(self) -> None:  # noqa: B027  (an optional hook)
        """Called before each training forward pass."""

    @abstractmethod
    def admit(self, progress: Progress, losses: Tensor) -> bool:
        """Whether the losses (one per task, [T]) of step `progress.step + 1` may update."""

    @abstractmethod
    def admit_player(self, progress: Progress, name: str, loss: Tensor) -> bool:
        """Whether a second player's loss at step `progress.step + 1` may update it."""

    def check(self, progress: Progress) -> None:
        """Raise `NonFiniteLossError` if a loss went non-finite at an admitted step."""
        self.guard.check(progress)

    def scalars(self, progress: Progress) -> dict[str, float]:
        """What to log about the policy at log steps."""
        return {}


class StopOnNonFinite(NonFinitePolicy):
    """`trainer.nonfinite=stop`: every step updates; the run stops at the next check after a
    non-finite loss, keeping the last good checkpoint (nothing is saved after it)."""

    def admit(self, progress: Progress, losses: Tensor) -> bool:
        self.guard.observe(losses, progress.step + 1)
        return True

    def admit_player(self, progress: Progress, name: str, loss: Tensor) -> bool:
        self.guard.observe_one(name, loss, progress.step + 1)
        return True


class SkipNonFinite(NonFinitePolicy):
    """`trainer.nonfinite=skip`: a step whose losses are not all finite updates nothing (the
    buffers its forward pass changed are put back); too many in a row stop the run.

    Costs one host synchronisation per step, the price of deciding before the update.
    """

    def __init__(
        self,
        task_names: list[str],
        device: torch.device,
        distributed: Distributed,
        modules: list[nn.Module],
        max_in_a_row: int,
    ) -> None:
        super().__init__(task_names, device, distributed)
        self.buffers = BufferSnapshot(modules)
        self.max_in_a_row = max_in_a_row

    def before_forward(self) -> None:
        self.buffers.take()

    def admit(self, progress: Progress, losses: Tensor) -> bool:
        if not self.distributed.any(not bool(torch.isfinite(losses).all())):
            progress.skipped_in_a_row = 0
            return True
        self.buffers.restore()
        progress.skipped += 1
        progress.skipped_in_a_row += 1
        if progress.skipped_in_a_row >= self.max_in_a_row:
            finite = torch.isfinite(losses).tolist()
            bad = [name for name, ok in zip(self.guard.task_names, finite, strict=True) if not ok]
            raise NonFiniteLossError(
                f"the loss of task(s) {bad} was NaN/inf for {progress.skipped_in_a_row} steps "
                f"in a row up to step {progress.step + 1}; stopped, "
                f"{progress.checkpoint_note()}. Lower optimizer.lr, set trainer.grad_clip, or "
                "check the tasks' targets"
            )
        return False

    def admit_player(self, progress: Progress, name: str, loss: Tensor) -> bool:
        # The model's losses were finite (else no player steps); a player's own loss that
        # is not is dropped alone, and counted with the skipped steps.
        if self.distributed.any(not bool(torch.isfinite(loss.detach()).all())):
            progress.skipped += 1
            return False
        return True

    def scalars(self, progress: Progress) -> dict[str, float]:
        return {"train/nonfinite_skipped": progress.skipped}


def nonfinite_policy(
    trainer: TrainerConfig,
    task_names: list[str],
    distributed: Distributed,
    modules: list[nn.Module],
) -> NonFinitePolicy:
    """The policy `trainer.nonfinite` names (`stop` or `skip`), for the modules' device;
    `skip` puts back the buffers of `modules` (both players) after a dropped step."""
    device = next(modules[0].parameters()).device
    if trainer.nonfinite == "skip":
        return SkipNonFinite(
            task_names, device, distributed, modules, trainer.max_nonfinite_in_a_row
        )
    return StopOnNonFinite(task_names, device, distributed)

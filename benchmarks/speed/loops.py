"""The loops that are timed: mtlrun's engine, a bare PyTorch loop, and a timing data wrapper."""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

import torch
from omegaconf import DictConfig

from mtlrun.data import Batch, DataSource
from mtlrun.engine import Progress, Run, save_checkpoints, train_epoch
from mtlrun.models.multitask import MultiTaskModel
from mtlrun.preemption import PreemptionWatch
from mtlrun.tasks import Task
from speed.common import Rounds, now


@dataclass(frozen=True)
class EpochTime:
    """Images trained and the seconds it took (checkpointing counted separately)."""

    images: int
    train_s: float
    checkpoint_s: float = 0.0

    @property
    def throughput(self) -> float:
        """Images per second over the whole epoch, checkpoint included."""
        return self.images / max(self.train_s + self.checkpoint_s, 1e-9)


class TimedData:
    """A data source that times the training loop's steps from the iterator's side.

    Step i lasts from the loop's i-th request for a batch to its next request; its wait is
    the part spent inside the iterator's `next` (making the batch). An epoch ends early after
    `limit` steps, or once `budget_s` seconds of steps past the first `skip` are timed (but
    not before `least` of them).
    """

    def __init__(
        self,
        data: DataSource,
        device: torch.device,
        limit: int | None = None,
        skip: int = 0,
        least: int = 1,
        budget_s: float | None = None,
    ) -> None:
        self.data, self.info, self.device = data, data.info, device
        self.limit, self.skip, self.least, self.budget_s = limit, skip, least, budget_s
        self.steps: list[float] = []
        self.waits: list[float] = []

    def num_train_batches(self) -> int:
        total = self.data.num_train_batches()
        return total if self.limit is None else min(total, self.limit)

    def val_batches(self) -> Iterator[Batch]:
        return self.data.val_batches()

    def measured(self) -> list[float]:
        """Step times after the skipped (warm-up) steps."""
        return self.steps[self.skip :]

    def _enough(self, count: int) -> bool:
        if self.limit is not None and count >= self.limit:
            return True
        measured = self.measured()
        over_budget = self.budget_s is not None and sum(measured) >= self.budget_s
        return over_budget and len(measured) >= self.least

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        batches = iter(self.data.train_batches(epoch, start=start))
        requested, count = now(self.device), 0
        while not self._enough(count):
            try:
                batch = next(batches)
            except StopIteration:
                return
            delivered = now(self.device)
            yield batch
            finished = now(self.device)
            self.waits.append(delivered - requested)
            self.steps.append(finished - requested)
            requested, count = finished, count + 1


class EngineLoop:
    """Trains a built `Run` one epoch at a time through mtlrun's own engine functions."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.progress = Progress()
        self.watch = PreemptionWatch()  # never entered: no signal handlers in a benchmark

    def epoch(self, checkpoint: bool = False) -> EpochTime:
        """`train_epoch` (and `save_checkpoints` if `checkpoint`), timed."""
        run, progress, device = self.run, self.progress, self.run.device
        steps_before = progress.step
        start = now(device)
        train_epoch(run, progress, progress.epoch, self.watch)
        trained = now(device)
        progress.epoch, progress.batch = progress.epoch + 1, 0
        if checkpoint:
            save_checkpoints(run, progress, at_epoch_end=True)
        finished = now(device)
        images = (progress.step - steps_before) * run.trainer.batch_size
        return EpochTime(images, trained - start, finished - trained)

    def warm_up(self, steps: int) -> EpochTime:
        """An epoch cut short after `steps` steps."""
        return self.timed_epoch(TimedData(self.run.data, self.run.device, limit=steps))

    def timed_epoch(self, timed: TimedData) -> EpochTime:
        """One epoch with the run's data seen through `timed`."""
        original = self.run.data
        self.run.data = timed
        try:
            return self.epoch()
        finally:
            self.run.data = original


class BareLoop:
    """The minimal hand-written loop: forward -> sum of task losses -> backward -> step."""

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: dict[str, Task],
        data: DataSource,
        optimizer: torch.optim.Optimizer,
        channels_last: bool,
        device: torch.device,
    ) -> None:
        self.model, self.tasks, self.data, self.optimizer = model, tasks, data, optimizer
        self.channels_last, self.device = channels_last, device
        self.epochs_done = 0

    @classmethod
    def from_run(cls, run: Run, data: DataSource, cfg: DictConfig) -> "BareLoop":
        """The model and tasks of `run` (built only for this loop), trained on `data` with
        a hand-made AdamW of the configured learning rate and weight decay."""
        optimizer = torch.optim.AdamW(
            run.model.parameters(),
            lr=float(cfg.optimizer.lr),
            weight_decay=float(cfg.optimizer.weight_decay),
        )
        return cls(run.model, run.tasks, data, optimizer, run.trainer.channels_last, run.device)

    def epoch(self, limit: int | None = None) -> EpochTime:
        """One epoch of `data.train_batches(epoch)`, or its first `limit` batches, timed."""
        self.model.train()
        images = 0
        start = now(self.device)
        for batch in islice(self.data.train_batches(self.epochs_done), limit):
            inputs, targets = batch["image"], batch["targets"]
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            _, outputs = self.model(inputs)
            loss = sum(
                task.loss(outputs[name], targets[task.target]) for name, task in self.tasks.items()
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            images += len(inputs)
        finished = now(self.device)
        self.epochs_done += 1
        return EpochTime(images, finished - start)


def alternate(measures: dict[str, Callable[[], float]], rounds: Rounds) -> dict[str, list[float]]:
    """Call each measure in turn (A B A B ...) for `rounds`; every value each returned."""
    values: dict[str, list[float]] = {name: [] for name in measures}
    started = time.perf_counter()
    done = 0
    while done < rounds.most:
        for name, measure in measures.items():
            values[name].append(measure())
        done += 1
        if done >= rounds.least and time.perf_counter() - started > rounds.budget_s:
            break
    return values

"""The training loop: forward -> per-task losses -> weighting -> step -> log -> eval -> checkpoint.

It never branches on a task's or a weighting's name: tasks and weightings bring their own
behaviour, and the loop only calls them.
"""

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.utils import make_grid

from mtlrun import checkpoint
from mtlrun.console import Console
from mtlrun.data import DataSource
from mtlrun.errors import NonFiniteLossError, UserError
from mtlrun.loggers import Logger
from mtlrun.models.multitask import MultiTaskModel
from mtlrun.tasks import Direction, Task
from mtlrun.weighting import StepContext, Weighting


@dataclass
class TrainerConfig:
    """The `trainer` config group (see conf/trainer/default.yaml for the meaning of each)."""

    epochs: int = 6
    batch_size: int = 64
    device: str = "auto"
    amp: bool = False
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    grad_clip: float = 0.0
    threads: int = 0
    log_every_n_steps: int = 50
    eval_every_n_epochs: int = 1
    progress: str = "auto"
    num_images: int = 8
    monitor: str = "auto"


@dataclass
class Run:
    """Everything a training run needs, built by `mtlrun.build.build`."""

    trainer: TrainerConfig
    device: torch.device
    data: DataSource
    tasks: dict[str, Task]
    model: MultiTaskModel
    forward: Callable[[Tensor], tuple[Tensor, dict[str, Any]]]  # the model, maybe compiled
    weighting: Weighting
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    output_dir: Path
    loggers: list[Logger]
    console: Console
    monitor: str
    directions: dict[str, Direction]
    config_yaml: str
    hparams: dict[str, Any]
    resume_from: Path | None = None


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best: float | None = None  # best value of the monitored metric so far
    metrics: dict[str, float] = field(default_factory=dict)  # latest val metrics


class NonFiniteGuard:
    """Remembers, on the device, the first step at which each task's loss was not finite,
    so the hot path never waits for the host; `check` raises at log steps and epoch ends."""

    def __init__(self, task_names: list[str], device: torch.device) -> None:
        self.task_names = task_names
        self.first_bad_step = torch.full((len(task_names),), -1, dtype=torch.long, device=device)

    def observe(self, losses: Tensor, step: int) -> None:
        bad = ~torch.isfinite(losses.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, step, self.first_bad_step)

    def check(self, kept: str) -> None:
        steps = self.first_bad_step.tolist()
        for name, step in zip(self.task_names, steps, strict=True):
            if step >= 0:
                raise NonFiniteLossError(
                    f"the loss of task '{name}' became NaN/inf at step {step}; stopped, {kept}. "
                    "Lower optimizer.lr, set trainer.grad_clip, or check the task's targets"
                )


def fit(run: Run) -> dict[str, float]:
    """Train `run` to the end; return the final metrics (also written to metrics.json)."""
    trainer = run.trainer
    progress = restore(run, run.resume_from) if run.resume_from else Progress()
    started = time.perf_counter()
    guard = NonFiniteGuard(list(run.tasks), run.device)
    evaluated = False
    try:
        for epoch in range(progress.epoch, trainer.epochs):
            train_epoch(run, progress, epoch, guard)
            run.scheduler.step()
            progress.epoch = epoch + 1
            if (
                progress.epoch == trainer.epochs
                or progress.epoch % trainer.eval_every_n_epochs == 0
            ):
                progress.metrics = evaluate(run, progress.step)
                evaluated = True
                run.console.log_eval(epoch, progress.metrics)
            save_checkpoints(run, progress)
        if not evaluated:  # resumed from a finished run: report its metrics afresh
            progress.metrics = evaluate(run, progress.step)
        wall_s = round(time.perf_counter() - started, 3)
        final = {
            **progress.metrics,
            "epoch": progress.epoch,
            "step": progress.step,
            "wall_s": wall_s,
        }
        write_json(run.output_dir / "metrics.json", final)
        for logger in run.loggers:
            logger.log_hparams(run.hparams, progress.metrics)
    finally:
        run.console.close()
        for logger in run.loggers:
            logger.close()
    run.console.summary(final, run.directions, run.output_dir)
    return final


def train_epoch(run: Run, progress: Progress, epoch: int, guard: NonFiniteGuard) -> None:
    trainer, model, device = run.trainer, run.model, run.device
    shared_parameters = model.shared_parameters()
    model.train()
    run.console.start_epoch(epoch, trainer.epochs, run.data.num_train_batches())
    window_start, window_images = time.perf_counter(), 0
    kept = "the last good checkpoint is kept in " + str(run.output_dir / "checkpoints")
    for batch in run.data.train_batches(epoch):
        images, targets = prepare_images(batch["image"], trainer), batch["targets"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.amp):
            features, outputs = run.forward(images)
            losses = {
                name: task.loss(outputs[name], targets[task.target])
                for name, task in run.tasks.items()
            }
        run.optimizer.zero_grad(set_to_none=True)
        context = StepContext(shared_parameters, features, step=progress.step, epoch=epoch)
        weights = run.weighting.backward(losses, context)
        if trainer.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip)
        run.optimizer.step()
        loss_vector = torch.stack(list(losses.values())).detach()
        guard.observe(loss_vector, progress.step)
        progress.step += 1
        window_images += len(images)
        run.console.advance()
        if progress.step % trainer.log_every_n_steps == 0:
            guard.check(kept)
            elapsed = time.perf_counter() - window_start
            log_train(
                run, progress, epoch, loss_vector, weights, window_images / max(elapsed, 1e-9)
            )
            window_start, window_images = time.perf_counter(), 0
    guard.check(kept)


def prepare_images(images: Tensor, trainer: TrainerConfig) -> Tensor:
    """Channels-last images when the model is channels-last (faster convolutions on CPU)."""
    return images.contiguous(memory_format=torch.channels_last) if trainer.channels_last else images


def log_train(
    run: Run,
    progress: Progress,
    epoch: int,
    losses: Tensor,
    weights: dict[str, Tensor],
    throughput: float,
) -> None:
    """Scalars of the current step; the one place the hot loop reads values to the host."""
    names = list(run.tasks)
    weight_vector = torch.stack(
        [torch.as_tensor(weights[name], device=losses.device) for name in names]
    )
    values = torch.cat([losses, weight_vector, (losses * weight_vector).sum()[None]]).tolist()
    scalars = {f"train/loss/{name}": value for name, value in zip(names, values, strict=False)}
    scalars["train/loss/total"] = values[-1]
    scalars.update({f"train/weight/{name}": values[len(names) + i] for i, name in enumerate(names)})
    for key, value in run.weighting.extra_scalars().items():
        scalars[f"train/weighting/{key}"] = float(value)
    scalars["train/lr"] = run.optimizer.param_groups[0]["lr"]
    scalars["train/throughput"] = throughput
    for logger in run.loggers:
        logger.log_scalars(scalars, progress.step)
    run.console.log_train(epoch, run.trainer.epochs, progress.step, scalars, throughput)


@torch.no_grad()
def evaluate(run: Run, step: int) -> dict[str, float]:
    """Metrics over the whole validation split; logs them and the pictures of its first batch."""
    model, device = run.model, run.device
    model.eval()
    for task in run.tasks.values():
        task.reset_metrics()
    loss_sums = torch.zeros(len(run.tasks), dtype=torch.float64, device=device)
    count = 0
    for index, batch in enumerate(run.data.val_batches()):
        images, targets = prepare_images(batch["image"], run.trainer), batch["targets"]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.trainer.amp):
            _, outputs = run.forward(images)
        for position, (name, task) in enumerate(run.tasks.items()):
            target = targets[task.target]
            task.update_metrics(outputs[name], target)
            loss_sums[position] += task.loss(outputs[name], target).double() * len(images)
        count += len(images)
        if index == 0:
            log_pictures(run, images, outputs, targets, step)
    metrics: dict[str, float] = {}
    for (name, task), loss_sum in zip(run.tasks.items(), (loss_sums / count).tolist(), strict=True):
        metrics.update(
            {f"val/{name}/{key}": value for key, value in task.compute_metrics().items()}
        )
        metrics[f"val/{name}/loss"] = loss_sum
    for logger in run.loggers:
        logger.log_scalars(metrics, step)
    model.train()
    return metrics


def log_pictures(
    run: Run, images: Tensor, outputs: dict[str, Any], targets: dict[str, Any], step: int
) -> None:
    count = run.trainer.num_images
    if count <= 0:
        return
    pictures = {"images/input": make_grid(images[:count].float().cpu(), nrow=count, padding=1)}
    for name, task in run.tasks.items():
        output = _first(outputs[name], count)
        target = _first(targets[task.target], count)
        for key, picture in task.pictures(images[:count], output, target).items():
            pictures[f"images/{name}/{key}"] = picture
    for logger in run.loggers:
        logger.log_images(pictures, step)


def _first(value: Any, count: int) -> Any:
    if isinstance(value, dict):
        return {key: _first(item, count) for key, item in value.items()}
    return value[:count]


def save_checkpoints(run: Run, progress: Progress) -> None:
    """last.pt always; best.pt when the monitored metric improved."""
    value = progress.metrics.get(run.monitor)
    improved = value is not None and (
        progress.best is None
        or (
            value > progress.best
            if run.directions[run.monitor] == Direction.MAX
            else value < progress.best
        )
    )
    if improved:
        progress.best = value
    content = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "weighting": run.weighting.state_dict(),
        "epoch": progress.epoch,
        "step": progress.step,
        "best": progress.best,
        "metrics": progress.metrics,
        "rng": checkpoint.capture_rng(),
        "config": run.config_yaml,
    }
    folder = run.output_dir / "checkpoints"
    checkpoint.save(content, folder / "last.pt")
    if improved:
        checkpoint.save(content, folder / "best.pt")


def restore(run: Run, path: Path) -> Progress:
    """Load model, optimizer, scheduler, weighting, progress and RNG states from `path`."""
    content = checkpoint.load(path)
    try:
        run.model.load_state_dict(content["model"])
        run.optimizer.load_state_dict(content["optimizer"])
        run.scheduler.load_state_dict(content["scheduler"])
        run.weighting.load_state_dict(content["weighting"])
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0][:200]
        raise UserError(
            f"checkpoint {path} does not fit this run ({first_line}); resume with the same "
            "backbone, tasks, weighting and optimizer it was made with"
        ) from error
    checkpoint.restore_rng(content["rng"])
    run.console.note(f"resumed from {path} at epoch {content['epoch']}, step {content['step']}")
    return Progress(
        epoch=content["epoch"],
        step=content["step"],
        best=content["best"],
        metrics=dict(content["metrics"]),
    )


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write JSON atomically (temp file + rename)."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(temporary, path)

"""The training loop: forward -> per-task losses -> weighting -> step -> log -> eval -> checkpoint.

It never branches on a task's or a weighting's name: tasks and weightings bring their own
behaviour, and the loop only calls them.

A run can be killed at any moment and resumed exactly: checkpoints hold everything the rest
of the run depends on (weights, optimizer, weighting state, position within the epoch, every
random state), the data order is a pure function of (seed, epoch), and the learning-rate
schedule is replayed from the config rather than loaded.
"""

import json
import os
import time
import warnings
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
from mtlrun.distributed import Distributed
from mtlrun.errors import NonFiniteLossError, OutputWriteError, UserError
from mtlrun.loggers import Logger
from mtlrun.models.multitask import MultiTaskModel
from mtlrun.preemption import Preempted, PreemptionWatch
from mtlrun.relations import measure_relations
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
    checkpoint_every_n_steps: int = 0
    keep_checkpoints: int = 2
    nonfinite: str = "stop"
    max_nonfinite_in_a_row: int = 10
    strategy: str = "single"
    relations_every_n_steps: int = 0


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
    resume: checkpoint.Resume | None = None
    distributed: Distributed = field(default_factory=Distributed)


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint (but `saved_to`)."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # training steps taken (skipped non-finite steps included); logs count from 1
    best: float | None = None  # best value of the monitored metric so far
    metrics: dict[str, float] = field(default_factory=dict)  # latest val metrics
    skipped: int = 0  # steps skipped for a non-finite loss (trainer.nonfinite=skip)
    skipped_in_a_row: int = 0
    saved_to: Path | None = None  # the newest checkpoint this run can fall back to

    def checkpoint_note(self) -> str:
        if self.saved_to is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint is {self.saved_to}"


class NonFiniteGuard:
    """Remembers, on the device, the first step at which each task's loss was not finite,
    so the hot path never waits for the host; `check` raises at log steps and epoch ends."""

    def __init__(
        self, task_names: list[str], device: torch.device, distributed: Distributed | None = None
    ) -> None:
        self.task_names = task_names
        self.first_bad_step = torch.full((len(task_names),), -1, dtype=torch.long, device=device)
        self.distributed = distributed or Distributed()

    def observe(self, losses: Tensor, step: int) -> None:
        bad = ~torch.isfinite(losses.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, step, self.first_bad_step)

    def check(self, progress: Progress) -> None:
        steps = self.distributed.max(self.first_bad_step).tolist()  # every rank stops alike
        for name, step in zip(self.task_names, steps, strict=True):
            if step >= 0:
                raise NonFiniteLossError(
                    f"the loss of task '{name}' became NaN/inf at step {step}; stopped, "
                    f"{progress.checkpoint_note()}. Lower optimizer.lr, set trainer.grad_clip "
                    "or trainer.nonfinite=skip, or check the task's targets"
                )


def fit(run: Run) -> dict[str, float]:
    """Train `run` to the end; return the final metrics (also written to metrics.json).

    A run folder that already holds the metrics of a finished run (a re-run sweep job) is
    not trained again: its metrics are returned as they are.
    """
    trainer = run.trainer
    started = time.perf_counter()
    guard = NonFiniteGuard(list(run.tasks), run.device, run.distributed)
    evaluated = False
    try:
        finished = finished_metrics(run.output_dir, trainer.epochs)
        if finished is not None:
            run.console.note(f"{run.output_dir} already holds a finished run; nothing to do")
            return finished
        progress = restore(run, run.resume) if run.resume else Progress()
        with PreemptionWatch() as watch:
            for epoch in range(progress.epoch, trainer.epochs):
                train_epoch(run, progress, epoch, guard, watch)
                run.scheduler.step()
                progress.epoch, progress.batch = epoch + 1, 0
                if (
                    progress.epoch == trainer.epochs
                    or progress.epoch % trainer.eval_every_n_epochs == 0
                ):
                    progress.metrics = evaluate_on_main(run, progress.step)
                    evaluated = True
                    run.console.log_eval(epoch, progress.metrics)
                save_checkpoints(run, progress, guard, at_epoch_end=True)
                if run.distributed.any(watch.requested):
                    stop_for_preemption(run, progress, watch)
        if not evaluated:  # resumed from a finished run: report its metrics afresh
            progress.metrics = evaluate_on_main(run, progress.step)
        wall_s = round(time.perf_counter() - started, 3)
        final = {
            **progress.metrics,
            "epoch": progress.epoch,
            "step": progress.step,
            "wall_s": wall_s,
        }
        if run.distributed.is_main:
            write_json(run.output_dir / "metrics.json", final)
        for logger in run.loggers:
            logger.log_hparams(run.hparams, progress.metrics)
    finally:
        run.console.close()
        for logger in run.loggers:
            logger.close()
        run.distributed.close()
    run.console.summary(final, run.directions, run.output_dir)
    return final


def train_epoch(
    run: Run, progress: Progress, epoch: int, guard: NonFiniteGuard, watch: PreemptionWatch
) -> None:
    """Train from batch `progress.batch` of `epoch` to its end."""
    trainer, model = run.trainer, run.model
    shared_parameters = model.shared_parameters()
    task_parameters = model.task_parameters()
    model.train()
    run.console.start_epoch(epoch, trainer.epochs, run.data.num_train_batches(), progress.batch)
    buffers = BufferSnapshot(model) if trainer.nonfinite == "skip" else None
    window_start, window_images = time.perf_counter(), 0
    for batch in run.data.train_batches(epoch, start=progress.batch):
        images = prepare_images(batch["image"], trainer)
        if buffers is not None:
            buffers.take()
        features, losses = forward_losses(run, images, batch["targets"])
        loss_vector = torch.stack(list(losses.values())).detach()
        weights: dict[str, Tensor] | None = None  # none when the step is skipped
        if buffers is None or not skip_nonfinite(run, progress, loss_vector, buffers):
            relations_every = trainer.relations_every_n_steps
            if relations_every > 0 and (progress.step + 1) % relations_every == 0:
                log_relations(run, losses, shared_parameters, progress.step + 1)
            context = StepContext(
                shared_parameters,
                features,
                step=progress.step,
                epoch=epoch,
                task_parameters=task_parameters,
                average=run.distributed.average,
            )
            weights = update(run, losses, context)
            guard.observe(loss_vector, progress.step + 1)
        progress.step += 1
        progress.batch += 1
        window_images += len(images)
        run.console.advance()
        if progress.step % trainer.log_every_n_steps == 0:
            guard.check(progress)
            elapsed = time.perf_counter() - window_start
            log_train(
                run, progress, epoch, loss_vector, weights, window_images / max(elapsed, 1e-9)
            )
            window_start, window_images = time.perf_counter(), 0
        last_batch = progress.batch == run.data.num_train_batches()  # the epoch end saves
        checkpoint_every = trainer.checkpoint_every_n_steps
        checkpoint_due = checkpoint_every > 0 and progress.step % checkpoint_every == 0
        preempted = run.distributed.any(watch.requested)  # all ranks stop at the same step
        if not last_batch and (preempted or checkpoint_due):
            save_checkpoints(run, progress, guard, at_epoch_end=False)
            if preempted:
                stop_for_preemption(run, progress, watch)
    guard.check(progress)


def forward_losses(
    run: Run, images: Tensor, targets: dict[str, Any]
) -> tuple[Tensor, dict[str, Tensor]]:
    """The shared features and each task's loss on one batch."""
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.trainer.amp):
        features, outputs = run.forward(images)
        losses = {
            name: task.loss(outputs[name], targets[task.target]) for name, task in run.tasks.items()
        }
    return features, run.distributed.global_loss_values(losses)


def update(run: Run, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
    """The weighting turns the losses into gradients; one optimizer step follows."""
    run.optimizer.zero_grad(set_to_none=True)
    weights = run.weighting.backward(losses, context)
    if run.distributed.enabled:
        trained = [*run.model.parameters(), *run.weighting.parameters()]
        run.distributed.average_gradients([p for p in trained if p.requires_grad])
    if run.trainer.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.trainer.grad_clip)
    run.optimizer.step()
    run.distributed.copy_from_main(run.weighting)  # the method's own state, alike everywhere
    return weights


class BufferSnapshot:
    """The model's buffers (BatchNorm running statistics) as they were before a forward pass,
    so that a skipped step leaves no trace of its batch in them either."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.buffers = list(model.buffers())
        self.copies = [buffer.clone() for buffer in self.buffers]

    def take(self) -> None:
        for copy, buffer in zip(self.copies, self.buffers, strict=True):
            copy.copy_(buffer)

    def restore(self) -> None:
        for copy, buffer in zip(self.copies, self.buffers, strict=True):
            buffer.copy_(copy)


def skip_nonfinite(
    run: Run, progress: Progress, loss_vector: Tensor, buffers: BufferSnapshot
) -> bool:
    """With `trainer.nonfinite=skip`: whether to drop this step's update (a loss is NaN/inf);
    if so, the buffers the forward pass changed are put back.

    Costs one host synchronisation per step, the price of deciding before the update.
    """
    if not run.distributed.any(not bool(torch.isfinite(loss_vector).all())):
        progress.skipped_in_a_row = 0
        return False
    buffers.restore()
    progress.skipped += 1
    progress.skipped_in_a_row += 1
    if progress.skipped_in_a_row >= run.trainer.max_nonfinite_in_a_row:
        finite = torch.isfinite(loss_vector).tolist()
        bad = [name for name, ok in zip(run.tasks, finite, strict=True) if not ok]
        raise NonFiniteLossError(
            f"the loss of task(s) {bad} was NaN/inf for {progress.skipped_in_a_row} steps in a "
            f"row up to step {progress.step + 1}; stopped, {progress.checkpoint_note()}. Lower "
            "optimizer.lr, set trainer.grad_clip, or check the tasks' targets"
        )
    return True


def prepare_images(images: Tensor, trainer: TrainerConfig) -> Tensor:
    """Channels-last images when the model is channels-last (faster convolutions on CPU)."""
    return images.contiguous(memory_format=torch.channels_last) if trainer.channels_last else images


def log_train(
    run: Run,
    progress: Progress,
    epoch: int,
    losses: Tensor,
    weights: dict[str, Tensor] | None,
    throughput: float,
) -> None:
    """Scalars of the current step; the one place the hot loop reads values to the host.

    `weights` is None when the step's update was skipped (its losses were not finite).
    """
    names = list(run.tasks)
    parts = [losses]
    if weights is not None:
        weight_vector = torch.stack(
            [torch.as_tensor(weights[name], device=losses.device) for name in names]
        )
        parts += [weight_vector, (losses * weight_vector).sum()[None]]
    values = torch.cat(parts).tolist()
    scalars = {f"train/loss/{name}": value for name, value in zip(names, values, strict=False)}
    if weights is not None:
        scalars["train/loss/total"] = values[-1]
        scalars.update(
            {f"train/weight/{name}": values[len(names) + i] for i, name in enumerate(names)}
        )
    if run.trainer.nonfinite == "skip":
        scalars["train/nonfinite_skipped"] = progress.skipped
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


def save_checkpoints(
    run: Run, progress: Progress, guard: NonFiniteGuard, at_epoch_end: bool
) -> None:
    """last.pt (the previous ones rotated to last.1.pt, ...); at an epoch end also best.pt
    when the monitored metric improved. Nothing is saved once a loss has gone non-finite."""
    guard.check(progress)
    improved = False
    if at_epoch_end:
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
        "weighting": run.weighting.state_dict(),
        "epoch": progress.epoch,
        "batch": progress.batch,
        "step": progress.step,
        "best": progress.best,
        "metrics": progress.metrics,
        "skipped": progress.skipped,
        "skipped_in_a_row": progress.skipped_in_a_row,
        "rng": run.distributed.gather(checkpoint.capture_rng()),  # one state per rank
        "config": run.config_yaml,
    }
    folder = run.output_dir / "checkpoints"
    progress.saved_to = folder / checkpoint.LAST
    if not run.distributed.is_main:
        return
    checkpoint.save(content, folder / checkpoint.LAST, keep=run.trainer.keep_checkpoints)
    if improved:
        checkpoint.save(content, folder / checkpoint.BEST)


def stop_for_preemption(run: Run, progress: Progress, watch: PreemptionWatch) -> None:
    """After a preemption signal (the checkpoint is saved by now): hand over to the
    scheduler's own handler, if one was installed (submitit requeues), then stop."""
    run.console.close()
    watch.hand_over()
    raise Preempted(
        f"stopped by {watch.name()} at step {progress.step}, {progress.checkpoint_note()}; "
        f"continue with resume={run.output_dir} (a re-run into the same folder resumes by "
        "itself)",
        watch.signum or 0,
    )


def restore(run: Run, resume: checkpoint.Resume) -> Progress:
    """Load model, optimizer, weighting, progress and RNG states from a verified checkpoint.

    The optimizer's hyperparameters (learning rate, ...) and the learning-rate schedule
    come from this run's config: the schedule is replayed for the completed epochs, so a run
    resumed with more epochs follows its new schedule, and one resumed with the same
    config continues exactly.
    """
    content = resume.content
    configured = [
        {key: value for key, value in group.items() if key != "params"}
        for group in run.optimizer.param_groups
    ]
    try:
        run.model.load_state_dict(content["model"])
        run.optimizer.load_state_dict(content["optimizer"])
        run.weighting.load_state_dict(content["weighting"])
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0][:200]
        raise UserError(
            f"checkpoint {resume.path} does not fit this run ({first_line}); resume with the "
            "same backbone, tasks, weighting and optimizer it was made with"
        ) from error
    for group, settings in zip(run.optimizer.param_groups, configured, strict=True):
        group.update(settings)
    with warnings.catch_warnings():  # stepping the schedule before any optimizer step
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(content["epoch"]):
            run.scheduler.step()
    restore_rng(run, content["rng"])
    for note in resume.notes:
        run.console.note(note)
    run.console.note(
        f"resumed from {resume.path} at epoch {content['epoch']}, batch {content['batch']}, "
        f"step {content['step']}"
    )
    return Progress(
        epoch=content["epoch"],
        batch=content["batch"],
        step=content["step"],
        best=content["best"],
        metrics=dict(content["metrics"]),
        skipped=content["skipped"],
        skipped_in_a_row=content["skipped_in_a_row"],
        saved_to=resume.path,
    )


def restore_rng(run: Run, states: list[dict[str, Any]]) -> None:
    """Each rank continues its own random streams; with another number of processes than
    the checkpoint was made with, all continue rank 0's (resume is then not exact)."""
    rank, count = run.distributed.rank, run.distributed.world_size
    if len(states) != count:
        run.console.note(
            f"the checkpoint was made by {len(states)} process(es), this run has {count}: "
            "random streams continue from rank 0's"
        )
    checkpoint.restore_rng(states[rank] if len(states) == count else states[0])


def evaluate_on_main(run: Run, step: int) -> dict[str, float]:
    """Rank 0 evaluates on the whole validation split; every rank gets its metrics."""
    metrics = evaluate(run, step) if run.distributed.is_main else None
    return run.distributed.share(metrics)


def finished_metrics(output_dir: Path, epochs: int) -> dict[str, float] | None:
    """The metrics of a run that already finished in `output_dir`, if one did."""
    try:
        metrics = json.loads((output_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or metrics.get("epoch", -1) < epochs:
        return None
    return metrics


def log_relations(
    run: Run, losses: dict[str, Tensor], shared_parameters: list[Tensor], step: int
) -> None:
    """Measure the task-relation matrix before the step's own backward pass (which zeroes
    the gradients this leaves on the heads); log it and write relations.json."""
    relations = measure_relations(losses, shared_parameters, step)
    for logger in run.loggers:
        logger.log_scalars(relations.scalars(), step)
        logger.log_images({"relations/gradient_cosine": relations.heatmap()}, step)
    if run.distributed.is_main:
        write_json(run.output_dir / "relations.json", relations.to_json())


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write JSON atomically (temp file + rename); a failure leaves the old file whole."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(json.dumps(content, indent=2) + "\n")
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputWriteError(
            f"could not write {path} ({error.strerror or error}); free disk space or fix the "
            "folder's permissions"
        ) from error

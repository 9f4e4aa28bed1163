"""The training loop: forward -> per-task losses -> weighting -> step -> second players ->
log -> eval -> checkpoint.

It never branches on a task's, weighting's or policy's name: tasks, weightings, second
players (a GAN's other network, `mtlrun.players`) and the non-finite policy bring their own
behaviour, and the loop only calls them. What a checkpoint holds and how a run resumes
live in `mtlrun.state`; the run folder's files in `mtlrun.run_folder`.

A run can be killed at any moment and resumed exactly: checkpoints hold everything the rest
of the run depends on, and the data order is a pure function of (seed, epoch).
"""

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtlrun.players import Player, frozen
from mtlrun.preemption import Preempted, PreemptionWatch
from mtlrun.relations import measure_relations
from mtlrun.run import Progress, Run
from mtlrun.run_folder import finished_metrics, write_json
from mtlrun.state import restore, save_checkpoints
from mtlrun.trainer import TrainerConfig
from mtlrun.weighting import StepContext

__all__ = ["Progress", "Run", "TrainerConfig", "fit", "save_checkpoints", "train_epoch"]


def fit(run: Run) -> dict[str, Any]:
    """Train `run` to the end; return the final metrics (also written to metrics.json).

    A run folder that already holds the metrics of a finished run (a re-run sweep job) is
    not trained again: its metrics are returned as they are.
    """
    started = time.perf_counter()
    try:
        finished = finished_metrics(run.output_dir, run.trainer.epochs)
        if finished is not None:
            run.console.note(f"{run.output_dir} already holds a finished run; nothing to do")
            return finished
        progress = restore(run, run.resume) if run.resume else Progress()
        evaluated = train(run, progress)
        if not evaluated:  # resumed from a finished run: report its metrics afresh
            progress.metrics = evaluate_on_main(run, progress.step)
        final = {
            **progress.metrics,
            "epoch": progress.epoch,
            "step": progress.step,
            "wall_s": round(time.perf_counter() - started, 3),
        }
        if run.distributed.is_main:
            directions = {key: way.value for key, way in run.directions.items()}
            write_json(run.output_dir / "metrics.json", {**final, "directions": directions})
        for logger in run.loggers:
            logger.log_hparams(run.hparams, progress.metrics)
    finally:
        run.console.close()
        for logger in run.loggers:
            logger.close()
        run.distributed.close()
    run.console.summary(final, run.directions, run.output_dir)
    return final


def train(run: Run, progress: Progress) -> bool:
    """The epochs from `progress` to the end; whether any evaluation ran."""
    trainer, evaluated = run.trainer, False
    with PreemptionWatch() as watch:
        for epoch in range(progress.epoch, trainer.epochs):
            train_epoch(run, progress, epoch, watch)
            run.scheduler.step()
            progress.epoch, progress.batch = epoch + 1, 0
            if (
                progress.epoch == trainer.epochs
                or progress.epoch % trainer.eval_every_n_epochs == 0
            ):
                progress.metrics = evaluate_on_main(run, progress.step)
                evaluated = True
                run.console.log_eval(epoch, progress.metrics)
            save_checkpoints(run, progress, at_epoch_end=True)
            if run.distributed.any(watch.requested):
                stop_for_preemption(run, progress, watch)
    return evaluated


def train_epoch(run: Run, progress: Progress, epoch: int, watch: PreemptionWatch) -> None:
    """Train from batch `progress.batch` of `epoch` to its end."""
    trainer, model = run.trainer, run.model
    shared_parameters = model.shared_parameters()
    task_parameters = model.task_parameters()
    model.train()
    for player in run.players:
        player.module.train()
    steps, every = run.data.num_train_batches(), trainer.eval_every_n_epochs
    run.console.start_epoch(epoch, trainer.epochs, steps, progress.batch, every)
    window_start, window_images = time.perf_counter(), 0
    for batch in run.data.train_batches(epoch, start=progress.batch):
        images = prepare_images(batch["image"], trainer)
        targets = {name: task.select_target(batch["targets"]) for name, task in run.tasks.items()}
        run.nonfinite.before_forward()
        with frozen([player.module for player in run.players]):
            features, losses = forward_losses(run, images, targets)
        loss_vector = torch.stack(list(losses.values())).detach()
        weights: dict[str, Tensor] | None = None  # none when the step is skipped
        player_scalars: dict[str, Tensor] = {}
        if run.nonfinite.admit(progress, loss_vector):
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
            player_scalars = step_players(run, progress, images, targets)
            for task in run.tasks.values():
                task.after_step()
        progress.step += 1
        progress.batch += 1
        window_images += len(images)
        run.console.advance()
        if progress.step % trainer.log_every_n_steps == 0:
            run.nonfinite.check(progress)
            elapsed = time.perf_counter() - window_start
            throughput = window_images / max(elapsed, 1e-9)
            log_train(run, progress, epoch, loss_vector, weights, player_scalars, throughput)
            window_start, window_images = time.perf_counter(), 0
        elif run.console.needs_first_losses:  # shown at once, not only at the first log step
            run.console.first_losses(dict(zip(run.tasks, loss_vector.tolist(), strict=True)))
        save_within_epoch(run, progress, watch)
    run.nonfinite.check(progress)


def forward_losses(
    run: Run, images: Tensor, targets: dict[str, Any]
) -> tuple[Tensor, dict[str, Tensor]]:
    """The shared features and each task's loss on one batch (`targets` keyed by task)."""
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.trainer.amp):
        features, outputs = model_outputs(run, images, targets)
        losses = {name: task.loss(outputs[name], targets[name]) for name, task in run.tasks.items()}
    return features, run.distributed.global_loss_values(losses)


def model_outputs(
    run: Run, images: Tensor, targets: dict[str, Any]
) -> tuple[Tensor, dict[str, Any]]:
    """The model on the batch, plus the extra images tasks ask the trunk to see."""
    extra = {name: task.extra_inputs(targets[name]) for name, task in run.tasks.items()}
    extra_inputs = {name: value for name, value in extra.items() if value is not None}
    return run.forward(images, extra_inputs) if extra_inputs else run.forward(images)


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


def step_players(
    run: Run, progress: Progress, images: Tensor, targets: dict[str, Any]
) -> dict[str, Tensor]:
    """After the model's step: each second player that is due takes its steps, with the
    model frozen; returns what they report, keyed `train/<player>/<key>`."""
    scalars: dict[str, Tensor] = {}
    for player, optimizer in zip(run.players, run.player_optimizers, strict=True):
        if (progress.step + 1) % player.every:
            continue
        with frozen([run.model]):
            for _ in range(player.repeats):
                loss, reported = player_loss(run, player, images, targets)
                if not run.nonfinite.admit_player(progress, player.name, loss):
                    continue
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                trained = [p for p in player.module.parameters() if p.requires_grad]
                if run.distributed.enabled:
                    run.distributed.average_gradients(trained)
                if run.trainer.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(trained, run.trainer.grad_clip)
                optimizer.step()
        scalars.update({f"train/{player.name}/{key}": value for key, value in reported.items()})
        scalars[f"train/{player.name}/loss"] = loss.detach()
    return scalars


def player_loss(
    run: Run, player: Player, images: Tensor, targets: dict[str, Any]
) -> tuple[Tensor, dict[str, Tensor]]:
    """One player's loss on the batch, with the target its declaring task selects."""
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.trainer.amp):
        return player.loss(run.forward, images, targets[player.task])


def save_within_epoch(run: Run, progress: Progress, watch: PreemptionWatch) -> None:
    """Save (and stop, if preempted) between steps; the epoch's end saves anyway."""
    if progress.batch == run.data.num_train_batches():
        return
    every = run.trainer.checkpoint_every_n_steps
    due = every > 0 and progress.step % every == 0
    preempted = run.distributed.any(watch.requested)  # all ranks stop at the same step
    if preempted or due:
        save_checkpoints(run, progress, at_epoch_end=False)
        if preempted:
            stop_for_preemption(run, progress, watch)


def prepare_images(images: Tensor, trainer: TrainerConfig) -> Tensor:
    """Channels-last images when the model is channels-last (faster convolutions on CPU)."""
    return images.contiguous(memory_format=torch.channels_last) if trainer.channels_last else images


def log_train(
    run: Run,
    progress: Progress,
    epoch: int,
    losses: Tensor,
    weights: dict[str, Tensor] | None,
    player_scalars: dict[str, Tensor],
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
    scalars: dict[str, float] = {
        f"train/loss/{name}": value for name, value in zip(names, values, strict=False)
    }
    if weights is not None:
        scalars["train/loss/total"] = values[-1]
        scalars.update(
            {f"train/weight/{name}": values[len(names) + i] for i, name in enumerate(names)}
        )
    scalars.update(run.nonfinite.scalars(progress))
    for key, value in run.weighting.extra_scalars().items():
        scalars[f"train/weighting/{key}"] = float(value)
    for name, task in run.tasks.items():
        for key, value in task.train_scalars().items():
            scalars[f"train/{name}/{key}"] = float(value)
    scalars.update({key: float(value) for key, value in player_scalars.items()})
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
    for player in run.players:  # so that evaluating moves none of their statistics
        player.module.eval()
    for task in run.tasks.values():
        task.reset_metrics()
    loss_sums = torch.zeros(len(run.tasks), dtype=torch.float64, device=device)
    count = 0
    for index, batch in enumerate(run.console.evaluating(run.data.val_batches())):
        images = prepare_images(batch["image"], run.trainer)
        targets = {name: task.select_target(batch["targets"]) for name, task in run.tasks.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.trainer.amp):
            _, outputs = model_outputs(run, images, targets)
        for position, (name, task) in enumerate(run.tasks.items()):
            task.update_metrics(outputs[name], targets[name])
            loss_sums[position] += task.loss(outputs[name], targets[name]).double() * len(images)
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
    log_evaluation_pictures(run, step)
    model.train()
    for player in run.players:
        player.module.train()
    return metrics


def log_pictures(
    run: Run, images: Tensor, outputs: dict[str, Any], targets: dict[str, Any], step: int
) -> None:
    """Each task's pictures of the first validation images (`targets` keyed by task)."""
    count = run.trainer.num_images
    if count <= 0:
        return
    pictures: dict[str, Tensor] = {}  # each task's picture shows the inputs it is about
    for name, task in run.tasks.items():
        output = _first(outputs[name], count)
        target = _first(targets[name], count)
        for key, picture in task.pictures(images[:count], output, target).items():
            pictures[f"images/{name}/{key}"] = picture
    for logger in run.loggers:
        logger.log_images(pictures, step)


def log_evaluation_pictures(run: Run, step: int) -> None:
    """Pictures of the whole evaluation (a confusion matrix), after its metrics."""
    pictures = {
        f"images/{name}/{key}": picture
        for name, task in run.tasks.items()
        for key, picture in task.evaluation_pictures().items()
    }
    if run.trainer.num_images > 0 and pictures:
        for logger in run.loggers:
            logger.log_images(pictures, step)


def _first(value: Any, count: int) -> Any:
    if isinstance(value, dict):
        return {key: _first(item, count) for key, item in value.items()}
    return value[:count]


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


def evaluate_on_main(run: Run, step: int) -> dict[str, float]:
    """Rank 0 evaluates on the whole validation split; every rank gets its metrics."""
    metrics = evaluate(run, step) if run.distributed.is_main else None
    return run.distributed.share(metrics)


def log_relations(
    run: Run, losses: dict[str, Tensor], shared_parameters: Sequence[Tensor], step: int
) -> None:
    """Measure the task-relation matrix before the step's own backward pass (which zeroes
    the gradients this leaves on the heads); log it and write relations.json."""
    relations = measure_relations(losses, shared_parameters, step)
    for logger in run.loggers:
        logger.log_scalars(relations.scalars(), step)
        logger.log_images({"relations/gradient_cosine": relations.heatmap()}, step)
    if run.distributed.is_main:
        write_json(run.output_dir / "relations.json", relations.to_json())

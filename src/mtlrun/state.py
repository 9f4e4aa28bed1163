"""What a checkpoint holds, and how a run is put back from one.

A checkpoint is a plain dict (see `content`): both players' weights and optimizers, the
weighting's and the tasks' own state (a generator's EMA copy), the position within the
epoch and every random state, so that a resumed run continues exactly. The learning-rate
schedule is replayed from the config rather than loaded.
"""

import math
import warnings
from typing import Any

from mtlrun import checkpoint
from mtlrun.errors import UserError, first_line
from mtlrun.run import Progress, Run
from mtlrun.tasks import Direction


def improved(run: Run, progress: Progress) -> bool:
    """Whether the monitored metric beat the best so far (and if so, remember it). A NaN
    (an evaluation without valid targets) never does."""
    value = progress.metrics.get(run.monitor)
    if value is None or math.isnan(value):
        return False
    better = progress.best is None or (
        value > progress.best
        if run.directions[run.monitor] == Direction.MAX
        else value < progress.best
    )
    if better:
        progress.best = value
    return better


def content(run: Run, progress: Progress) -> dict[str, Any]:
    """Everything the rest of the run depends on, as a plain dict."""
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "weighting": run.weighting.state_dict(),
        "tasks": {name: task.state_dict() for name, task in run.tasks.items()},
        "players": [
            {"module": player.module.state_dict(), "optimizer": optimizer.state_dict()}
            for player, optimizer in zip(run.players, run.player_optimizers, strict=True)
        ],
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


def save_checkpoints(run: Run, progress: Progress, at_epoch_end: bool) -> None:
    """last.pt (the previous ones rotated to last.1.pt, ...); at an epoch end also best.pt
    when the monitored metric improved. Nothing is saved once a loss has gone non-finite."""
    run.nonfinite.check(progress)
    better = at_epoch_end and improved(run, progress)
    saved = content(run, progress)
    folder = run.output_dir / "checkpoints"
    progress.saved_to = folder / checkpoint.LAST
    if not run.distributed.is_main:
        return
    checkpoint.save(saved, folder / checkpoint.LAST, keep=run.trainer.keep_checkpoints)
    if better:
        checkpoint.save(saved, folder / checkpoint.BEST)


def load_weights(run: Run, resume: checkpoint.Resume) -> None:
    """Model, optimizers, weighting, tasks and players from the checkpoint, or one line
    saying it was made for another run."""
    saved = resume.content
    try:
        run.model.load_state_dict(saved["model"])
        run.optimizer.load_state_dict(saved["optimizer"])
        run.weighting.load_state_dict(saved["weighting"])
        for name, task in run.tasks.items():
            task.load_state_dict(saved.get("tasks", {}).get(name, {}))
        players = saved.get("players", [])
        if len(players) != len(run.players):
            raise ValueError(f"it holds {len(players)} second player(s), this run has "
                             f"{len(run.players)}")  # fmt: skip
        for player, optimizer, state in zip(
            run.players, run.player_optimizers, players, strict=True
        ):
            player.module.load_state_dict(state["module"])
            optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise UserError(
            f"checkpoint {resume.path} does not fit this run ({first_line(error)}); resume "
            "with the same backbone, tasks, weighting and optimizer it was made with"
        ) from error


def restore(run: Run, resume: checkpoint.Resume) -> Progress:
    """Put the run back where the verified checkpoint left it.

    The optimizers' hyperparameters (learning rate, ...) and the learning-rate schedule
    come from this run's config: the schedule is replayed for the completed epochs, so a run
    resumed with more epochs follows its new schedule, and one resumed with the same
    config continues exactly.
    """
    saved = resume.content
    optimizers = [run.optimizer, *run.player_optimizers]
    configured = [
        [
            {key: value for key, value in group.items() if key != "params"}
            for group in opt.param_groups
        ]
        for opt in optimizers
    ]
    load_weights(run, resume)
    for optimizer, settings in zip(optimizers, configured, strict=True):
        for group, setting in zip(optimizer.param_groups, settings, strict=True):
            group.update(setting)
    with warnings.catch_warnings():  # stepping the schedule before any optimizer step
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(saved["epoch"]):
            run.scheduler.step()
    restore_rng(run, saved["rng"])
    for note in resume.notes:
        run.console.note(note)
    run.console.note(
        f"resumed from {resume.path} at epoch {saved['epoch']}, batch {saved['batch']}, "
        f"step {saved['step']}"
    )
    return Progress(
        epoch=saved["epoch"],
        batch=saved["batch"],
        step=saved["step"],
        best=saved["best"],
        metrics=dict(saved["metrics"]),
        skipped=saved["skipped"],
        skipped_in_a_row=saved["skipped_in_a_row"],
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

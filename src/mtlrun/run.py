"""What the loop receives (`Run`, built by `mtlrun.build.build`) and where it stands
(`Progress`, saved in every checkpoint)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mtlrun import checkpoint
from mtlrun.console import Console
from mtlrun.data import DataSource
from mtlrun.distributed import Distributed
from mtlrun.loggers import Logger
from mtlrun.models.multitask import MultiTaskModel
from mtlrun.players import Player
from mtlrun.tasks import Direction, Task
from mtlrun.trainer import TrainerConfig
from mtlrun.weighting import Weighting

if TYPE_CHECKING:  # the policies read `Progress` from here
    from mtlrun.nonfinite import NonFinitePolicy


@dataclass
class Run:
    """Everything a training run needs, built by `mtlrun.build.build`."""

    trainer: TrainerConfig
    device: torch.device
    data: DataSource
    tasks: dict[str, Task]
    model: MultiTaskModel
    # The model, maybe compiled: (images, extra inputs) -> (features, {task: output}).
    forward: Callable[..., tuple[Tensor, dict[str, Any]]]
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
    nonfinite: NonFinitePolicy
    resume: checkpoint.Resume | None = None
    distributed: Distributed = field(default_factory=Distributed)
    # Second players (a GAN's other network) and their optimizers, in the same order.
    players: list[Player] = field(default_factory=list)
    player_optimizers: list[torch.optim.Optimizer] = field(default_factory=list)


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

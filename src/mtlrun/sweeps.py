"""Sweeps: the jobs of the single-task vs multi-task sweeper and the report at a sweep's end.

Hydra instantiates these from `conf/hydra/`: the sweeper class itself lives in
`hydra_plugins.mtlrun_sweeper` (Hydra finds sweepers only there), the callbacks here.
"""

import logging
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mtlrun.errors import UserError

log = logging.getLogger(__name__)

# A single-task job's loss weighting: every weighting reduces to the plain loss for one task.
SINGLE_TASK_WEIGHTING = "weighting=sum"


def task_lists(override: Override | None, default: list[str]) -> list[list[str]]:
    """The task lists a `tasks=...` override selects (`[a,b]` or a sweep `[a],[a,b]`)."""
    if override is None:
        return [default]
    values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
    lists = [value if isinstance(value, list) else [value] for value in values]
    return [[str(task) for task in tasks] for tasks in lists]


def product(overrides: list[Override]) -> list[list[str]]:
    """Every combination of the overrides' values, as Hydra's basic sweeper orders them."""
    return BasicSweeper.split_arguments(overrides, None)[0]


def plan_jobs(overrides: list[Override], default_tasks: list[str]) -> list[list[str]]:
    """Jobs that train each selected task alone, then each multi-task list with every
    combination of the other overrides (weightings included).

    Single-task jobs drop the `weighting` overrides and use `weighting=sum`, so a sweep over
    N weightings trains each task alone once, not N times. Single-task jobs come first and the
    order only depends on the command, so re-running a sweep gives every job its old number.
    """
    tasks_override = next((o for o in overrides if is_group(o, "tasks")), None)
    lists = task_lists(tasks_override, default_tasks)
    singles = list(dict.fromkeys(task for tasks in lists for task in tasks))
    multis = [tasks for tasks in lists if len(tasks) > 1]
    others = [o for o in overrides if o is not tasks_override]
    not_weighting = [o for o in others if not is_group(o, "weighting")]
    jobs = [
        [f"tasks=[{task}]", SINGLE_TASK_WEIGHTING, *rest]
        for task in singles
        for rest in product(not_weighting)
    ]
    jobs += [[f"tasks=[{','.join(tasks)}]", *rest] for tasks in multis for rest in product(others)]
    return jobs


def is_group(override: Override, group: str) -> bool:
    """Whether `override` selects `group` or sets a key under it (`weighting.weights=...`)."""
    key = override.key_or_group
    return key == group or key.startswith(group + ".") or key.startswith(group + "/")


class ReportAtSweepEnd(Callback):
    """Print and write the Δm report (`mtlrun-report <sweep folder>`) when a sweep ends.

    Args:
        include_loss: count each task's validation loss in Δm too.
    """

    def __init__(self, include_loss: bool = False) -> None:
        self.include_loss = include_loss

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mtlrun.report import write_report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            write_report([sweep_dir], include_loss=self.include_loss)
        except UserError as error:  # the sweep's runs are done and kept: say why, do not fail
            log.warning("no report for %s: %s", sweep_dir, error)

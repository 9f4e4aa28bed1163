"""`hydra/sweeper=stl_vs_mtl`: each selected task alone, then together (see conf/hydra/sweeper).

Hydra imports every module under `hydra_plugins` at start-up, so this one stays light.
"""

import logging

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override

from mtlrun.errors import UserError
from mtlrun.sweeps import plan_jobs

log = logging.getLogger(__name__)


class SingleVsMultiTaskSweeper(BasicSweeper):
    """Hydra's basic sweeper, with the jobs of `mtlrun.sweeps.plan_jobs`.

    Args:
        max_batch_size: jobs handed to the launcher at once (None: all).
        params: sweep overrides kept in the config, as for the basic sweeper.
    """

    def split_arguments(  # type: ignore[override]  # a method: it needs the composed tasks
        self, overrides: list[Override], max_batch_size: int | None
    ) -> list[list[list[str]]]:
        assert self.config is not None
        jobs = plan_jobs(overrides, list(self.config.get("tasks") or {}))
        if not jobs:
            raise UserError("the sweep selects no tasks; pass e.g. 'tasks=[cls,seg,gen]'")
        log.info("single-task vs multi-task sweep: %d jobs", len(jobs))
        size = max_batch_size or len(jobs)
        return [jobs[start : start + size] for start in range(0, len(jobs), size)]

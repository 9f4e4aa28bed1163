"""Where start-up time goes: the steps of `mtlrun experiment=smoke` up to its first training
step, each timed in a fresh process. Run as `python -m speed.startup_phases` from benchmarks/;
prints one result line for `startup.py`. Imports happen inside `main`, in the order the CLI
makes them, so that each is timed."""

import time
from itertools import pairwise

STEADY_STEPS = 3  # later steps timed, for the first step's extra cost


def main() -> None:
    process_start = time.time()
    marks: list[tuple[str, float]] = [("start", time.perf_counter())]

    def mark(phase: str) -> None:
        marks.append((phase, time.perf_counter()))

    import torch  # noqa: F401
    import torchvision  # noqa: F401

    mark("import torch, torchvision")
    import io
    import tempfile
    from contextlib import redirect_stdout
    from pathlib import Path

    from mtlrun.build import build
    from mtlrun.console import Console
    from mtlrun.engine import train_epoch  # noqa: F401

    mark("other imports (hydra, rich, tensorboard, mtlrun, ...)")
    from speed.common import compose_config, median
    from speed.loops import EngineLoop, TimedData
    from speed.startup import SMOKE_ARGUMENTS
    from speed.workers import report

    cfg = compose_config(SMOKE_ARGUMENTS)
    mark("compose the config")
    with redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory() as folder:
        Console(str(cfg.trainer.progress)).print_config(cfg)
        mark("print the config tree")
        run = build(cfg, Path(folder))
        mark("build the run")
        timed = TimedData(run.data, run.device, limit=1 + STEADY_STEPS)
        EngineLoop(run).timed_epoch(timed)
        for logger in run.loggers:
            logger.close()
    phases = {name: end - begin for (_, begin), (name, end) in pairwise(marks)}
    phases["first training step (with its log line)"] = timed.steps[0]
    report(
        {
            "process_start": process_start,
            "phases_s": phases,
            "later_step_s": median(timed.steps[1:]),
        }
    )


if __name__ == "__main__":
    main()

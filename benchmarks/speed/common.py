"""What every section shares: settings, clocks, building real runs, the report's sections.

Every figure that can be is a ratio of two things timed side by side in one process, in
alternating rounds (A B A B ...), because absolute times drift on shared machines.
"""

import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mtlrun.build import build
from mtlrun.cli import config_dir
from mtlrun.engine import Run

BENCHMARKS_DIR = Path(__file__).resolve().parents[1]
# `trainer.progress` of every run built here; `none` keeps the benchmark's own output clean.
PROGRESS_MODE = "none"
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """What one invocation measures: the device, and quick (development) or full sizes."""

    device: torch.device
    quick: bool

    def pick(self, quick: T, full: T) -> T:
        """`quick` in --quick mode, `full` otherwise."""
        return quick if self.quick else full


@dataclass(frozen=True)
class Rounds:
    """How many alternating rounds: at least `least`, at most `most`, and no new round
    once `budget_s` seconds have passed."""

    least: int
    most: int
    budget_s: float


@dataclass
class Section:
    """One section of the report: a table (or ready Markdown in `body`), notes under it, and
    the raw figures for JSON."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    body: str = ""


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock reading after it is meaningful."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def now(device: torch.device) -> float:
    """`time.perf_counter()` after the device has finished its queued work."""
    synchronize(device)
    return time.perf_counter()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def base_overrides(settings: Settings) -> list[str]:
    """Overrides every benchmark run gets: the device and the progress mode."""
    return [f"trainer.device={settings.device.type}", f"trainer.progress={PROGRESS_MODE}"]


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """The real `conf/config.yaml`, composed as the `mtlrun` command does, with `overrides`."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@contextmanager
def built_run(cfg: DictConfig) -> Iterator[Run]:
    """A `Run` built by `mtlrun.build.build` into a temporary folder, closed afterwards."""
    with tempfile.TemporaryDirectory(prefix="mtlrun-bench-") as folder:
        run = build(cfg, Path(folder))
        try:
            yield run
        finally:
            for logger in run.loggers:
                logger.close()


def format_ratio(value: float) -> str:
    return f"{value:.3f}"


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"

"""Shared fixtures: the real Hydra config, composed and shrunk to a run of a few CPU steps.

Tests never copy the config: they compose `conf/` exactly as the `mtlrun` command does and
override only what makes a run tiny (see `TINY_OVERRIDES`).
"""

import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mtlrun.build import build
from mtlrun.cli import config_dir, main
from mtlrun.engine import Run
from processes import Finished

# A run of 2 optimizer steps of 8 images of 32x32 px, evaluated on one batch, on the CPU.
TINY_OVERRIDES: tuple[str, ...] = (
    "dataset.image_size=32",
    "dataset.train_size=16",
    "dataset.val_size=8",
    "trainer.batch_size=8",
    "trainer.epochs=1",
    "trainer.progress=none",
    "trainer.device=cpu",
    "trainer.log_every_n_steps=1",
    "trainer.num_images=2",
)

ComposeConfig = Callable[..., DictConfig]
BuildRun = Callable[..., Run]


def compose_config(*overrides: str, tiny: bool = True) -> DictConfig:
    """The real `conf/config.yaml` composed with `overrides` (after the tiny ones if `tiny`)."""
    everything = [*TINY_OVERRIDES, *overrides] if tiny else list(overrides)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=everything)


def build_run(output_dir: Path, *overrides: str) -> Run:
    """A `Run` of the tiny config with `overrides`, writing into `output_dir`."""
    return build(compose_config(*overrides), output_dir)


@pytest.fixture(scope="session")
def compose_tiny() -> ComposeConfig:
    """`compose_tiny(*overrides)`: the real config, shrunk, with `overrides` applied."""
    return compose_config


@pytest.fixture(scope="session")
def build_tiny_run() -> BuildRun:
    """`build_tiny_run(output_dir, *overrides)`: a built `Run` of the tiny config."""
    return build_run


@pytest.fixture(scope="session")
def tiny_overrides() -> tuple[str, ...]:
    """The overrides that shrink the real config to a run of a few CPU steps."""
    return TINY_OVERRIDES


@pytest.fixture
def call_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Iterator[Callable[[list[str]], Finished]]:
    """`call_main(arguments)`: `mtlrun.cli.main()` in this process, in `tmp_path`; the exit
    code is that of the `SystemExit` it raised, or 0 when it returned."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    root_logger = logging.getLogger()
    handlers, level = root_logger.handlers[:], root_logger.level
    threads = torch.get_num_threads()  # `trainer.threads` sets it for the whole process

    def call(arguments: list[str]) -> Finished:
        monkeypatch.setattr(sys, "argv", ["mtlrun", *arguments])
        code = 0
        try:
            main()
        except SystemExit as exited:
            code = exited.code if isinstance(exited.code, int) else 1
        captured = capsys.readouterr()
        return Finished(code, captured.out, captured.err, tmp_path)

    yield call
    root_logger.handlers[:], root_logger.level = handlers, level  # Hydra configured logging
    torch.set_num_threads(threads)

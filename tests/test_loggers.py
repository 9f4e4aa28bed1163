"""The TensorBoard logger, and the one private API of torch it leans on, pinned here so a
torch release that changes it fails this file by name instead of losing the HPARAMS tab."""

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from mtlrun.loggers import TensorBoardLogger

PRIVATE_API = "torch.utils.tensorboard.SummaryWriter._get_file_writer"


def test_the_private_summary_writer_api_is_still_there(tmp_path: Path) -> None:
    """TensorBoardLogger.log_hparams writes into the run's own event file through
    `SummaryWriter._get_file_writer()` (public `add_hparams` would open a sub-folder per
    call). No public API gives that file writer; if this fails, torch changed it."""
    if not callable(getattr(SummaryWriter, "_get_file_writer", None)):
        pytest.fail(f"{PRIVATE_API} is gone: mtlrun.loggers.log_hparams needs another way in")
    writer = SummaryWriter(log_dir=str(tmp_path))
    try:
        file_writer = writer._get_file_writer()
        if not callable(getattr(file_writer, "add_summary", None)):
            pytest.fail(f"{PRIVATE_API}() no longer returns a writer with add_summary")
        assert file_writer.get_logdir() == str(tmp_path), PRIVATE_API
    finally:
        writer.close()


def test_hyperparameters_land_in_the_runs_own_event_file(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.log_scalars({"val/cls/acc": 0.5}, step=3)
    logger.log_hparams({"weighting": "sum", "optimizer.lr": 0.001}, {"val/cls/acc": 0.5})
    logger.close()
    (event_file,) = tmp_path.glob("events.out.tfevents.*")  # no sub-folder, no second file
    assert [path for path in tmp_path.iterdir() if path.is_dir()] == []
    events = EventAccumulator(str(event_file))
    events.Reload()
    assert events.PluginTagToContent("hparams"), f"no hparams summary via {PRIVATE_API}"
    assert [event.value for event in events.Scalars("val/cls/acc")] == [0.5]

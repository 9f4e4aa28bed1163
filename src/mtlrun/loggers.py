"""Where scalars, pictures and hyperparameters go: a small protocol and TensorBoard."""

import time
from pathlib import Path
from typing import Protocol

from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary


class Logger(Protocol):
    def log_scalars(self, scalars: dict[str, float], step: int) -> None: ...

    def log_images(self, images: dict[str, Tensor], step: int) -> None: ...

    def log_hparams(
        self, hparams: dict[str, str | float | int | bool], metrics: dict[str, float]
    ) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger:
    """Writes event files into `log_dir` (the run folder).

    The event file is opened at the first write, so a run that turns out to have nothing to
    do leaves no empty file. `purge_step`: a run resumed from that step in the same folder
    hides the events the interrupted run had logged from there on, so curves do not double.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        self.log_dir = log_dir
        self.purge_step = purge_step
        self._writer: SummaryWriter | None = None

    @property
    def writer(self) -> SummaryWriter:
        if self._writer is None:
            if self.purge_step is not None:
                self._sort_after_earlier_files()
            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self.purge_step)
        return self._writer

    def _sort_after_earlier_files(self) -> None:
        """TensorBoard reads a folder's event files in name order, and a name starts with the
        time in whole seconds: a resumed run's file must come after the interrupted run's, so
        a resume within the same second waits for the next one."""
        names = sorted(path.name for path in self.log_dir.glob("events.out.tfevents.*"))
        if names and int(names[-1].split(".")[3]) >= int(time.time()):
            time.sleep(1.01 - time.time() % 1)

    def log_scalars(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def log_images(self, images: dict[str, Tensor], step: int) -> None:
        for tag, image in images.items():
            self.writer.add_image(tag, image, step)

    def log_hparams(
        self, hparams: dict[str, str | float | int | bool], metrics: dict[str, float]
    ) -> None:
        # Written into this run's own event file (SummaryWriter.add_hparams would open a
        # sub-folder), so a sweep's runs line up in the HPARAMS tab. The metric values are
        # the final val scalars already logged under the same tags. No public API hands out
        # the writer's own file: `_get_file_writer` is private, pinned by tests/test_loggers.py.
        experiment, session_start, session_end = hparams_summary(hparams, metrics)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)
        self.writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

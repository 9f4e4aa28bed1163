"""What the terminal shows: the config, progress, and the final metrics table.

On a terminal a live rich display: one row with the epoch, `step N/TOTAL` over the whole
run, a bar and the whole run's ETA (evaluations included), an evaluation row while the
validation split is evaluated, and the latest losses on a line of their own (so a narrow
terminal wraps the losses, never the step count, bar or ETA). Otherwise (CI, a pipe) one
plain line per log step with the same step count and ETA.

Everything printed also goes, as plain text, to the run's log file (`cli.log`) when one is
given, so a sweep job's log can be read afterwards.
"""

import contextlib
import math
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TextIO

from omegaconf import DictConfig, OmegaConf
from rich.console import Console as RichConsole
from rich.console import RenderableType
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from mtlrun.tasks import Direction

LOG_WIDTH = 120  # the log file's line width (tables are laid out to it)


class Clock:
    """The whole run's remaining time: the training steps left at this process's step rate,
    plus the evaluations left at the last evaluation's duration."""

    def __init__(self) -> None:
        self.epochs, self.steps_per_epoch, self.eval_every = 1, 1, 1
        self.epoch, self.done = 0, 0
        self.started: float | None = None  # when the latest step ended (None: not yet timed)
        self.timed = 0  # steps with a measured duration
        self.training_s = 0.0  # time spent training (evaluations left out)
        self.eval_s: float | None = None  # the last evaluation's duration
        self.eval_started: float | None = None

    @property
    def total(self) -> int:
        return self.epochs * self.steps_per_epoch

    def plan(self, epoch: int, epochs: int, steps: int, done: int, eval_every: int) -> None:
        self.epoch, self.epochs, self.steps_per_epoch = epoch, epochs, max(steps, 1)
        self.eval_every = max(eval_every, 1)
        self.done = epoch * self.steps_per_epoch + done
        self.started = None  # the time between epochs (evaluation, checkpoint) is not a step

    def step(self) -> None:
        now = time.perf_counter()
        if self.started is not None:
            self.training_s += now - self.started
            self.timed += 1
        self.started = now
        self.done += 1

    def start_eval(self) -> None:
        self.eval_started = time.perf_counter()

    def end_eval(self) -> None:
        if self.eval_started is not None:
            self.eval_s = time.perf_counter() - self.eval_started
            self.eval_started = None

    def evaluations_left(self) -> int:
        """Evaluations still to come after the current epoch's training (its own included)."""
        due = [e + 1 for e in range(self.epoch, self.epochs)]
        return sum(1 for e in due if e == self.epochs or e % self.eval_every == 0)

    def remaining_s(self) -> float | None:
        if self.timed < 1 or self.training_s <= 0:
            return None
        evaluations = self.evaluations_left()
        if self.eval_started is not None:  # evaluating now: the current one is partly done
            evaluations -= 1
        per_step = self.training_s / self.timed
        return (self.total - self.done) * per_step + evaluations * (self.eval_s or 0.0)

    def eta(self) -> str:
        remaining = self.remaining_s()
        return "-:--:--" if remaining is None else clock_text(remaining)


def clock_text(seconds: float) -> str:
    """h:mm:ss (days as d:hh:mm:ss)."""
    if not math.isfinite(seconds):
        return "-:--:--"
    whole = round(max(seconds, 0.0))
    hours, rest = divmod(whole, 3600)
    days, hours = divmod(hours, 24)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}" if days else text


class Display(Progress):
    """rich's Progress rows, then the latest losses on a line of their own."""

    status = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.status:
            yield Text(self.status, overflow="fold")


def display(console: RichConsole) -> Display:
    return Display(
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.fields[count]}"),
        BarColumn(bar_width=None),
        TaskProgressColumn(),
        TextColumn("{task.fields[eta]}"),
        console=console,
        expand=True,
    )


class Console:
    """Progress and summaries for one run.

    Args:
        mode: `bar`, `plain`, `none`, or `auto` (bar on a terminal, plain otherwise).
        log_path: a file that receives everything printed, as plain text (appended).
        terminal: the rich console to print to (tests pass one with a fixed width).
    """

    def __init__(
        self, mode: str = "auto", log_path: Path | None = None, terminal: RichConsole | None = None
    ) -> None:
        if mode == "auto":
            mode = "bar" if (terminal.is_terminal if terminal else sys.stdout.isatty()) else "plain"
        self.mode = mode
        self.rich = terminal or RichConsole(highlight=False)
        self.rich.quiet = mode == "none"
        self.log_file: IO[str] | None = None
        self.log: RichConsole | None = None
        if log_path is not None:
            self.log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
            self.log = RichConsole(
                file=self.log_file, width=LOG_WIDTH, no_color=True, highlight=False,
                force_terminal=False, force_jupyter=False, emoji=False,
            )  # fmt: skip
        self.progress: Display | None = None
        self.bar_task: TaskID | None = None
        self.eval_task: TaskID | None = None
        self.clock = Clock()
        self.val_batches: int | None = None  # known after the first evaluation
        self.losses_shown = False

    # --- printing to the terminal and the log ------------------------------------------------

    def say(self, message: Any, to_terminal: bool = True) -> None:
        """Print `message` (rich markup, or any renderable) on the terminal and in the log."""
        soft_wrap = isinstance(message, str | Text)  # long lines wrap as the terminal does
        if to_terminal:
            self.rich.print(message, soft_wrap=soft_wrap)
        if self.log is not None:
            self.log.print(message, soft_wrap=soft_wrap)
            self.log.file.flush()

    def note(self, message: str) -> None:
        self.say(message)

    def error(self, line: str) -> None:
        """A line already shown on stderr (the error line, a warning), for the log alone."""
        if self.log is not None:
            self.log.print(Text(line), soft_wrap=True)
            self.log.file.flush()

    @contextlib.contextmanager
    def logging_warnings(self) -> Iterator[None]:
        """Python warnings shown as usual (stderr) and also written to the log."""
        shown = warnings.showwarning

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            shown(message, category, filename, lineno, file, line)
            self.error(warnings.formatwarning(message, category, filename, lineno, line).strip())

        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = shown

    def print_config(self, cfg: DictConfig) -> None:
        """The whole composed config as a tree (`trainer.print_config=full`)."""
        tree = Tree("config", guide_style="dim")
        for key, node in cfg.items():
            text = OmegaConf.to_yaml(node, resolve=True) if OmegaConf.is_config(node) else str(node)
            tree.add(str(key)).add(Syntax(text.rstrip() or "null", "yaml", theme="ansi_dark"))
        self.say(tree)

    def print_changes(self, lines: list[str]) -> None:
        """What differs from the defaults (`trainer.print_config=changes`)."""
        if not lines:
            self.say("config: the defaults (trainer.print_config=full prints all of it)")
            return
        self.say("config, as it differs from the defaults (trainer.print_config=full prints all):")
        for line in lines:
            self.say(Text(f"  {line}"))

    # --- training progress -------------------------------------------------------------------

    def start_epoch(
        self, epoch: int, epochs: int, steps: int, done: int = 0, eval_every: int = 1
    ) -> None:
        """The epoch's `steps` batches, `done` of which a resumed run has behind it."""
        self.clock.plan(epoch, epochs, steps, done, eval_every)
        if self.mode != "bar":
            return
        if self.progress is None:
            self.progress = display(self.rich)
            self.progress.start()
        fields = self._fields()
        if self.bar_task is None:
            self.bar_task = self.progress.add_task(
                fields.pop("description"), total=self.clock.total, **fields
            )
        self.progress.update(self.bar_task, completed=self.clock.done, **fields)

    def _fields(self) -> dict[str, Any]:
        clock = self.clock
        return {
            "description": f"epoch {clock.epoch + 1}/{clock.epochs}",
            "count": f"step {clock.done}/{clock.total}",
            "eta": f"ETA {clock.eta()}",
        }

    def advance(self) -> None:
        self.clock.step()
        if self.progress is not None and self.bar_task is not None:
            self.progress.update(self.bar_task, completed=self.clock.done, **self._fields())

    @property
    def needs_first_losses(self) -> bool:
        """Whether no losses have been shown yet (the first step shows them at once)."""
        return not self.losses_shown and self.mode in ("bar", "plain")

    def first_losses(self, losses: dict[str, float]) -> None:
        """The first step's losses, before the first logged step."""
        self._show({f"train/loss/{name}": value for name, value in losses.items()}, None)

    def log_train(
        self, epoch: int, epochs: int, step: int, scalars: dict[str, float], throughput: float
    ) -> None:
        self._show(scalars, throughput)

    def _show(self, scalars: dict[str, float], throughput: float | None) -> None:
        self.losses_shown = True
        losses = " ".join(
            f"{tag.removeprefix('train/loss/')}={value:.4g}"
            for tag, value in scalars.items()
            if tag.startswith("train/loss/")
        )
        status = f"loss {losses}"
        if "train/lr" in scalars:
            status += f"  lr {scalars['train/lr']:.2e}"
        if throughput is not None:
            status += f"  {throughput:,.0f} img/s"
        fields = self._fields()
        line = f"{fields['description']}  {fields['count']}  {fields['eta']}  {status}"
        if self.progress is not None:
            self.progress.status = status
            self.progress.refresh()
        elif self.mode == "plain":
            self.rich.print(Text(line), soft_wrap=True)
        self.say(Text(line), to_terminal=False)

    # --- evaluation --------------------------------------------------------------------------

    def evaluating(self, batches: Iterable[Any]) -> Iterator[Any]:
        """`batches`, with an evaluation row on the display while they are used."""
        self.clock.start_eval()
        if self.progress is not None:
            self.eval_task = self.progress.add_task(
                "evaluating", total=self.val_batches, count="batch 0", eta=""
            )
        count = 0
        try:
            for count, batch in enumerate(batches, start=1):
                yield batch
                if self.progress is not None and self.eval_task is not None:
                    total = f"/{self.val_batches}" if self.val_batches else ""
                    self.progress.update(
                        self.eval_task, completed=count, count=f"batch {count}{total}"
                    )
        finally:
            self.val_batches = count or self.val_batches
            self.clock.end_eval()
            if self.progress is not None and self.eval_task is not None:
                self.progress.remove_task(self.eval_task)
            self.eval_task = None

    def log_eval(self, epoch: int, metrics: dict[str, float]) -> None:
        text = "  ".join(
            f"{tag.removeprefix('val/')}={value:.4g}" for tag, value in metrics.items()
        )
        if self.progress is not None and self.bar_task is not None:
            self.progress.update(self.bar_task, **self._fields())  # the ETA knows evaluations now
        self.say(f"[dim]val after epoch {epoch + 1}:[/dim] {text}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.bar_task = None

    def close_log(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
            self.log_file, self.log = None, None

    def summary(
        self, metrics: dict[str, float], directions: dict[str, Direction], output_dir: Path
    ) -> None:
        """The final table of val metrics per task, and where the outputs are."""
        self.close()
        table = Table(title="validation metrics", title_justify="left")
        for column in ("task", "metric", "value", "better"):
            table.add_column(column, justify="right" if column == "value" else "left")
        for tag, value in metrics.items():
            if not tag.startswith("val/"):
                continue
            _, task, metric = tag.split("/", 2)
            arrow = "higher" if directions.get(tag) == Direction.MAX else "lower"
            table.add_row(task, metric, f"{value:.4f}", arrow)
        self.say(table)
        self.say(f"outputs: {output_dir}")

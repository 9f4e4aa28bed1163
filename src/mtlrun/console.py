"""What the terminal shows: the config tree, progress, and the final metrics table.

On a terminal a live rich progress bar; otherwise (CI, a pipe) one plain line per log step.
"""

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console as RichConsole
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

from mtlrun.tasks import Direction


class Console:
    """Progress and summaries for one run.

    Args:
        mode: `bar`, `plain`, `none`, or `auto` (bar on a terminal, plain otherwise).
    """

    def __init__(self, mode: str = "auto") -> None:
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "plain"
        self.mode = mode
        self.rich = RichConsole(highlight=False, quiet=mode == "none")
        self.progress: Progress | None = None
        self.bar_task: TaskID | None = None

    def print_config(self, cfg: DictConfig) -> None:
        tree = Tree("config", guide_style="dim")
        for key, node in cfg.items():
            text = OmegaConf.to_yaml(node, resolve=True) if OmegaConf.is_config(node) else str(node)
            tree.add(str(key)).add(Syntax(text.rstrip() or "null", "yaml", theme="ansi_dark"))
        self.rich.print(tree)

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int = 0) -> None:
        """A bar for the epoch's `steps` batches, `done` of which a resumed run has behind it."""
        if self.mode != "bar":
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=self.rich,
            )
            self.progress.start()
        self.bar_task = self.progress.add_task(
            "", total=steps, completed=done, epoch=f"{epoch + 1}/{epochs}", status=""
        )

    def advance(self) -> None:
        if self.progress is not None and self.bar_task is not None:
            self.progress.advance(self.bar_task)

    def log_train(
        self, epoch: int, epochs: int, step: int, scalars: dict[str, float], throughput: float
    ) -> None:
        losses = " ".join(
            f"{tag.removeprefix('train/loss/')}={value:.4g}"
            for tag, value in scalars.items()
            if tag.startswith("train/loss/")
        )
        status = f"loss {losses}  lr {scalars['train/lr']:.2e}  {throughput:,.0f} img/s"
        if self.progress is not None and self.bar_task is not None:
            self.progress.update(self.bar_task, status=status)
        elif self.mode == "plain":
            self.rich.print(f"epoch {epoch + 1}/{epochs}  step {step}  {status}", soft_wrap=True)

    def log_eval(self, epoch: int, metrics: dict[str, float]) -> None:
        text = "  ".join(
            f"{tag.removeprefix('val/')}={value:.4g}" for tag, value in metrics.items()
        )
        self.rich.print(f"[dim]val after epoch {epoch + 1}:[/dim] {text}", soft_wrap=True)

    def note(self, message: str) -> None:
        self.rich.print(message, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

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
        self.rich.print(table)
        self.rich.print(f"outputs: {output_dir}", soft_wrap=True)

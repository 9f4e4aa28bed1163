"""`mtlrun-report`: one table of finished runs, with Δm% of each multi-task run against the
single-task runs of its tasks.

A run is a folder holding `metrics.json` and `.hydra/` (what every `mtlrun` run and sweep job
writes). The direction of each metric (higher or lower is better) comes from the `directions`
table the run wrote into its `metrics.json`; every `val/<task>/loss` is lower-better. Reading
runs never imports the classes their configs name: a results folder is data, not code, and
runs written by an older mtlrun (no `directions`) still report, their metrics' directions
unknown and so left out of Δm.
"""

import argparse
import csv
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mtlrun.errors import UserError, first_line
from mtlrun.tasks import Direction

# Settings that do not change what a run learns: ignored when matching baselines. `tasks` and
# `weighting` differ between a multi-task run and its baselines by design.
IGNORED_SETTINGS = (
    "tasks",
    "weighting",
    "resume",
    "trainer.monitor",
    "trainer.progress",
    "trainer.num_images",
    "trainer.log_every_n_steps",
    "trainer.threads",
)
DIRECTIONS_KEY = "directions"  # metrics.json: {"val/cls/acc": "max", ...}
# A baseline value closer to zero than this makes its term of Δm explode: the report warns.
NEAR_ZERO = 0.01
MARKDOWN_NAME = "report.md"
CSV_NAME = "report.csv"
SIGN_CONVENTION = (
    "Δm% = (1/K) Σ_k (−1)^l_k (M_k − B_k) / B_k × 100 over the K metrics of the run's tasks "
    "(l_k = 1 when lower is better; B_k from the single-task run of that task). "
    "Higher Δm is better: positive means training together beat training alone."
)


@dataclass
class RunRecord:
    """One finished run: its folder, job overrides, composed config, final metrics and the
    direction of each metric (None: its metrics.json has no directions, an older version)."""

    folder: Path
    overrides: list[str]
    config: DictConfig
    metrics: dict[str, float]
    directions: dict[str, str] | None = None

    @property
    def tasks(self) -> list[str]:
        return list(self.config.get("tasks") or {})


Labeller = Callable[[RunRecord], str]  # how the report names a run


@dataclass
class Baseline:
    """The single-task run chosen for one task of a multi-task run, or why there is none."""

    task: str
    run: RunRecord | None
    note: str = ""
    label: str = ""  # how the report names the baseline run


@dataclass
class Row:
    """One line of the report."""

    run: RunRecord
    label: str
    delta_m: float | None = None
    baselines: list[Baseline] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Everything the table, report.md and report.csv show."""

    rows: list[Row]
    columns: list[str]  # metric keys shown in the table, e.g. "val/cls/acc"
    directions: dict[str, Direction | None]
    common_overrides: list[str]
    unfinished: list[Path]
    include_loss: bool


def delta_m(measured: list[tuple[float, float, Direction]]) -> float:
    """Δm% of a multi-task run against single-task baselines (Maninis, Radosavovic and
    Kokkinos, "Attentive Single-Tasking of Multiple Tasks", CVPR 2019; Vandenhende et al.,
    "Multi-Task Learning for Dense Prediction Tasks: A Survey", TPAMI 2021):

        Δm = (1/K) Σ_k (−1)^l_k (M_k − B_k) / B_k × 100,  l_k = 1 if lower is better.

    Args:
        measured: (M_k, B_k, direction) for each of the K metrics; every B_k non-zero.

    Returns:
        Δm in percent; higher is better.
    """
    if not measured:
        raise ValueError("Δm needs at least one metric")
    total = 0.0
    for value, baseline, direction in measured:
        sign = -1.0 if direction == Direction.MIN else 1.0
        total += sign * (value - baseline) / baseline
    return 100.0 * total / len(measured)


def metric_direction(run: RunRecord, key: str) -> Direction | None:
    """Whether the metric `key` (`val/<task>/<metric>`) of `run` is better higher or lower.

    From the run's own `directions` table; a per-class key (`val/det/ap50/<class>`) may be
    declared by its family (`val/det/ap50`). None when the run declares neither (or declares
    something other than "max"/"min"); a task's loss is always lower-better.
    """
    if key.endswith("/loss"):
        return Direction.MIN
    declared = run.directions or {}
    family = "/".join(key.split("/")[:3])
    for name in (key, family):
        if declared.get(name) in (Direction.MAX.value, Direction.MIN.value):
            return Direction(declared[name])
    return None


def load_run(folder: Path) -> RunRecord:
    """Read one run folder (`metrics.json`, `.hydra/config.yaml`, `.hydra/overrides.yaml`)
    as data: the classes its config names are not imported."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        config = OmegaConf.load(folder / ".hydra" / "config.yaml")
        if not isinstance(metrics, dict) or not isinstance(config, DictConfig):
            raise ValueError("not a mapping")
    except (OSError, ValueError) as error:
        raise UserError(
            f"cannot read run {folder} ({first_line(error)}); re-run it or leave its folder out"
        ) from error
    directions = metrics.pop(DIRECTIONS_KEY, None)
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides: Any = OmegaConf.load(overrides_file) if overrides_file.is_file() else []
    return RunRecord(
        folder,
        [str(item) for item in overrides],
        config,
        metrics,
        {str(k): str(v) for k, v in directions.items()} if isinstance(directions, dict) else None,
    )


def natural_key(path: Path) -> list[Any]:
    """Sort sweep jobs 2 before 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_runs(folders: list[Path]) -> tuple[list[RunRecord], list[Path]]:
    """Finished runs under `folders` (each a run or a folder of runs) and unfinished ones
    (a `.hydra/` folder without `metrics.json`)."""
    finished: dict[Path, RunRecord] = {}
    unfinished: set[Path] = set()
    for folder in folders:
        if not folder.is_dir():
            raise UserError(
                f"no folder {folder}; pass run or sweep folders, e.g. outputs/multirun/<sweep>"
            )
        for hydra_folder in sorted(folder.rglob(".hydra")):
            run_folder = hydra_folder.parent.resolve()
            if not (run_folder / ".hydra" / "config.yaml").is_file():
                continue
            if (run_folder / "metrics.json").is_file():
                finished.setdefault(run_folder, load_run(run_folder))
            else:
                unfinished.add(run_folder)
    runs = sorted(finished.values(), key=lambda run: natural_key(run.folder))
    return runs, sorted(unfinished, key=natural_key)


def flat_settings(node: Any, prefix: str = "") -> dict[str, Any]:
    """A config as {"a.b.c": value}."""
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flat_settings(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): node}


def comparable_settings(run: RunRecord, task: str) -> dict[str, Any]:
    """The run's settings that a baseline for `task` should share: everything but
    IGNORED_SETTINGS, plus the settings of `task` itself (its head and loss)."""
    try:
        content = OmegaConf.to_container(run.config, resolve=True)
    except Exception:  # an interpolation this process cannot resolve: compare it unresolved
        content = OmegaConf.to_container(run.config, resolve=False)
    assert isinstance(content, dict)
    settings = {
        key: value
        for key, value in flat_settings(content).items()
        if not any(key == ignored or key.startswith(ignored + ".") for ignored in IGNORED_SETTINGS)
    }
    task_settings = (content.get("tasks") or {}).get(task, {})
    settings.update(flat_settings(task_settings, f"tasks.{task}."))
    return settings


def find_baseline(
    run: RunRecord, task: str, candidates: list[RunRecord], label: Labeller
) -> Baseline:
    """The single-task run of `task` whose settings are closest to `run`'s (ideally equal).

    Args:
        run: the multi-task run.
        task: one of its tasks.
        candidates: runs to choose from; only single-task runs of `task` count.
        label: how runs are named in notes (a function of a run).
    """
    singles = [candidate for candidate in candidates if candidate.tasks == [task]]
    if not singles:
        return Baseline(task, None, f"missing: no single-task run of '{task}' ('tasks=[{task}]')")
    wanted = comparable_settings(run, task)
    differences = []
    for single in singles:
        theirs = comparable_settings(single, task)
        keys = sorted(
            key for key in wanted.keys() | theirs.keys() if wanted.get(key) != theirs.get(key)
        )
        differences.append((keys, single))
    fewest = min(len(keys) for keys, _ in differences)
    closest = [(keys, single) for keys, single in differences if len(keys) == fewest]
    if len(closest) > 1:
        names = ", ".join(label(single) for _, single in closest)
        return Baseline(
            task,
            None,
            f"ambiguous: {len(closest)} single-task runs of '{task}' fit equally ({names})",
        )
    ((keys, single),) = closest
    shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
    note = f"settings differ in {shown}" if keys else ""
    return Baseline(task, single, note, label(single))


def summary_keys(run: RunRecord, task: str, include_loss: bool = True) -> list[str]:
    """The run's `val/<task>/<metric>` keys, without per-class ones (`ap50/<class>`)."""
    prefix = f"val/{task}/"
    keys = [key for key in run.metrics if key.startswith(prefix) and "/" not in key[len(prefix) :]]
    return [key for key in keys if include_loss or not key.endswith("/loss")]


def compare(run: RunRecord, baselines: list[Baseline], include_loss: bool) -> Row:
    """`run`'s row: Δm% over its tasks' metrics against `baselines` (one per task)."""
    row = Row(run, label="", baselines=baselines)
    if any(baseline.run is None for baseline in baselines):
        row.notes.append("no Δm: a baseline is missing or ambiguous")
        return row
    measured: list[tuple[float, float, Direction]] = []
    undeclared: list[str] = []  # by a run from before metrics.json carried directions
    for baseline in baselines:
        assert baseline.run is not None
        for key in summary_keys(run, baseline.task, include_loss):
            direction = metric_direction(run, key)
            reference = baseline.run.metrics.get(key)
            if direction is None and run.directions is None:
                undeclared.append(key)
            elif direction is None:
                row.notes.append(
                    f"{key} left out of Δm: its direction is unknown (declare it in the "
                    "class-level metric_directions of the task's class)"
                )
            elif not isinstance(reference, int | float) or reference == 0:
                row.notes.append(f"{key} left out of Δm: the baseline has no non-zero value")
            elif math.isnan(reference) or math.isnan(float(run.metrics[key])):
                row.notes.append(f"{key} left out of Δm: NaN (an evaluation without valid targets)")
            else:
                measured.append((float(run.metrics[key]), float(reference), direction))
                row.notes += near_zero_note(key, float(run.metrics[key]), float(reference))
    if undeclared:
        row.notes.append(
            f"{', '.join(undeclared)} left out of Δm: directions unknown (this run's "
            f"metrics.json has no '{DIRECTIONS_KEY}'; an older mtlrun wrote it)"
        )
    if measured:
        row.delta_m = delta_m(measured)
    else:
        row.notes.append("no Δm: no metric could be compared")
    return row


def near_zero_note(key: str, value: float, reference: float) -> list[str]:
    """A warning when a baseline value is so close to zero that its relative change
    dominates Δm (an mIoU of 0.0046 turns a small gain into +27.84%)."""
    if abs(reference) >= NEAR_ZERO:
        return []
    change = 100.0 * (value - reference) / reference
    return [
        f"warning: the baseline's {key} is {reference:.3g}, near zero: its relative change "
        f"({change:+.4g}%) dominates Δm; compare that metric on its own"
    ]


def common_overrides(runs: list[RunRecord]) -> list[str]:
    """Overrides every run shares (shown once, above the table)."""
    if not runs:
        return []
    shared = set(runs[0].overrides).intersection(*(run.overrides for run in runs[1:]))
    return [override for override in runs[0].overrides if override in shared]


def make_label(output_dir: Path) -> Labeller:
    """A function naming a run by its folder relative to `output_dir` (or the cwd)."""

    def label(run: RunRecord) -> str:
        for root in (output_dir.resolve(), Path.cwd().resolve()):
            if run.folder.is_relative_to(root):
                return str(run.folder.relative_to(root)) or "."
        return str(run.folder)

    return label


def build_report(
    folders: list[Path],
    baseline_folders: list[Path] | None = None,
    output_dir: Path | None = None,
    include_loss: bool = False,
) -> Report:
    """Read the runs under `folders` and compare each multi-task run with its baselines.

    Args:
        folders: run or sweep folders whose runs make the rows.
        baseline_folders: where to look for single-task baselines instead of `folders`.
        output_dir: where report.md/csv go; run labels are relative to it.
        include_loss: count each task's validation loss in Δm too.
    """
    runs, unfinished = find_runs(folders)
    if not runs:
        raise UserError(
            f"no finished runs (metrics.json beside .hydra/) under {', '.join(map(str, folders))}; "
            "pass the folder of a run or a sweep"
        )
    candidates = find_runs(baseline_folders)[0] if baseline_folders else runs
    label = make_label(output_dir or default_output_dir(folders))
    rows: list[Row] = []
    for run in runs:
        if len(run.tasks) > 1:
            baselines = [find_baseline(run, task, candidates, label) for task in run.tasks]
            row = compare(run, baselines, include_loss)
        else:
            row = Row(run, "")  # a single-task run: a baseline, no Δm of its own
        row.label = label(run)
        rows.append(row)
    columns: list[str] = []
    directions: dict[str, Direction | None] = {}
    for run in runs:
        for task in run.tasks:
            for key in summary_keys(run, task):
                if key not in directions:
                    columns.append(key)
                # The first run that declares the key's direction gives the column its arrow.
                directions[key] = directions.get(key) or metric_direction(run, key)
    return Report(rows, columns, directions, common_overrides(runs), unfinished, include_loss)


def default_output_dir(folders: list[Path]) -> Path:
    """The one folder given, else the folder that holds them all."""
    return Path(os.path.commonpath([folder.resolve() for folder in folders]))


ARROWS = {Direction.MAX: "↑", Direction.MIN: "↓", None: "?"}


def column_title(report: Report, key: str) -> str:
    return f"{key.removeprefix('val/')} {ARROWS[report.directions.get(key)]}"


def cells(report: Report, row: Row) -> list[str]:
    """The row's table cells: run, its own overrides, metrics, Δm%."""
    shown = [o for o in row.run.overrides if o not in report.common_overrides]
    values = [row.run.metrics.get(key) for key in report.columns]
    metrics = ["" if value is None else f"{value:.4g}" for value in values]
    if row.delta_m is not None:
        delta = f"{row.delta_m:+.2f}"
    else:
        delta = "baseline" if len(row.run.tasks) == 1 else "n/a"
    return [row.label, " ".join(shown), *metrics, delta]


def row_notes(row: Row) -> list[str]:
    """Which baseline each task of a multi-task row was compared with, and what was left out."""
    if len(row.run.tasks) == 1:
        return []
    used = []
    for baseline in row.baselines:
        if baseline.run is None:
            used.append(f"{baseline.task}: {baseline.note}")
        else:
            detail = f" ({baseline.note})" if baseline.note else ""
            used.append(f"{baseline.task} ← {baseline.label}{detail}")
    return ["; ".join(used), *row.notes]


def header_lines(report: Report) -> list[str]:
    counted = (
        "each task's metrics and its validation loss"
        if report.include_loss
        else ("each task's metrics (not its loss)")
    )
    lines = [SIGN_CONVENTION, f"Δm counts {counted}; ↑ higher / ↓ lower is better."]
    if report.common_overrides:
        lines.append("Overrides of every run: " + " ".join(report.common_overrides))
    return lines


def notes(report: Report) -> list[str]:
    """One line per multi-task run (its baselines and what was left out), then unfinished runs."""
    lines: list[str] = []
    for row in report.rows:
        lines.extend(f"{row.label}: {note}" for note in row_notes(row) if note)
    lines.extend(f"{folder}: unfinished (no metrics.json)" for folder in report.unfinished)
    return lines


def to_markdown(report: Report) -> str:
    titles = ["run", "overrides", *(column_title(report, key) for key in report.columns), "Δm% ↑"]
    escape = str.maketrans({"|": "\\|"})
    lines = ["# mtlrun report", "", *(f"{line}  " for line in header_lines(report)), ""]
    lines.append("| " + " | ".join(titles) + " |")
    lines.append("|" + "---|" * len(titles))
    for row in report.rows:
        lines.append(
            "| " + " | ".join(cell.translate(escape) for cell in cells(report, row)) + " |"
        )
    if found := notes(report):
        lines += ["", "## Baselines and notes", "", *(f"- {line}" for line in found)]
    return "\n".join(lines) + "\n"


def write_csv(report: Report, path: Path) -> None:
    """Every metric of every run (per-class ones too), Δm% and the baselines used."""
    keys: list[str] = []
    for row in report.rows:
        keys.extend(k for k in row.run.metrics if k.startswith("val/") and k not in keys)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["run", "overrides", "tasks", *keys, "delta_m_percent", "baselines"])
        for row in report.rows:
            writer.writerow(
                [
                    row.label,
                    " ".join(row.run.overrides),
                    ",".join(row.run.tasks),
                    *(row.run.metrics.get(key, "") for key in keys),
                    "" if row.delta_m is None else row.delta_m,
                    "; ".join(row_notes(row)),
                ]
            )


def to_table(report: Report) -> Table:
    table = Table(title="mtlrun report", title_justify="left")
    table.add_column("run", overflow="fold")
    table.add_column("overrides", overflow="fold")
    for key in report.columns:
        table.add_column(column_title(report, key), justify="right", overflow="fold")
    table.add_column("Δm% ↑", justify="right")
    for row in report.rows:
        table.add_row(*(Text(cell) for cell in cells(report, row)))  # Text: no rich markup
    return table


def write_report(
    folders: list[Path],
    baseline_folders: list[Path] | None = None,
    output_dir: Path | None = None,
    include_loss: bool = False,
    console: Console | None = None,
) -> Report:
    """Build the report, print it, and write report.md and report.csv into `output_dir`
    (default: the one folder given, else the folder that holds them all)."""
    output_dir = output_dir or default_output_dir(folders)
    report = build_report(folders, baseline_folders, output_dir, include_loss)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / MARKDOWN_NAME).write_text(to_markdown(report))
    write_csv(report, output_dir / CSV_NAME)
    # Off a terminal (CI logs, pipes) rich would squeeze the table into 80 columns.
    console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    for line in header_lines(report):
        console.print(line, markup=False)
    console.print(to_table(report))
    for line in notes(report):
        console.print(f"- {line}", markup=False)
    console.print(f"wrote {output_dir / MARKDOWN_NAME} and {output_dir / CSV_NAME}", markup=False)
    return report


def parse_arguments(arguments: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mtlrun-report",
        description="Tabulate finished mtlrun runs and the Δm% of each multi-task run "
        "against single-task runs of its tasks; writes report.md and report.csv.",
    )
    parser.add_argument("folders", nargs="+", type=Path, help="run or sweep folders")
    parser.add_argument(
        "--baseline",
        action="append",
        type=Path,
        metavar="FOLDER",
        help="take single-task baselines from here instead (repeatable)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="FOLDER",
        help="where report.md/csv go (default: beside the runs)",
    )
    parser.add_argument(
        "--include-loss", action="store_true", help="count each task's validation loss in Δm too"
    )
    return parser.parse_args(arguments)


def main(arguments: list[str] | None = None) -> None:
    """The `mtlrun-report` command."""
    options = parse_arguments(sys.argv[1:] if arguments is None else arguments)
    try:
        write_report(options.folders, options.baseline, options.output, options.include_loss)
    except UserError as error:
        print(f"mtlrun-report: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None

"""The `mtlrun` command as users run it: subprocesses of the installed console script and of
`python -m mtlrun`, and (for the many bad-input cases) `mtlrun.cli.main()` in this process.

Every run gets its own temporary working folder, since `outputs/` is relative to it.
Processes that do not depend on each other are started together.
"""

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mtlrun.cli import GROUPS, config_dir
from processes import Finished, Started, assert_one_line_error, run

pytestmark = pytest.mark.slow  # every test here runs `mtlrun` in a subprocess


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (config_dir() / group).glob("*.yaml"))


def read_metrics(folder: Path) -> dict[str, float]:
    return json.loads((folder / "metrics.json").read_text())


def assert_succeeded(result: Finished) -> None:
    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def mtlrun_command() -> list[str]:
    """The `mtlrun` console script installed next to the running interpreter."""
    executable = Path(sys.executable).parent / "mtlrun"
    assert executable.is_file(), f"no console script at {executable}; pip install -e ."
    return [str(executable)]


@pytest.fixture(scope="module")
def smoke_arguments(tiny_overrides: tuple[str, ...]) -> list[str]:
    """`experiment=smoke`, shrunk further, one torch thread (runs go two at a time)."""
    return ["experiment=smoke", *tiny_overrides, "trainer.threads=1"]


@dataclass
class ConcurrentRuns:
    console_script: Finished
    module: Finished


@pytest.fixture(scope="module")
def concurrent_runs(
    mtlrun_command: list[str],
    smoke_arguments: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> ConcurrentRuns:
    """`mtlrun` and `python -m mtlrun` started at the same time in the same folder."""
    cwd = tmp_path_factory.mktemp("together")
    console = Started([*mtlrun_command, *smoke_arguments, "trainer.progress=plain"], cwd)
    module = Started([sys.executable, "-m", "mtlrun", *smoke_arguments], cwd)
    return ConcurrentRuns(console.finish(), module.finish())


def test_console_script_and_module_both_train(concurrent_runs: ConcurrentRuns) -> None:
    for result in (concurrent_runs.console_script, concurrent_runs.module):
        assert_succeeded(result)


def test_runs_started_together_get_their_own_folders(concurrent_runs: ConcurrentRuns) -> None:
    folders = concurrent_runs.console_script.run_folders()
    assert len(folders) == 2 and folders[0] != folders[1]
    for folder in folders:
        assert (folder / "metrics.json").is_file()
        assert (folder / "checkpoints" / "last.pt").is_file()
        assert list(folder.glob("events.out.tfevents.*"))
    first, second = (read_metrics(folder) for folder in folders)
    assert first.keys() == second.keys()
    assert {key for key in first if key.startswith("val/")} >= {"val/cls/acc", "val/seg/miou"}
    for key in first:  # same seed, same config, one thread each: the same numbers
        assert key == "wall_s" or first[key] == second[key], key


def test_plain_progress_reports_steps_metrics_and_folder(concurrent_runs: ConcurrentRuns) -> None:
    result = concurrent_runs.console_script
    folders = {str(folder.resolve()) for folder in result.run_folders()}
    assert "step 1" in result.stdout
    assert "validation metrics" in result.stdout
    printed = [line.removeprefix("outputs: ").strip() for line in result.stdout.splitlines()]
    assert folders & {str(Path(line).resolve()) for line in printed if line.startswith("/")}


def test_plain_lines_carry_the_step_count_and_eta(concurrent_runs: ConcurrentRuns) -> None:
    lines = concurrent_runs.console_script.stdout.splitlines()
    steps = [line for line in lines if line.startswith("epoch ")]
    assert steps and all(re.match(r"epoch 1/1  step \d+/2  ETA \S+  loss ", s) for s in steps)
    assert steps[-1].startswith("epoch 1/1  step 2/2  ETA 0:00:00")


def test_the_config_is_printed_as_its_changes(concurrent_runs: ConcurrentRuns) -> None:
    lines = concurrent_runs.console_script.stdout.splitlines()
    first_step = next(i for i, line in enumerate(lines) if line.startswith("epoch "))
    printed = lines[:first_step]
    assert printed[0].startswith("config, as it differs from the defaults")
    assert "  experiment: default → smoke" in printed
    assert "  trainer.progress: auto → plain" in printed
    assert len(printed) < 20 and "_target_" not in "".join(printed)


def console_script_folder(result: Finished) -> Path:
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("outputs: ")]
    return Path(line.removeprefix("outputs: "))


def test_cli_log_holds_the_console_output(concurrent_runs: ConcurrentRuns) -> None:
    result = concurrent_runs.console_script
    log = (console_script_folder(result) / "cli.log").read_text()
    assert "\x1b[" not in log
    for line in result.stdout.splitlines():
        if line.strip() and not line.startswith(("┏", "┃", "┡", "│", "└")):
            assert line.rstrip() in log, line


def test_run_folders_say_when_and_what_ran(concurrent_runs: ConcurrentRuns) -> None:
    for folder in concurrent_runs.console_script.run_folders():
        assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_cls-seg-gen_sum_\d+", folder.name)


def test_resume_continues_that_run_with_the_overrides_on_top(
    concurrent_runs: ConcurrentRuns, mtlrun_command: list[str], tmp_path: Path
) -> None:
    previous = concurrent_runs.console_script.run_folders()[0]
    result = run([*mtlrun_command, f"resume={previous}", "trainer.epochs=2"], tmp_path)
    assert_succeeded(result)
    assert f"resuming {previous} with trainer.epochs 1 → 2" in result.stdout
    (folder,) = result.run_folders()
    assert folder.name.endswith(f"_cls-seg-gen_sum_resumed_{folder.name.rsplit('_', 1)[1]}")
    config = OmegaConf.load(folder / ".hydra" / "config.yaml")
    assert config.trainer.epochs == 2 and config.dataset.train_size == 16  # the run's own
    assert read_metrics(folder)["epoch"] == 2 and read_metrics(folder)["step"] == 4


def test_one_process_per_run_folder_and_a_killed_ones_lock_is_taken_over(
    mtlrun_command: list[str], smoke_arguments: list[str], tmp_path: Path
) -> None:
    folder = tmp_path / "run"
    arguments = [*mtlrun_command, *smoke_arguments, f"hydra.run.dir={folder}"]
    first = Started([*arguments, "trainer.epochs=500", "trainer.progress=plain"], tmp_path)
    first.wait_for("val after epoch 1")
    second = run([*arguments, "trainer.epochs=500"], tmp_path)
    assert_one_line_error(second, [f"pid {first.process.pid}", str(folder)])
    first.process.kill()
    first.finish()
    third = run([*arguments, "trainer.epochs=1", "trainer.progress=plain"], tmp_path)
    assert_succeeded(third)
    assert "resumed from" in third.stdout  # the killed run's checkpoint, in its folder
    assert (folder / ".mtlrun.lock").read_text() == ""


def test_version_is_mtlrun_s_own(mtlrun_command: list[str], tmp_path: Path) -> None:
    result = run([*mtlrun_command, "--version"], tmp_path)
    assert_succeeded(result)
    assert result.stdout == f"mtlrun {metadata.version('mtlrun')}\n"


def test_help_cut_short_by_a_pipe_ends_quietly(tmp_path: Path) -> None:
    piped = subprocess.run(
        f"{sys.executable} -m mtlrun --help | head -3",
        shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert len(piped.stdout.splitlines()) == 3
    assert piped.stderr == ""


def test_multirun_writes_one_numbered_folder_per_job(
    mtlrun_command: list[str], smoke_arguments: list[str], tmp_path: Path
) -> None:
    result = run([*mtlrun_command, "-m", "tasks=[cls],[seg]", *smoke_arguments], tmp_path)
    assert_succeeded(result)
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    assert sorted(path.name for path in sweep.iterdir() if path.is_dir()) == ["0", "1"]
    for job, task in (("0", "cls"), ("1", "seg")):
        tasks = {key.split("/")[1] for key in read_metrics(sweep / job) if key.startswith("val/")}
        assert tasks == {task}
    assert not (tmp_path / "outputs" / "runs").exists()


def test_help_lists_every_group_and_its_options(mtlrun_command: list[str], tmp_path: Path) -> None:
    result = run([*mtlrun_command, "--help"], tmp_path)
    assert_succeeded(result)
    for group in GROUPS:
        assert f"{group}: {', '.join(group_options(group))}" in result.stdout, group
    assert not (tmp_path / "outputs").exists()


def test_cfg_job_prints_the_config_without_training(
    mtlrun_command: list[str], tmp_path: Path
) -> None:
    result = run([*mtlrun_command, "--cfg", "job", "tasks=[seg]", "trainer.epochs=3"], tmp_path)
    assert_succeeded(result)
    printed = OmegaConf.create(result.stdout)
    assert list(printed.tasks) == ["seg"]
    assert printed.trainer.epochs == 3
    assert printed.backbone._target_
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("*.pt"))


# --- bad input: one line on stderr, a non-zero exit, no traceback ---------------------------


@dataclass
class BadInput:
    arguments: list[str]  # "{files}" stands for a folder holding the files below
    named: list[str]  # what the one error line must mention


BAD_INPUTS: dict[str, BadInput] = {
    "unknown-task": BadInput(["tasks=[cls,foo]"], ["foo", *group_options("tasks")]),
    "unknown-backbone": BadInput(["backbone=foo"], ["foo", *group_options("backbone")]),
    "unknown-weighting": BadInput(["weighting=foo"], ["foo", *group_options("weighting")]),
    "unknown-dataset": BadInput(["dataset=foo"], ["foo", *group_options("dataset")]),
    "unknown-task-in-sweep": BadInput(["-m", "tasks=[cls],[foo]"], ["foo"]),
    "no-tasks": BadInput(["tasks=[]"], ["tasks"]),
    "lambda-of-unselected-task": BadInput(
        ["tasks=[cls]", "weighting=static", "weighting.weights={foo:1.0}"], ["foo"]
    ),
    "negative-lambda": BadInput(
        ["tasks=[cls]", "weighting=static", "weighting.weights={cls:-1.0}"], ["-1.0"]
    ),
    "missing-resume-path": BadInput(["resume={files}/nowhere"], ["nowhere"]),
    "resume-text-file": BadInput(["resume={files}/notes.pt"], ["notes.pt"]),
    "resume-foreign-file": BadInput(["resume={files}/foreign.pt"], ["foreign.pt"]),
    "unknown-trainer-key": BadInput(["+trainer.foo=1"], ["trainer.foo"]),
    "wrong-trainer-type": BadInput(["trainer.epochs=abc"], ["trainer.epochs", "abc"]),
    "unknown-task-setting": BadInput(["+tasks.cls.foo=1"], ["tasks.cls", "foo"]),
    "unknown-optimizer-key": BadInput(["+optimizer.lrr=1"], ["optimizer.lrr", "lr"]),
    "wrong-optimizer-type": BadInput(["optimizer.lr=fast"], ["optimizer.lr", "fast"]),
    "wrong-dataset-type": BadInput(["dataset.image_size=big"], ["dataset.image_size", "big"]),
    "wrong-list-element": BadInput(["backbone.channels=[8,x]"], ["backbone.channels", "x"]),
    "override-of-missing-key": BadInput(["optimizer.lrr=1"], ["optimizer.lrr", "+"]),
    "malformed-override": BadInput(["tasks=[cls"], ["tasks=[cls", "quote"]),
    "dangling-interpolation": BadInput(["trainer.seed=${nowhere}"], ["nowhere"]),
    "deleted-group": BadInput(["~optimizer"], ["optimizer"]),
    "task-that-is-not-a-node": BadInput(["tasks.cls=3"], ["tasks.cls", "_target_"]),
    "unknown-nonfinite-mode": BadInput(["trainer.nonfinite=ignore"], ["trainer.nonfinite", "skip"]),
    "negative-checkpoint-cadence": BadInput(
        ["trainer.checkpoint_every_n_steps=-1"], ["trainer.checkpoint_every_n_steps", ">= 0"]
    ),
}


# One case per stage that can fail (before Hydra, while building, while training), as real
# processes; all cases run in-process through the same `main()`, which is much cheaper.
SUBPROCESS_CASES = ["unknown-backbone", "wrong-trainer-type", "resume-text-file"]


def write_non_checkpoints(folder: Path) -> None:
    """A text file and a torch file without the checkpoint format tag."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.pt").write_text("these are notes, not a checkpoint\n")
    torch.save({"weights": torch.zeros(3)}, folder / "foreign.pt")


def arguments_of(case: str, files: Path) -> list[str]:
    return [argument.replace("{files}", str(files)) for argument in BAD_INPUTS[case].arguments]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("files")
    write_non_checkpoints(folder)
    return folder


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line(
    case: str, call_main: Callable[[list[str]], Finished], smoke_arguments: list[str], files: Path
) -> None:
    result = call_main([*smoke_arguments, *arguments_of(case, files)])
    assert_one_line_error(result, BAD_INPUTS[case].named)
    assert not result.stdout  # nothing printed before the error: no config
    assert not result.run_folders()  # a refused run leaves no folder


@pytest.fixture(scope="module")
def bad_input_processes(
    mtlrun_command: list[str],
    smoke_arguments: list[str],
    files: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Finished]:
    """The `SUBPROCESS_CASES`, run as concurrent processes, each in its own folder."""
    root = tmp_path_factory.mktemp("bad")
    started = {
        case: Started([*mtlrun_command, *smoke_arguments, *arguments_of(case, files)], root / case)
        for case in SUBPROCESS_CASES
    }
    return {case: process.finish() for case, process in started.items()}


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_process_exits_with_one_clear_line(
    case: str, bad_input_processes: dict[str, Finished]
) -> None:
    result = bad_input_processes[case]
    assert_one_line_error(result, BAD_INPUTS[case].named)
    assert not result.stdout
    assert not result.run_folders()


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(
    concurrent_runs: ConcurrentRuns, mtlrun_command: list[str], smoke_arguments: list[str]
) -> None:
    """Resume a finished 1-epoch run for a 2nd epoch on NaN images (`dataset.noise=nan`):
    the first new step's loss is NaN."""
    finished = concurrent_runs.console_script
    folders_before = set(finished.run_folders())
    previous = min(folders_before)
    last = previous / "checkpoints" / "last.pt"
    before = last.read_bytes()
    first_task = next(iter(OmegaConf.load(previous / ".hydra" / "config.yaml").tasks))
    step = int(read_metrics(previous)["step"]) + 1  # the first step after the resumed one
    arguments = [*smoke_arguments, "trainer.epochs=2", "dataset.noise=nan", f"resume={previous}"]
    result = run([*mtlrun_command, *arguments], finished.cwd)
    assert_one_line_error(result, [f"'{first_task}'", f"step {step}", "NaN"])
    (new_folder,) = set(finished.run_folders()) - folders_before
    assert result.stderr.strip() in (new_folder / "cli.log").read_text()  # the log has it too
    assert not (new_folder / "checkpoints" / "last.pt").exists()
    assert not (new_folder / "metrics.json").exists()
    assert last.read_bytes() == before

"""What the terminal and the log file show: the live display at 60, 80 and 200 columns (a
captured rich console of that width, rendered as the terminal would draw it), plain lines,
the whole run's ETA, and the plain-text log."""

import io
import itertools
import re
import warnings
from pathlib import Path

import pytest
from rich.console import Console as RichConsole
from rich.text import Text

import mtlrun.console
from mtlrun.console import Clock, Console, clock_text
from mtlrun.tasks import Direction

FIVE_TASKS = ["cls", "seg", "gen", "depth", "det"]


@pytest.fixture
def seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock that moves half a second at every reading: each step takes 0.5 s."""
    ticks = itertools.count()
    monkeypatch.setattr(mtlrun.console.time, "perf_counter", lambda: next(ticks) * 0.5)


def terminal(width: int) -> RichConsole:
    return RichConsole(width=width, file=io.StringIO(), force_terminal=True, color_system=None)


def screen(console: Console, width: int) -> list[str]:
    """The live display's lines as a terminal `width` columns wide draws them."""
    assert console.progress is not None
    shot = RichConsole(width=width, file=io.StringIO(), force_terminal=True, record=True)
    shot.print(console.progress.get_renderable())
    return shot.export_text().rstrip("\n").splitlines()


def scalars(tasks: list[str]) -> dict[str, float]:
    losses = {f"train/loss/{name}": 1.2345 + i for i, name in enumerate(tasks)}
    return {**losses, "train/loss/total": 12.5, "train/lr": 2e-3, "train/throughput": 345.0}


def half_trained(console: Console, steps: int = 300) -> None:
    """6 epochs of 100 steps, half of them done (3 epochs, each evaluated)."""
    for epoch in range(3):
        console.start_epoch(epoch, 6, 100, 0, 1)
        for _ in range(100):
            console.advance()
        for _ in console.evaluating(range(4)):
            pass
    console.log_train(2, 6, steps, scalars(FIVE_TASKS), 345.0)


@pytest.mark.parametrize("width", [60, 80, 200])
def test_the_live_display_fits_the_width_with_step_bar_and_eta(width: int, seconds: None) -> None:
    console = Console("bar", terminal=terminal(width))
    half_trained(console)
    lines = screen(console, width)
    console.close()
    assert all(len(line) <= width for line in lines), lines
    first = lines[0]
    assert "epoch 3/6" in first and "step 300/600" in first and "50%" in first, first
    bar = max(len(run) for run in re.findall("━+", first))
    assert bar >= min(10, width // 6), first  # the bar keeps a usable length
    eta = re.search(r"ETA (\d+:\d\d:\d\d)", first)
    assert eta, first
    # 300 steps left at 0.5 s, 3 evaluations left at what the last one took (5 readings).
    hours, minutes, secs = (int(part) for part in eta.group(1).split(":"))
    assert abs(hours * 3600 + minutes * 60 + secs - (300 * 0.5 + 3 * console.clock.eval_s)) <= 1
    shown = " ".join(lines[1:])
    for name in FIVE_TASKS:  # the losses on their own lines, wrapped, not cut
        assert f"{name}=" in shown, lines


def test_evaluation_has_its_own_row_with_the_batches(seconds: None) -> None:
    console = Console("bar", terminal=terminal(80))
    half_trained(console)
    console.start_epoch(3, 6, 100, 0, 1)
    batches = console.evaluating(range(4))
    for _ in range(3):  # two batches evaluated, the third under way
        next(batches)
    lines = screen(console, 80)
    assert lines[0].startswith("epoch 4/6") and "step 300/600" in lines[0]
    assert "evaluating" in lines[1] and "batch 2/4" in lines[1], lines
    list(batches)
    assert "evaluating" not in " ".join(screen(console, 80))
    console.close()


def test_plain_lines_carry_step_total_eta_and_losses(seconds: None) -> None:
    capture = terminal(80)
    console = Console("plain", terminal=capture)
    half_trained(console)
    assert isinstance(capture.file, io.StringIO)
    (line,) = [line for line in capture.file.getvalue().splitlines() if "step" in line]
    assert re.search(r"epoch 3/6  step 300/600  ETA \d+:\d\d:\d\d  loss cls=1\.234", line), line
    assert "det=5.234" in line and "345 img/s" in line


def test_first_losses_are_shown_before_the_first_log_step(seconds: None) -> None:
    capture = terminal(100)
    console = Console("plain", terminal=capture)
    console.start_epoch(0, 2, 100, 0, 1)
    console.advance()
    assert console.needs_first_losses
    console.first_losses({"cls": 2.5, "seg": 1.0})
    assert not console.needs_first_losses
    assert isinstance(capture.file, io.StringIO)
    assert "step 1/200  ETA -:--:--  loss cls=2.5 seg=1" in capture.file.getvalue()


def test_the_eta_covers_the_whole_run_and_its_evaluations() -> None:
    clock = Clock()
    clock.plan(epoch=1, epochs=4, steps=10, done=5, eval_every=2)
    assert clock.done == 15 and clock.total == 40
    assert clock.remaining_s() is None  # nothing timed yet
    clock.timed, clock.training_s, clock.eval_s = 10, 5.0, 30.0
    # 25 steps at 0.5 s, evaluations after epochs 2 and 4.
    assert clock.remaining_s() == pytest.approx(25 * 0.5 + 2 * 30.0)
    assert clock_text(3725) == "1:02:05" and clock_text(90000) == "1:01:00:00"


def test_the_log_file_gets_everything_as_plain_text(tmp_path: Path, seconds: None) -> None:
    log = tmp_path / "cli.log"
    console = Console("bar", log_path=log, terminal=terminal(60))
    console.print_changes(["trainer.epochs: 6 → 1"])
    half_trained(console)
    console.log_eval(2, {"val/cls/acc": 0.5})
    console.note("a warning")
    console.summary({"val/cls/acc": 0.5}, {"val/cls/acc": Direction.MAX}, tmp_path)
    console.error("mtlrun: error: something")
    with pytest.warns(UserWarning, match="careful"), console.logging_warnings():
        warnings.warn("careful", UserWarning, stacklevel=1)  # still shown (and recorded)
    console.close_log()
    text = log.read_text()
    assert "\x1b[" not in text  # no colours or cursor moves
    for expected in (
        "trainer.epochs: 6 → 1",
        "epoch 3/6  step 300/600  ETA",
        "val after epoch 3: cls/acc=0.5",
        "a warning",
        "validation metrics",
        f"outputs: {tmp_path}",
        "mtlrun: error: something",
        "UserWarning: careful",
    ):
        assert expected in text, expected


def test_print_changes_says_when_nothing_differs() -> None:
    capture = terminal(100)
    console = Console("plain", terminal=capture)
    console.print_changes([])
    console.print_changes([f"key{i}: a → b" for i in range(3)])
    assert isinstance(capture.file, io.StringIO)
    lines = capture.file.getvalue().splitlines()
    assert lines[0].startswith("config: the defaults")
    assert lines[1].startswith("config, as it differs") and lines[2:] == [
        "  key0: a → b",
        "  key1: a → b",
        "  key2: a → b",
    ]


def test_none_prints_nothing_to_the_terminal() -> None:
    capture = terminal(80)
    console = Console("none", terminal=capture)
    console.note("hello")
    console.say(Text("there"))
    assert isinstance(capture.file, io.StringIO)
    assert capture.file.getvalue() == ""

"""Running `mtlrun` as users do: real processes, or `mtlrun.cli.main()` in this process.

Every run gets its own working folder, since `outputs/` is relative to it.
"""

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 300


@dataclass
class Finished:
    """What a finished process left: exit code, output and its working folder."""

    returncode: int
    stdout: str
    stderr: str
    cwd: Path

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def run_folders(self) -> list[Path]:
        return sorted(path for path in (self.cwd / "outputs" / "runs").glob("*") if path.is_dir())


class Started:
    """A process started in `cwd` and not yet waited for."""

    def __init__(self, command: Sequence[str | Path], cwd: Path) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        environment["NO_COLOR"] = "1"
        environment["PYTHONUNBUFFERED"] = "1"  # lines arrive as printed, for `wait_for`
        self.cwd = cwd
        self.seen: list[str] = []
        self.process = subprocess.Popen(
            [str(part) for part in command],
            cwd=cwd,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for(self, text: str) -> str:
        """Read stdout up to the first line containing `text` (kept for `finish`)."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"the process ended without printing {text!r}: {self.seen[-5:]}")

    def finish(self) -> Finished:
        stdout, stderr = self.process.communicate(timeout=TIMEOUT_S)
        return Finished(self.process.returncode, "".join(self.seen) + stdout, stderr, self.cwd)


def run(command: Sequence[str | Path], cwd: Path) -> Finished:
    return Started(command, cwd).finish()


def assert_one_line_error(result: Finished, named: Sequence[str]) -> None:
    """A non-zero exit, no traceback, and exactly one line on stderr naming `named`."""
    assert result.returncode != 0, result.output[-3000:]
    assert "Traceback" not in result.output, result.output[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in named:
        assert word in lines[0], f"{word!r} not in: {lines[0]}"

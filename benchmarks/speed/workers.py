"""Measurements that need a fresh process: each runs as `run.py --worker NAME --spec JSON`,
which prints one line `RESULT_PREFIX + json` for the parent to read."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from speed.common import BENCHMARKS_DIR

RESULT_PREFIX = "BENCH-RESULT "
RUN_SCRIPT = BENCHMARKS_DIR / "run.py"


def run_worker(
    name: str, spec: dict[str, Any], timeout_s: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run worker `name` on `spec` in a fresh Python process; its result, or {"error": ...}."""
    command = [sys.executable, str(RUN_SCRIPT), "--worker", name, "--spec", json.dumps(spec)]
    return run_for_result(command, timeout_s, env)


def run_for_result(
    command: list[str], timeout_s: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> dict[str, Any]:
    """Run `command`; the result line it printed, or {"error": its last line of output}."""
    try:
        finished = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{' '.join(command[1:3])} passed its {timeout_s:.0f} s limit"}
    for line in reversed(finished.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line.removeprefix(RESULT_PREFIX))
    lines = (finished.stderr or finished.stdout).strip().splitlines()
    return {"error": lines[-1][:300] if lines else f"exit status {finished.returncode}"}


def report(result: dict[str, Any]) -> None:
    """Hand `result` to the parent process (worker side)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)

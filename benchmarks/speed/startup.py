"""Section 3, start-up: process start -> first training step of `mtlrun experiment=smoke`,
÷ the time `python -c "import torch, torchvision"` takes, medians of alternating runs.

A run counts as started at `Popen` and as at its first step when it prints the first line
holding `MARKER` (the plain progress line of step 1, printed right after that step).
"""

import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speed.common import BENCHMARKS_DIR, Section, Settings, median, verdict
from speed.workers import run_for_result

MARKER = "step 1/"
SMOKE_ARGUMENTS = ("experiment=smoke", "trainer.log_every_n_steps=1", "trainer.progress=plain")
BASELINE_CODE = "import torch, torchvision"
GOAL = 1.3
IMPORT_LINE = "import time:"


@dataclass
class Launch:
    """What one launch showed: seconds to its first output line, to the marker, to its end
    (None where not reached), its output, and the self time of each module it imported."""

    first_output_s: float | None = None
    marker_s: float | None = None
    lines: list[str] = field(default_factory=list)
    imports_s: dict[str, float] = field(default_factory=dict)


def mtlrun_command() -> list[str]:
    """The installed `mtlrun` console script, as users start it."""
    script = Path(sys.executable).with_name("mtlrun")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mtlrun"]
    return [*command, *SMOKE_ARGUMENTS]


def launch(command: list[str], cwd: str, marker: str | None, profile_imports: bool) -> Launch:
    """Run `command` until a line holds `marker` (then stop it) or, without one, to its end."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if profile_imports:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    result = Launch()
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    with process.stdout:
        for line in process.stdout:
            elapsed = time.perf_counter() - start
            if line.startswith(IMPORT_LINE):
                add_import(result.imports_s, line)
                continue
            result.lines.append(line.rstrip())
            if result.first_output_s is None:
                result.first_output_s = elapsed
            if marker is not None and marker in line:
                result.marker_s = elapsed
                process.terminate()  # the rest of the run is not measured
                break
    process.wait()
    if marker is None and process.returncode == 0:
        result.marker_s = time.perf_counter() - start
    return result


def add_import(imports_s: dict[str, float], line: str) -> None:
    """Record one `-X importtime` line: the module's self time."""
    parts = line.removeprefix(IMPORT_LINE).split("|")
    if len(parts) == 3 and parts[0].strip().isdigit():  # not the header line
        imports_s[parts[2].strip()] = int(parts[0]) / 1e6


def added_imports(launch: Launch, baseline: Launch) -> dict[str, float]:
    """Self time of the modules `launch` imported and `baseline` did not, summed by
    top-level package, largest first."""
    by_package: dict[str, float] = defaultdict(float)
    for module, seconds in launch.imports_s.items():
        if module not in baseline.imports_s:
            by_package[module.split(".")[0]] += seconds
    return dict(sorted(by_package.items(), key=lambda item: -item[1]))


def measure(settings: Settings) -> Section:
    runs = settings.pick(2, 5)
    smoke_command = mtlrun_command()
    baseline_command = [sys.executable, "-c", BASELINE_CODE]
    smoke: list[Launch] = []
    baseline: list[Launch] = []
    with tempfile.TemporaryDirectory(prefix="mtlrun-bench-startup-") as cwd:
        # Profiled launches first: they also warm the file cache for the timed ones.
        profiled = launch(smoke_command, cwd, MARKER, profile_imports=True)
        profiled_baseline = launch(baseline_command, cwd, None, profile_imports=True)
        for _ in range(runs):
            smoke.append(launch(smoke_command, cwd, MARKER, profile_imports=False))
            baseline.append(launch(baseline_command, cwd, None, profile_imports=False))
    failed = next((run for run in [*smoke, *baseline] if run.marker_s is None), None)
    if failed is not None:
        tail = " | ".join(failed.lines[-3:]) or "no output"
        return Section("3. Start-up", ["measure", "value"], [["failed", tail]])
    section = summarise(smoke, baseline, profiled, profiled_baseline)
    section.rows += phase_rows(section.data)
    return section


def phase_rows(data: dict[str, Any]) -> list[list[str]]:
    """Rows for the phases of one fresh in-process imitation of the smoke run's start-up
    (recorded into `data`)."""
    started = time.time()
    result = run_for_result(
        [sys.executable, "-m", "speed.startup_phases"], timeout_s=600, cwd=BENCHMARKS_DIR
    )
    if "error" in result:
        return [["phases: failed", result["error"], "", ""]]
    phases = {"interpreter start": result["process_start"] - started, **result["phases_s"]}
    data["phases_s"] = phases
    data["later_step_s"] = result["later_step_s"]
    rows = [[f"… phase: {name} (s)", f"{seconds:.2f}", "", ""] for name, seconds in phases.items()]
    rows.append(
        ["… for comparison: a later training step (s)", f"{result['later_step_s']:.2f}", "", ""]
    )
    return rows


def summarise(
    smoke: list[Launch], baseline: list[Launch], profiled: Launch, profiled_baseline: Launch
) -> Section:
    first_step = median([run.marker_s or 0.0 for run in smoke])
    first_output = median([run.first_output_s or 0.0 for run in smoke])
    imports = median([run.marker_s or 0.0 for run in baseline])
    ratio = first_step / imports
    extra = added_imports(profiled, profiled_baseline)
    heaviest = list(extra.items())[:10]
    rows = [
        [
            "`mtlrun experiment=smoke`: start -> first 'step 1 ' line (s, median)",
            f"{first_step:.2f}",
            "",
            "",
        ],
        ["… of which start -> first output line (s, median)", f"{first_output:.2f}", "", ""],
        [f"`python -c '{BASELINE_CODE}'` (s, median)", f"{imports:.2f}", "", ""],
        ["mtlrun ÷ import torch, torchvision", f"{ratio:.2f}", f"≤ {GOAL}", verdict(ratio <= GOAL)],
    ]
    notes = [
        f"command: mtlrun {' '.join(SMOKE_ARGUMENTS)} in a temporary cwd, PYTHONUNBUFFERED=1; "
        f"{len(smoke)} alternating runs of each after one import-profiled run of each.",
        "modules mtlrun imports before step 1 that `import torch, torchvision` does not (-X "
        "importtime self time by top-level package, inflated by profiling): total "
        f"{sum(extra.values()):.2f} s; "
        + ", ".join(f"{package} {seconds:.2f} s" for package, seconds in heaviest)
        + ".",
    ]
    data = {
        "first_step_s": [run.marker_s for run in smoke],
        "first_output_s": [run.first_output_s for run in smoke],
        "import_torch_torchvision_s": [run.marker_s for run in baseline],
        "ratio": ratio,
        "goal": GOAL,
        "extra_imports_s": dict(heaviest),
    }
    return Section("3. Start-up", ["measure", "value", "goal", "verdict"], rows, notes, data)

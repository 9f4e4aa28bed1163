"""Section 4, weighting cost: runs `benchmarks/weighting.py` (kept by its own author) in its
quick settings, if it exists, and shows the table of the `weighting-*.json` it writes."""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from speed.common import BENCHMARKS_DIR, Section, Settings

SCRIPT = BENCHMARKS_DIR / "weighting.py"
TITLE = "4. Weighting cost"
TIMEOUT_S = 600


def measure(settings: Settings) -> Section:
    if not SCRIPT.exists():
        missing = f"{SCRIPT.relative_to(BENCHMARKS_DIR.parent)} does not exist yet."
        return Section(TITLE, ["measure", "value"], [["weighting cost", "not measured"]], [missing])
    # Its quick results go to a temporary folder (and into this report's JSON), so that they
    # never replace a full weighting-*.json of the same day in results/.
    with tempfile.TemporaryDirectory(prefix="mtlrun-bench-weighting-") as folder:
        command = [sys.executable, str(SCRIPT), *options(settings, Path(folder))]
        started = time.time()
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
        if finished.returncode != 0:
            last = (finished.stderr or finished.stdout).strip().splitlines()[-1:] or ["no output"]
            return Section(TITLE, ["measure", "value"], [["weighting.py failed", last[0][:200]]])
        written = newest_result([Path(folder), BENCHMARKS_DIR / "results"], started)
        if written is None:
            return Section(TITLE, ["measure", "value"], [["weighting cost", "no results file"]])
        section = table(json.loads(written.read_text()))
    shown = " ".join(command[2:]).replace(folder, "<temporary folder>")
    section.notes.append(f"from benchmarks/weighting.py {shown}; its results are in this JSON.")
    return section


def options(settings: Settings, out_dir: Path) -> list[str]:
    """The flags weighting.py says it accepts, among --quick, --device and --out."""
    shown = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=False
    ).stdout
    chosen = ["--quick"] if "--quick" in shown else []
    if "--device" in shown:
        chosen += ["--device", settings.device.type]
    if "--out" in shown:
        chosen += ["--out", str(out_dir)]
    return chosen


def newest_result(folders: list[Path], since: float) -> Path | None:
    found = [
        path
        for folder in folders
        for path in folder.glob("weighting-*.json")
        if path.stat().st_mtime >= since
    ]
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


def table(content: Any) -> Section:
    """A table from the JSON: its own columns and rows, a list of records, or the raw text."""
    if isinstance(content, dict) and "markdown" in content:
        return Section(TITLE, [], [], [], {"weighting": content}, body=str(content["markdown"]))
    records = content.get("rows", content.get("results")) if isinstance(content, dict) else content
    if isinstance(records, list) and records and all(isinstance(r, dict) for r in records):
        columns = list(dict.fromkeys(key for record in records for key in record))
        rows = [[cell(record.get(key)) for key in columns] for record in records]
        return Section(TITLE, columns, rows, [], {"weighting": content})
    if isinstance(content, dict) and isinstance(content.get("columns"), list) and records:
        rows = [[cell(value) for value in row] for row in records]
        return Section(
            TITLE, [str(c) for c in content["columns"]], rows, [], {"weighting": content}
        )
    return Section(TITLE, [], [], [json.dumps(content)[:2000]], {"weighting": content})


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)

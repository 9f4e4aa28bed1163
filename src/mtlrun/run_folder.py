"""The files a run writes into its folder besides checkpoints and event files."""

import json
import os
from pathlib import Path
from typing import Any

from mtlrun.errors import OutputWriteError


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write JSON atomically (temp file + rename); a failure leaves the old file whole."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(json.dumps(content, indent=2) + "\n")
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputWriteError(
            f"could not write {path} ({error.strerror or error}); free disk space or fix the "
            "folder's permissions"
        ) from error


def finished_metrics(output_dir: Path, epochs: int) -> dict[str, Any] | None:
    """The metrics of a run that already finished in `output_dir`, if one did."""
    try:
        metrics = json.loads((output_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or metrics.get("epoch", -1) < epochs:
        return None
    metrics.pop("directions", None)  # the table for readers of the folder, not a metric
    return metrics

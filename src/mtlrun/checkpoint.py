"""Checkpoints: plain dicts of tensors and numbers, written atomically, loaded safely.

A checkpoint never holds pickled objects, so it loads with `torch.load(weights_only=True)`
and a file from an untrusted source cannot run code.
"""

import os
import random
from pathlib import Path
from typing import Any

import torch

from mtlrun.errors import UserError

FORMAT = "mtlrun-checkpoint/1"


def save(content: dict[str, Any], path: Path) -> None:
    """Write `content` to `path` via a temporary file and a rename, so a crash mid-write
    leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            torch.save({"format": FORMAT, **content}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def resolve(resume: str | os.PathLike[str]) -> Path:
    """The checkpoint file meant by `resume=`: a .pt file, or a run folder's last.pt."""
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise UserError(
            f"resume={resume}: no checkpoint at {path}; pass a run folder that has "
            "checkpoints/last.pt, or a .pt file"
        )
    return path


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by `save`, refusing anything else."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} is not a readable mtlrun checkpoint ({reason[:200]})") from error
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise UserError(f"{path} is not an mtlrun checkpoint (no '{FORMAT}' format tag)")
    return content


def capture_rng() -> dict[str, Any]:
    """Every random number generator the training loop draws from."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """random.setstate needs tuples where a round trip may give lists."""
    return tuple(_as_tuple(item) for item in value) if isinstance(value, list | tuple) else value

"""Checkpoints: plain dicts of tensors and numbers, verified, written atomically, loaded safely.

A checkpoint never holds pickled objects, so it loads with `torch.load(weights_only=True)`
and a file from an untrusted source cannot run code. Each carries a SHA-256 checksum of its
content, so a truncated or corrupted file is recognised instead of half-loaded.

A run folder keeps its newest `keep` checkpoints as `last.pt`, `last.1.pt`, ... (newest
first). A new checkpoint is written to a temporary file first and only then rotated in, so a
crash at any moment leaves every earlier file whole, and resuming from a folder falls back
to the newest checkpoint that verifies.
"""

import hashlib
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mtlrun.errors import OutputWriteError, UserError, first_line

FORMAT = "mtlrun-checkpoint/2"
LAST = "last.pt"
BEST = "best.pt"


@dataclass
class Resume:
    """A verified checkpoint to continue from.

    Attributes:
        path: the file it was read from.
        content: what `load` returned.
        notes: what the search skipped on the way (damaged newer files), for the console.
    """

    path: Path
    content: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def checksum(value: Any) -> str:
    """SHA-256 over a canonical walk of a checkpoint's content (tensors by dtype, shape and
    bytes; containers in order; numbers and strings by repr)."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}:".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, list | tuple):  # a round trip may turn tuples into lists
        digest.update(f"S{len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, bool | int | float | str):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    else:
        raise TypeError(f"a checkpoint holds only tensors, containers and scalars, not {value!r}")


def rotated(path: Path, age: int) -> Path:
    """`last.pt` at age 0, `last.1.pt` at age 1, ..."""
    return path if age == 0 else path.with_name(f"{path.stem}.{age}{path.suffix}")


def save(content: dict[str, Any], path: Path, keep: int = 1) -> None:
    """Write `content` (with format tag and checksum) to `path`, keeping the `keep - 1`
    previous versions as `<stem>.1<suffix>`, ... A failure leaves every earlier file whole and
    raises `OutputWriteError` with one line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    body = {"format": FORMAT, **content}
    body["checksum"] = checksum(body)
    try:
        with open(temporary, "wb") as handle:
            torch.save(body, handle)
            handle.flush()
            os.fsync(handle.fileno())
        for age in range(keep - 1, 0, -1):  # oldest first, so nothing newer is overwritten
            if rotated(path, age - 1).exists():
                os.replace(rotated(path, age - 1), rotated(path, age))
        os.replace(temporary, path)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputWriteError(
            f"could not write checkpoint {path} ({reason}); earlier checkpoints in "
            f"{path.parent} are intact: free disk space or fix the folder's permissions, then "
            f"resume with resume={path.parent.parent}"
        ) from error
    finally:
        temporary.unlink(missing_ok=True)


def load(path: Path) -> dict[str, Any]:
    """Load and verify a checkpoint written by `save`, refusing anything else."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or unsafe files
        raise UserError(
            f"{path} is not a readable mtlrun checkpoint (truncated, corrupted or not a "
            f"checkpoint: {first_line(error, limit=160)})"
        ) from error
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise UserError(f"{path} is not an mtlrun checkpoint (no '{FORMAT}' format tag)")
    stored = content.pop("checksum", None)
    if stored != checksum(content):
        raise UserError(f"{path} is corrupted: its content does not match its checksum")
    return content


def candidates(folder: Path, keep: int) -> list[Path]:
    """The rotated checkpoints of a run's `checkpoints/` folder that exist, newest first."""
    return [
        rotated(folder / LAST, age) for age in range(keep) if rotated(folder / LAST, age).exists()
    ]


def find_resume(
    resume: str | os.PathLike[str] | None, run_folder: Path, keep: int
) -> Resume | None:
    """The checkpoint a run continues from.

    `resume` may be a .pt file (used as it is: an error if it does not verify) or a run
    folder (its newest checkpoint that verifies). Without `resume`, a run folder that already
    holds checkpoints (a re-run sweep job, a requeued job) continues from them.
    """
    if resume is None:
        found = candidates(run_folder / "checkpoints", keep)
        return _newest_good(found, run_folder) if found else None
    path = Path(resume).expanduser()
    if path.is_file():
        return Resume(path, load(path))
    found = candidates(path / "checkpoints", keep) if path.is_dir() else []
    if not found:
        raise UserError(
            f"resume={resume}: no checkpoint at {path / 'checkpoints' / LAST}; pass a run folder "
            "that has checkpoints/last.pt, or a .pt file"
        )
    return _newest_good(found, path)


def _newest_good(found: Iterable[Path], folder: Path) -> Resume:
    notes: list[str] = []
    for path in found:
        try:
            resume = Resume(path, load(path), notes)
        except UserError as error:
            notes.append(f"skipped {error}")
            continue
        if notes:
            notes.append(f"falling back to the previous good checkpoint {path}")
        return resume
    raise UserError(f"no usable checkpoint in {folder / 'checkpoints'}: " + "; ".join(notes))


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

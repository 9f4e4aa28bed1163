"""Checkpoints that protect themselves: checksums, rotation and fallback, refusal of pickled
code, and write failures that leave the earlier files whole."""

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig

from mtlrun import checkpoint
from mtlrun.build import build
from mtlrun.engine import fit
from mtlrun.errors import OutputWriteError, UserError

ComposeConfig = Callable[..., DictConfig]
TWO_EPOCHS = ("tasks=[cls]", "trainer.epochs=2", "trainer.keep_checkpoints=2")


def content() -> dict[str, Any]:
    return {
        "model": {"weight": torch.arange(6.0).view(2, 3), "steps": torch.tensor(3)},
        "epoch": 1,
        "best": None,
        "metrics": {"val/cls/acc": 0.5},
        "rng": {"python": (3, tuple(range(5)), None)},
    }


def test_a_saved_checkpoint_loads_back_verified(tmp_path: Path) -> None:
    checkpoint.save(content(), tmp_path / "last.pt")
    loaded = checkpoint.load(tmp_path / "last.pt")
    assert torch.equal(loaded["model"]["weight"], content()["model"]["weight"])
    assert loaded["metrics"] == content()["metrics"]
    assert "checksum" not in loaded


def test_checksum_sees_any_change_of_a_value() -> None:
    original = checkpoint.checksum(content())
    changed = content()
    changed["model"]["weight"][1, 2] += 1e-6
    assert checkpoint.checksum(changed) != original
    retyped = content()
    retyped["model"]["steps"] = torch.tensor(3.0)  # same number, other dtype
    assert checkpoint.checksum(retyped) != original
    assert checkpoint.checksum(content()) == original


def test_a_tampered_value_is_refused_by_its_checksum(tmp_path: Path) -> None:
    """A file that still unpickles but whose content changed after it was written."""
    path = tmp_path / "last.pt"
    checkpoint.save(content(), path)
    raw = torch.load(path, weights_only=True)
    raw["model"]["weight"][0, 0] = 42.0
    torch.save(raw, path)
    with pytest.raises(UserError, match="does not match its checksum"):
        checkpoint.load(path)


@pytest.mark.parametrize("damage", ["truncate", "flip-bytes"])
def test_a_damaged_file_is_one_clear_error(damage: str, tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    checkpoint.save({**content(), "model": {"weight": torch.rand(64, 64)}}, path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(255 - byte for byte in data[middle : middle + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(UserError) as raised:
        checkpoint.load(path)
    assert str(path) in str(raised.value)
    assert len(str(raised.value).splitlines()) == 1


class Payload:
    """Unpickling this runs code: it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_crafted_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "model": Payload(marker)}, path)
    with pytest.raises(UserError, match="not a readable mtlrun checkpoint"):
        checkpoint.load(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: unpickling runs it
    assert marker.exists()


def test_rotation_keeps_the_newest_k(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    for epoch in range(4):
        checkpoint.save({**content(), "epoch": epoch}, path, keep=3)
    found = checkpoint.candidates(path.parent, keep=3)
    assert [p.name for p in found] == ["last.pt", "last.1.pt", "last.2.pt"]
    assert [checkpoint.load(p)["epoch"] for p in found] == [3, 2, 1]
    assert not list(path.parent.glob(".*tmp*"))


def test_resume_from_a_folder_falls_back_past_a_damaged_checkpoint(
    compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    """last.pt truncated: resume says so, takes last.1.pt (epoch 1) and still ends exactly
    where the uninterrupted run ended."""
    straight = build(compose_tiny(*TWO_EPOCHS), tmp_path / "straight")
    expected = fit(straight)
    folder = tmp_path / "straight" / "checkpoints"
    (folder / "last.pt").write_bytes((folder / "last.pt").read_bytes()[:1000])

    resume = checkpoint.find_resume(tmp_path / "straight", tmp_path / "new", keep=2)
    assert resume.path == folder / "last.1.pt"
    assert resume.content["epoch"] == 1
    assert any("last.pt" in note for note in resume.notes)
    assert any("falling back" in note for note in resume.notes)

    resumed = build(compose_tiny(*TWO_EPOCHS, f"resume={tmp_path / 'straight'}"), tmp_path / "new")
    metrics = fit(resumed)
    assert {k: v for k, v in metrics.items() if k != "wall_s"} == {
        k: v for k, v in expected.items() if k != "wall_s"
    }
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_resume_from_a_damaged_file_named_directly_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    checkpoint.save(content(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="not a readable"):
        checkpoint.find_resume(path, tmp_path / "new", keep=2)


def test_no_good_checkpoint_in_a_folder_names_each_failure(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoints"
    for _ in range(2):
        checkpoint.save(content(), folder / "last.pt", keep=2)
    for name in ("last.pt", "last.1.pt"):
        (folder / name).write_bytes(b"garbage")
    with pytest.raises(UserError) as raised:
        checkpoint.find_resume(tmp_path / "run", tmp_path / "new", keep=2)
    message = str(raised.value)
    assert "last.pt" in message and "last.1.pt" in message and len(message.splitlines()) == 1


# --- write failures ----------------------------------------------------------------------------

FAILURES = {
    "disk-full": OSError(errno.ENOSPC, "No space left on device"),
    "permission-denied": PermissionError(errno.EACCES, "Permission denied"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_checkpoint_write_keeps_the_previous_one(
    failure: str, compose_tiny: ComposeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 1's checkpoint is written; epoch 2's fails (the disk fills while the file is
    written, or the folder refuses the rename): one clear line, epoch 1's file intact."""
    run = build(compose_tiny(*TWO_EPOCHS), tmp_path)
    saves = 0
    real_save, real_replace = torch.save, os.replace

    def failing_save(body: Any, handle: Any) -> None:
        nonlocal saves
        saves += 1
        if saves == 3 and failure == "disk-full":  # 1, 2: last.pt and best.pt of epoch 1
            handle.write(b"partial")
            raise FAILURES[failure]
        real_save(body, handle)

    def failing_replace(source: Any, target: Any) -> None:
        if saves == 3 and failure == "permission-denied":
            raise FAILURES[failure]
        real_replace(source, target)

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OutputWriteError) as raised:
        fit(run)
    monkeypatch.undo()
    message = str(raised.value)
    assert FAILURES[failure].strerror in message and "last.pt" in message
    assert len(message.splitlines()) == 1
    found = checkpoint.candidates(tmp_path / "checkpoints", keep=2)
    assert [checkpoint.load(path)["epoch"] for path in found] == [1]
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))
    assert not (tmp_path / "metrics.json").exists()


def test_a_failed_metrics_write_keeps_the_checkpoints(
    compose_tiny: ComposeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = build(compose_tiny("tasks=[cls]"), tmp_path)
    real_write_text = Path.write_text

    def failing_write_text(self: Path, *args: Any, **kwargs: Any) -> int:
        if "metrics.json" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(OutputWriteError, match=r"metrics\.json.*No space left"):
        fit(run)
    monkeypatch.undo()
    assert checkpoint.load(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1
    assert not list(tmp_path.glob(".metrics.json.tmp*"))
    assert not (tmp_path / "metrics.json").exists()

"""`mtlrun` with one fault planted: the process kills itself with SIGKILL at a chosen point.

    python tests/fault_runner.py <fault> <n> [mtlrun arguments ...]

Faults (the n-th time the point is reached, counted from 1):
    step              inside a training step: gradients computed, optimizer not yet stepped
    eval              inside an evaluation, at its first batch
    checkpoint-write  half-way through writing a checkpoint's temporary file
    checkpoint-rotate after last.pt was rotated to last.1.pt, before the new last.pt is in
    rank-1-error      (under torchrun) rank 1 alone raises a user error inside a step

SIGKILL cannot be caught, so the process ends exactly there, as under the OOM killer or a
node failure. The faults wrap mtlrun's own functions; nothing in mtlrun knows about them.
"""

import io
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import torch

from mtlrun import checkpoint, cli, engine
from mtlrun.errors import UserError


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def on_call(count: int, before_death: Callable[..., Any], original: Callable[..., Any]):
    """`original`, except that its `count`-th call runs `before_death` and then dies."""
    calls = 0

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == count:
            before_death(*args, **kwargs)
            die()
        return original(*args, **kwargs)

    return wrapped


def plant(fault: str, count: int) -> None:
    if fault == "step":

        def half_step(run: engine.Run, losses: dict, context: Any) -> None:
            run.optimizer.zero_grad(set_to_none=True)
            run.weighting.backward(losses, context)

        engine.update = on_call(count, half_step, engine.update)
    elif fault == "eval":
        engine.log_pictures = on_call(count, lambda *args: None, engine.log_pictures)
    elif fault == "checkpoint-write":

        def half_file(content: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
            buffer = io.BytesIO()
            original_save(content, buffer)
            handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            handle.flush()
            os.fsync(handle.fileno())

        original_save = torch.save
        torch.save = on_call(count, half_file, torch.save)
    elif fault == "rank-1-error":

        def planted_error(*args: Any) -> None:
            raise UserError("planted failure of rank 1")

        if os.environ.get("RANK") == "1":
            engine.update = on_call(count, planted_error, engine.update)
    elif fault == "checkpoint-rotate":
        rotations = 0
        original_replace = os.replace

        def replace(source: Any, target: Any) -> None:
            nonlocal rotations
            original_replace(source, target)
            if str(target).endswith(".1.pt"):
                rotations += 1
                if rotations == count:
                    die()

        checkpoint.os.replace = replace  # type: ignore[attr-defined]
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    fault_name, fault_count, *arguments = sys.argv[1:]
    plant(fault_name, int(fault_count))
    sys.argv = ["mtlrun", *arguments]
    cli.main()

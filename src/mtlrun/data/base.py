"""The batch contract and the interface every dataset offers to the engine."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from mtlrun.errors import UserError

Batch = dict[str, Any]


@dataclass(frozen=True)
class DatasetInfo:
    """What tasks need to know about a dataset to size their heads.

    Attributes:
        name: the dataset's name, for messages.
        image_size: (height, width) of the images.
        targets: the target names every batch carries.
        num_classes: classes per class-valued target (e.g. {"cls": 5, "seg": 6}).
        class_names: optional names per class-valued target, for pictures.
    """

    name: str
    image_size: tuple[int, int]
    targets: frozenset[str]
    num_classes: dict[str, int] = field(default_factory=dict)
    class_names: dict[str, list[str]] = field(default_factory=dict)


class DataSource(Protocol):
    """A dataset bound to a batch size, a shuffle seed and a device."""

    info: DatasetInfo

    def num_train_batches(self) -> int: ...

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Shuffled training batches from batch `start` on; the order depends only on
        (seed, epoch), so a run resumed mid-epoch sees exactly the batches it had left."""
        ...

    def val_batches(self) -> Iterator[Batch]: ...


def move_batch(value: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to `device` without blocking the host."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: move_batch(item, device) for key, item in value.items()}
    return value


def shard(batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The [start, stop) positions of the `rank`-th of `world_size` equal slices of a global
    batch, for data-parallel training (every rank sees its own images of each batch)."""
    if batch_size % world_size:
        raise UserError(
            f"trainer.batch_size={batch_size} (the global batch) must divide evenly over "
            f"{world_size} processes; pick a multiple of {world_size}"
        )
    per_rank = batch_size // world_size
    return rank * per_rank, (rank + 1) * per_rank

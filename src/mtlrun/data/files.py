"""The shared base of datasets read from files: a map-style dataset per split, loaded in
batches by a `torch.utils.data.DataLoader` in a seeded order.

A dataset module supplies, per split, a `torch.utils.data.Dataset` whose items are raw
samples `{"image": tv_tensors.Image, "targets": {name: value}}` at the files' own size
(targets typed for `mtlrun.data.transforms`: `tv_tensors.Mask`, `DepthMap`, `NormalMap`, ...,
or plain numbers for labels). `FileData` wraps them: resizes, augments the training split
inside the loader's workers, converts to the batch contract, and moves batches to the
device (pinned memory and non-blocking copies on CUDA).

The training order of an epoch is a permutation drawn from (shuffle seed, epoch), and every
sample's augmentation has its own seed drawn with it, so batch k of epoch e is the same
whatever the number of workers and wherever a run resumes: `train_batches(epoch, start)`
builds the order and reads from batch `start` on, never loading the skipped samples.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from mtlrun.data.base import Batch, DatasetInfo, move_batch, shard
from mtlrun.data.transforms import JointAugmentation, Sample, resize, square_or_pair
from mtlrun.errors import UserError

_SEED_RANGE = 2**62


def plain(value: Any) -> Any:
    """A sample in the batch contract's types: images float32 in [0, 1], every tv_tensor a
    plain tensor, numbers as they are (the collate function makes them tensors)."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, tv_tensors.Image):
        image = value.as_subclass(Tensor)
        if image.dtype == torch.uint8:
            return image.float() / 255
        return image.float().clamp(0.0, 1.0)  # bilinear resizing may overshoot slightly
    if isinstance(value, Tensor):
        return value.as_subclass(Tensor)
    return value


class RawSamples(Protocol):
    """A split's raw samples: a map-style dataset that knows its length (torch's `Dataset`
    type does not declare `__len__`, though every dataset here has one)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...


class PreparedSamples(Dataset):
    """Raw samples resized to `size` and, with an `augmentation`, augmented under the
    per-sample seed that comes with each index (so workers and resumes agree).

    Args:
        samples: the raw samples of one split.
        size: (height, width) every sample is resized to, or None to keep the files' size.
        augmentation: applied after resizing; None for evaluation.
    """

    def __init__(
        self,
        samples: RawSamples,
        size: tuple[int, int] | None,
        augmentation: Callable[[Sample], Sample] | None,
    ) -> None:
        self.samples = samples
        self.size = size
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, seed = key
        sample = self.samples[index]
        if self.size is not None:
            sample = resize(sample, self.size)
        if self.augmentation is not None:
            # The global generator is restored afterwards: with num_workers=0 this runs in
            # the training process, whose random state checkpoints capture.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                sample = self.augmentation(sample)
        return plain(sample)


class FileData:
    """A `DataSource` over two splits of raw samples (see the module docstring).

    Args:
        info: what the dataset provides; `image_size` is the files' native size.
        train: raw samples of the training split.
        val: raw samples of the validation split.
        image_size: resize every sample to this (an int is a square side); null keeps the
            native size.
        train_size: use only the first N training samples; null = all.
        val_size: use only the first N validation samples; null = all.
        augment: the training-time augmentation; null = none.
        num_workers: loader processes (0 = load in the training process).
        batch_size: images per batch (runtime argument).
        shuffle_seed: seed of the training order and augmentation (runtime argument).
        device: where batches go (runtime argument).
        rank, world_size: under data-parallel training, this process reads the `rank`-th
            of `world_size` equal slices of every training batch (runtime arguments).
    """

    def __init__(
        self,
        info: DatasetInfo,
        train: RawSamples,
        val: RawSamples,
        *,
        image_size: int | Sequence[int] | None,
        train_size: int | None,
        val_size: int | None,
        augment: JointAugmentation | None,
        num_workers: int,
        batch_size: int,
        shuffle_seed: int,
        device: torch.device | str,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        size = square_or_pair(image_size, "dataset.image_size")
        if num_workers < 0:
            raise UserError(f"dataset.num_workers must be >= 0, got {num_workers}")
        self.train_count = _limit(len(train), train_size, "dataset.train_size")
        self.val_count = _limit(len(val), val_size, "dataset.val_size")
        if self.val_count < 1:
            raise UserError(f"dataset '{info.name}' has no validation samples")
        if self.train_count < batch_size:
            raise UserError(
                f"dataset '{info.name}' has {self.train_count} training samples, fewer than "
                f"trainer.batch_size={batch_size}; lower the batch size or raise dataset.train_size"
            )
        self.info = replace(info, image_size=size or info.image_size)
        self.train = PreparedSamples(train, size, augment if augment and augment.steps else None)
        self.val = PreparedSamples(val, size, None)
        self.batch_size = batch_size
        self.share = shard(batch_size, rank, world_size)
        self.shuffle_seed = shuffle_seed
        self.num_workers = num_workers
        self.device = torch.device(device)

    def num_train_batches(self) -> int:
        return self.train_count // self.batch_size

    def indices(self, split: str, epoch: int = 0) -> tuple[list[int], list[int]]:
        """The samples this process reads from `split`, in order, and the augmentation seed
        of each: a permutation of the training split drawn from (shuffle seed, epoch), or
        the validation split in file order (seeds unused).

        The one place that decides which samples a process sees (sharding goes here).
        """
        if split == "val":
            return list(range(self.val_count)), [0] * self.val_count
        generator = torch.Generator().manual_seed(self.shuffle_seed * 1_000_003 + epoch)
        order = torch.randperm(self.train_count, generator=generator)
        seeds = torch.randint(_SEED_RANGE, (self.train_count,), generator=generator)
        return order.tolist(), seeds.tolist()

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Shuffled full batches of the training split, from batch `start` on."""
        order, seeds = self.indices("train", epoch)
        begin, end = start * self.batch_size, self.num_train_batches() * self.batch_size
        keys = list(zip(order[begin:end], seeds[begin:end], strict=True))
        low, high = self.share  # this process's slice of every (global) batch
        mine = [
            key for position, key in enumerate(keys) if low <= position % self.batch_size < high
        ]
        yield from self._batches(self.train, mine, high - low)

    def val_batches(self) -> Iterator[Batch]:
        order, seeds = self.indices("val")
        yield from self._batches(self.val, list(zip(order, seeds, strict=True)), self.batch_size)

    def _batches(
        self, samples: PreparedSamples, keys: list[tuple[int, int]], batch_size: int
    ) -> Iterator[Batch]:
        if not keys:
            return
        loader = DataLoader(
            samples,
            batch_size=batch_size,
            sampler=keys,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            # The loader draws its workers' base seed from this generator, not the global
            # one, so iterating does not shift the training process's random state.
            generator=torch.Generator(),
        )
        try:
            for batch in loader:
                yield move_batch(batch, self.device)
        except UserError as error:  # raised in a worker: keep only the original message
            raise UserError(_last_line(error)) from None


def require_folder(root: str | Path, name: str, layout: str, source: str) -> Path:
    """`root` as a path, or a `UserError` naming the expected layout and where to get it."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"dataset '{name}' not found at {folder}; expected {layout}. Get it from {source} "
            f"and pass dataset.root=<its folder>"
        )
    return folder


def _limit(available: int, requested: int | None, key: str) -> int:
    if requested is None:
        return available
    if requested < 1:
        raise UserError(f"{key} must be null (all samples) or >= 1, got {requested}")
    return min(available, requested)


def _last_line(error: Exception) -> str:
    """A worker's error arrives wrapped in its traceback; its last line is the message."""
    last = str(error).strip().splitlines()[-1]
    prefix = f"{UserError.__module__}."
    return last.split(": ", 1)[1] if last.startswith(prefix) and ": " in last else last


@dataclass(frozen=True)
class ArrayFolder:
    """One folder of `{i}.npy` arrays, a file per sample.

    Attributes:
        name: the folder's name under the split folder.
        channels: the arrays' trailing axis after (H, W); None = no trailing axis.
        kind: "float" (any float dtype) or "number" (float or integer; labels are stored
            either way).
    """

    name: str
    channels: int | None
    kind: str = "float"

    def shape_text(self, height: int | str = "H", width: int | str = "W") -> str:
        axes = [height, width] + ([] if self.channels is None else [self.channels])
        return "(" + ", ".join(str(axis) for axis in axes) + ")"


def check_array_split(
    split_dir: Path, folders: Sequence[ArrayFolder], layout: str
) -> tuple[int, tuple[int, int]]:
    """Check one split of a `{split}/{folder}/{i}.npy` layout before training starts.

    Every folder must exist and hold exactly 0.npy .. (n-1).npy, the same n in each; the
    first array of each folder must have its folder's shape and dtype kind, all with the
    same (H, W). Anything else is a `UserError` naming the file and the expected layout.

    Returns:
        The number of samples n and the arrays' (H, W).
    """
    counts: dict[str, int] = {}
    for folder in folders:
        path = split_dir / folder.name
        if not path.is_dir():
            raise UserError(f"missing folder {path}; expected {layout}")
        counts[folder.name] = _count_numbered(path, layout)
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name}/: {count}" for name, count in counts.items())
        raise UserError(
            f"{split_dir} has different numbers of samples per folder ({listed}); every "
            f"folder needs one file per sample: {layout}"
        )
    size: tuple[int, int] | None = None
    for folder in folders:
        path = split_dir / folder.name / "0.npy"
        array = _open_array(path, layout)
        if size is None:  # the first folder's arrays set the size the others must have
            size = (int(array.shape[0]), int(array.shape[1]))
        expected = folder.shape_text(*size)
        fits_kind = array.dtype.kind == "f" or (
            folder.kind == "number" and array.dtype.kind in "iu"
        )
        if array.shape != _shape(folder, size) or not fits_kind:
            wanted = "float" if folder.kind == "float" else "float or integer"
            raise UserError(
                f"{path} has shape {array.shape} and dtype {array.dtype}; expected a {wanted} "
                f"array of shape {expected} (like the other folders' arrays): {layout}"
            )
    assert size is not None, "no folders to read"
    return next(iter(counts.values())), size


def _shape(folder: ArrayFolder, size: tuple[int, int]) -> tuple[int, ...]:
    return size if folder.channels is None else (*size, folder.channels)


def _count_numbered(path: Path, layout: str) -> int:
    """The number n of arrays in `path`, which must be exactly 0.npy .. (n-1).npy."""
    names = {entry.name for entry in path.iterdir() if entry.suffix == ".npy"}
    if not names:
        raise UserError(f"{path} holds no .npy files; expected {layout}")
    for index in range(len(names)):
        if f"{index}.npy" not in names:
            raise UserError(
                f"{path} holds {len(names)} .npy files but no {index}.npy; files must be "
                f"numbered 0.npy..{len(names) - 1}.npy: {layout}"
            )
    return len(names)


def _open_array(path: Path, layout: str) -> np.ndarray:
    """The array at `path`, memory-mapped (only its header is read)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserError(
            f"{path} is not a readable .npy array ({error}); expected {layout}"
        ) from error


def load_array(path: Path, folder: ArrayFolder, size: tuple[int, int], layout: str) -> np.ndarray:
    """One sample's array, checked against its folder's shape (so a bad file late in a
    split is named, not a shape error deep in the loader)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserError(
            f"{path} is not a readable .npy array ({error}); expected {layout}"
        ) from error
    if array.shape != _shape(folder, size):
        raise UserError(
            f"{path} has shape {array.shape}; expected {folder.shape_text(*size)} like the "
            f"split's other arrays: {layout}"
        )
    return array


def image_from_array(array: np.ndarray) -> tv_tensors.Image:
    """An (H, W, 3) float array in [0, 1] as a (3, H, W) float32 image."""
    return tv_tensors.Image(
        torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
    )


def check_labels(path: Path, num_classes: int, layout: str) -> None:
    """The class map at `path` must hold only -1 (ignore) and 0..num_classes-1."""
    labels = _open_array(path, layout)
    low, high = float(np.min(labels)), float(np.max(labels))
    if low < -1 or high > num_classes - 1:
        raise UserError(
            f"{path} holds labels from {low:g} to {high:g}; expected -1 (ignore) and classes "
            f"0..{num_classes - 1}: {layout}"
        )

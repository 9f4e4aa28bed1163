"""`folder`: your own images, listed in a manifest with one column per target.

    {root}/manifest.csv (or .jsonl, one JSON object per line), e.g.

        image,label,mask,split
        images/0001.jpg,cat,masks/0001.png,train
        images/0002.jpg,dog,masks/0002.png,val

- `image_column`: each image's path, relative to `root` (any format PIL opens; grey and
  RGBA images become RGB).
- `classes`: {target name: column} of class labels, by name or by index. Names are sorted
  into classes 0..n-1; all-integer labels are taken as indices (n = the largest + 1).
- `masks`: {target name: column} of segmentation masks, single-channel (indexed) PNGs at
  the image's size holding class indices; `ignore_value` marks pixels to ignore (-1 in the
  batch). The classes are counted from the masks (the largest index + 1).
- The split: `split_column` (values `train` and `val`), or, without one, a `val_fraction` of
  the rows drawn with `seed`.

Class counts and names come from the data, and `DatasetInfo` is derived from them. Images
may differ in size: every sample is resized to `image_size` (masks by nearest neighbour).
"""

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from mtlrun.data.base import DatasetInfo
from mtlrun.data.files import FileData, require_folder
from mtlrun.data.transforms import JointAugmentation, Sample, square_or_pair
from mtlrun.errors import UserError

LAYOUT = "{root}/ holding the images and a manifest (CSV or JSON lines) with one row per image"
SOURCE = "your own files"

Row = dict[str, str]


def read_manifest(path: Path) -> list[Row]:
    """The manifest's rows as {column: text}: a CSV with a header, or JSON lines."""
    if not path.is_file():
        raise UserError(f"dataset.manifest: {path} not found; expected {LAYOUT}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".jsonl", ".json"):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = list(csv.DictReader(text.splitlines()))
    except (json.JSONDecodeError, csv.Error) as error:
        raise UserError(f"dataset.manifest: {path} is not readable ({error})") from error
    if not rows or not all(isinstance(row, dict) for row in rows):
        raise UserError(f"dataset.manifest: {path} holds no rows of named columns")
    return [{str(key): str(value) for key, value in row.items()} for row in rows]


def check_columns(rows: list[Row], wanted: dict[str, str], path: Path) -> None:
    """Every column a setting names is in the manifest."""
    have = set(rows[0])
    for setting, column in wanted.items():
        if column not in have:
            raise UserError(
                f"dataset.{setting}: column '{column}' is not in {path.name} (it has: "
                f"{', '.join(sorted(have))})"
            )


def check_files(rows: list[Row], columns: list[str], root: Path) -> None:
    """Every path the manifest names exists."""
    missing = [row[c] for row in rows for c in columns if not (root / row[c]).is_file()]
    if missing:
        raise UserError(
            f"dataset: {len(missing)} file(s) the manifest names are missing under {root}, "
            f"e.g. {missing[0]}"
        )


def class_list(values: list[str]) -> tuple[list[str], dict[str, int]]:
    """Class names and the index of each label: integers as they are, names sorted."""
    if all(value.strip().lstrip("-").isdigit() for value in values):
        indices = [int(value) for value in values]
        if min(indices) < 0:
            raise UserError(f"class labels must be >= 0, got {min(indices)}")
        names = [str(index) for index in range(max(indices) + 1)]
        return names, {value: int(value) for value in values}
    names = sorted(set(values))
    return names, {name: index for index, name in enumerate(names)}


def read_mask(path: Path, ignore_value: int) -> np.ndarray:
    """A single-channel mask as int64, `ignore_value` pixels as -1."""
    with Image.open(path) as opened:
        if opened.mode not in ("L", "P", "I", "I;16"):
            raise UserError(
                f"mask {path} is a {opened.mode} image; masks are single-channel (indexed or "
                "grey) PNGs of class indices"
            )
        mask = np.asarray(opened).astype(np.int64)
    return np.where(mask == ignore_value, -1, mask)


class FolderSamples:
    """The samples of one split: rows of the manifest read from `root`."""

    def __init__(
        self, root: Path, rows: list[Row], image_column: str, labels: dict[str, Any],
        masks: dict[str, str], ignore_value: int,
    ) -> None:  # fmt: skip
        self.root, self.rows, self.image_column = root, rows, image_column
        self.labels, self.masks, self.ignore_value = labels, masks, ignore_value

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        row = self.rows[index]
        with Image.open(self.root / row[self.image_column]) as opened:
            pixels = np.asarray(opened.convert("RGB"))
        image = tv_tensors.Image(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
        targets: dict[str, Any] = {
            name: mapping[row[column]] for name, (column, mapping) in self.labels.items()
        }
        for name, column in self.masks.items():
            mask = torch.from_numpy(read_mask(self.root / row[column], self.ignore_value))
            if tuple(mask.shape) != tuple(image.shape[-2:]):
                raise UserError(
                    f"mask {row[column]} is {mask.shape[0]}x{mask.shape[1]} but its image "
                    f"{row[self.image_column]} is {image.shape[-2]}x{image.shape[-1]}"
                )
            targets[name] = tv_tensors.Mask(mask)
        return {"image": image, "targets": targets}


def split_rows(
    rows: list[Row], split_column: str | None, val_fraction: float, seed: int
) -> tuple[list[Row], list[Row]]:
    """(training rows, validation rows), by the split column or a seeded fraction."""
    if split_column is not None:
        values = {row[split_column] for row in rows}
        if not values <= {"train", "val"}:
            raise UserError(
                f"dataset.split_column: column '{split_column}' holds {sorted(values)}; use "
                "train and val"
            )
        return [r for r in rows if r[split_column] == "train"], [
            r for r in rows if r[split_column] == "val"
        ]
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"dataset.val_fraction must be in (0, 1), got {val_fraction}")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    count = max(1, round(len(rows) * val_fraction))
    return [rows[i] for i in order[count:]], [rows[i] for i in order[:count]]


class FolderData(FileData):
    """Images and targets listed in a manifest (see the module docstring).

    Args:
        root: the folder the manifest's paths are relative to.
        manifest: the manifest's path, relative to `root` (.csv, or .jsonl for JSON lines).
        image_column: the column of image paths.
        classes: {target name: column} of class labels; null = {cls: label}.
        masks: {target name: column} of mask paths.
        ignore_value: the mask value to ignore (-1 in the batch).
        split_column: the column saying train or val; null = a seeded `val_fraction`.
        val_fraction: the share of rows for validation when there is no split column.
        seed: draws that share.
        image_size: every sample is resized to this (a side, or [height, width]).
        train_size, val_size, augment, num_workers: as for every file dataset.
        batch_size, shuffle_seed, device, rank, world_size: runtime arguments.
    """

    def __init__(
        self,
        root: str = "data",
        manifest: str = "manifest.csv",
        image_column: str = "image",
        classes: dict[str, str] | None = None,
        masks: dict[str, str] | None = None,
        ignore_value: int = 255,
        split_column: str | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        image_size: int | Sequence[int] | None = 64,
        train_size: int | None = None,
        val_size: int | None = None,
        augment: JointAugmentation | None = None,
        num_workers: int = 2,
        *,
        batch_size: int = 64,
        shuffle_seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        folder = require_folder(root, "folder", LAYOUT, SOURCE)
        size = square_or_pair(image_size, "dataset.image_size")
        if size is None:
            raise UserError("dataset.image_size must be set: a folder's images may differ in size")
        rows = read_manifest(folder / manifest)
        classes = {"cls": "label"} if classes is None else dict(classes)
        masks = dict(masks or {})
        if not classes and not masks:
            raise UserError("dataset: name at least one target, e.g. dataset.classes={cls: label}")
        wanted = {"image_column": image_column}
        wanted |= {f"classes.{name}": column for name, column in classes.items()}
        wanted |= {f"masks.{name}": column for name, column in masks.items()}
        if split_column is not None:
            wanted["split_column"] = split_column
        check_columns(rows, wanted, folder / manifest)
        check_files(rows, [image_column, *masks.values()], folder)
        info, labels = describe(folder, rows, classes, masks, ignore_value, size)
        train_rows, val_rows = split_rows(rows, split_column, val_fraction, seed)
        train, val = (
            FolderSamples(folder, part, image_column, labels, masks, ignore_value)
            for part in (train_rows, val_rows)
        )
        super().__init__(
            info, train, val, image_size=size, train_size=train_size, val_size=val_size,
            augment=augment, num_workers=num_workers, batch_size=batch_size,
            shuffle_seed=shuffle_seed, device=device, rank=rank, world_size=world_size,
        )  # fmt: skip


def describe(
    folder: Path, rows: list[Row], classes: dict[str, str], masks: dict[str, str],
    ignore_value: int, size: tuple[int, int],
) -> tuple[DatasetInfo, dict[str, Any]]:  # fmt: skip
    """The `DatasetInfo` the data implies, and {target: (column, label -> index)}."""
    num_classes: dict[str, int] = {}
    class_names: dict[str, list[str]] = {}
    labels: dict[str, Any] = {}
    for name, column in classes.items():
        names, mapping = class_list([row[column] for row in rows])
        num_classes[name], class_names[name] = len(names), names
        labels[name] = (column, mapping)
    for name, column in masks.items():
        largest = max(int(read_mask(folder / row[column], ignore_value).max()) for row in rows)
        num_classes[name] = largest + 1
        class_names[name] = [str(index) for index in range(largest + 1)]
    info = DatasetInfo(
        name="folder",
        image_size=size,
        targets=frozenset({*classes, *masks}),
        num_classes=num_classes,
        class_names=class_names,
    )
    return info, labels

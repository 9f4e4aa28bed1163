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
- `depth`: {target name: column} of depth maps at the image's size, single-channel PNGs
  (16-bit, as depth cameras save them) or (H, W) .npy arrays; values are divided by
  `depth_scale` (1000: millimetres to metres; 1 for arrays in metres); 0 = invalid.
- `attributes`: {target name: [columns]} of 0/1 columns, one per attribute (a
  LongTensor[A] per image; the column names name the attributes).
- `boxes`: {target name: path} of a COCO-format JSON (read with pycocotools, as
  `dataset=coco` reads it) listing the manifest's images by path or file name; category
  ids map in increasing order to classes 0..n-1.
- The split: `split_column` (values `train` and `val`), or, without one, a `val_fraction` of
  the rows drawn with `seed`.

Class counts and names come from the data, and `DatasetInfo` is derived from them. Images
may differ in size: every sample is resized to `image_size` (masks and depth by nearest
neighbour, boxes scaled).
"""

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from mtlrun.data.base import DatasetInfo
from mtlrun.data.coco import BoxTable, read_image
from mtlrun.data.files import FileData, require_folder
from mtlrun.data.transforms import DepthMap, JointAugmentation, Sample, square_or_pair
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


@dataclass(frozen=True)
class Columns:
    """Where each target of a manifest comes from, by kind: {target name: column} for class
    labels, masks and depth, {target name: [columns]} for attributes, {target name: COCO
    JSON path} for boxes."""

    classes: dict[str, str]
    masks: dict[str, str]
    depth: dict[str, str]
    attributes: dict[str, list[str]]
    boxes: dict[str, str]

    def targets(self) -> set[str]:
        return {*self.classes, *self.masks, *self.depth, *self.attributes, *self.boxes}

    def named(self, image_column: str, split_column: str | None) -> dict[str, str]:
        """{setting: column} of every column a setting names, for `check_columns`."""
        wanted = {"image_column": image_column}
        for kind in ("classes", "masks", "depth"):
            wanted |= {f"{kind}.{name}": c for name, c in getattr(self, kind).items()}
        for name, columns in self.attributes.items():
            wanted |= {f"attributes.{name}": column for column in columns}
        return wanted | ({"split_column": split_column} if split_column is not None else {})


@dataclass(frozen=True)
class Readers:
    """What turns a row into targets: label -> index per class target, the boxes table and
    image ids per box target, the mask ignore value and the depth scale."""

    labels: dict[str, tuple[str, dict[str, int]]]
    boxes: dict[str, tuple[BoxTable, dict[str, int]]]
    ignore_value: int
    depth_scale: float


class FolderSamples:
    """The samples of one split: rows of the manifest read from `root`."""

    def __init__(
        self, root: Path, rows: list[Row], image_column: str, columns: Columns, readers: Readers
    ) -> None:
        self.root, self.rows, self.image_column = root, rows, image_column
        self.columns, self.readers = columns, readers

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        row, readers, columns = self.rows[index], self.readers, self.columns
        image = read_image(self.root / row[self.image_column])
        size = (int(image.shape[-2]), int(image.shape[-1]))
        targets: dict[str, Any] = {
            name: mapping[row[column]] for name, (column, mapping) in readers.labels.items()
        }
        for name, column in columns.masks.items():
            mask = read_mask(self.root / row[column], readers.ignore_value)
            targets[name] = tv_tensors.Mask(self._sized(mask, size, row[column], row))
        for name, column in columns.depth.items():
            depth = read_depth(self.root / row[column], readers.depth_scale)
            targets[name] = DepthMap(self._sized(depth, size, row[column], row)[None])
        for name, names in columns.attributes.items():
            targets[name] = torch.tensor([int(float(row[column])) for column in names])
        for name, (table, image_ids) in readers.boxes.items():
            targets[name] = table.target(image_ids[row[self.image_column]], size)
        return {"image": image, "targets": targets}

    def _sized(self, array: np.ndarray, size: tuple[int, int], name: str, row: Row) -> torch.Tensor:
        """`array` as a tensor, which must be at its image's size."""
        if tuple(array.shape) != size:
            raise UserError(
                f"{name} is {array.shape[0]}x{array.shape[1]} but its image "
                f"{row[self.image_column]} is {size[0]}x{size[1]}; they must be the same size"
            )
        return torch.from_numpy(np.ascontiguousarray(array))


def read_depth(path: Path, scale: float) -> np.ndarray:
    """A depth map as float32 (file value / `scale`; 0 = invalid): a single-channel PNG
    (16-bit, as depth cameras save it) or an (H, W) or (H, W, 1) .npy array."""
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise UserError(f"depth {path} is not a readable .npy array ({error})") from error
        array = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
    else:
        with Image.open(path) as opened:
            if opened.mode not in ("I;16", "I;16B", "I", "L", "F"):
                raise UserError(
                    f"depth {path} is a {opened.mode} image; depth is a single-channel "
                    "(16-bit) PNG or an .npy array"
                )
            array = np.asarray(opened)
    if array.ndim != 2 or array.dtype.kind not in "iuf":
        raise UserError(f"depth {path} holds {array.dtype} of shape {array.shape}; expected (H, W)")
    return (array.astype(np.float32) / scale).astype(np.float32)


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
        classes: {target name: column} of class labels; null = {cls: label} when the
            manifest has a `label` column.
        masks: {target name: column} of mask paths.
        ignore_value: the mask value to ignore (-1 in the batch).
        depth: {target name: column} of depth paths (16-bit PNG or .npy).
        depth_scale: a depth file's values are divided by this (1000: millimetres to metres).
        attributes: {target name: [columns]} of 0/1 attributes.
        boxes: {target name: path} of a COCO-format JSON of boxes, relative to `root`.
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
        depth: dict[str, str] | None = None,
        depth_scale: float = 1000.0,
        attributes: dict[str, list[str]] | None = None,
        boxes: dict[str, str] | None = None,
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
        if depth_scale <= 0:
            raise UserError(f"dataset.depth_scale must be > 0, got {depth_scale}")
        rows = read_manifest(folder / manifest)
        columns = Columns(
            default_classes(classes, rows), dict(masks or {}), dict(depth or {}),
            {name: list(names) for name, names in (attributes or {}).items()}, dict(boxes or {}),
        )  # fmt: skip
        check_manifest(folder, manifest, rows, columns, image_column, split_column)
        info, readers = describe(folder, rows, columns, image_column, size)
        readers = Readers(readers.labels, readers.boxes, ignore_value, depth_scale)
        train, val = (
            FolderSamples(folder, part, image_column, columns, readers)
            for part in split_rows(rows, split_column, val_fraction, seed)
        )
        super().__init__(
            info, train, val, image_size=size, train_size=train_size, val_size=val_size,
            augment=augment, num_workers=num_workers, batch_size=batch_size,
            shuffle_seed=shuffle_seed, device=device, rank=rank, world_size=world_size,
        )  # fmt: skip


def default_classes(classes: dict[str, str] | None, rows: list[Row]) -> dict[str, str]:
    """`classes` as given; when null, {cls: label} if the manifest has a `label` column."""
    if classes is not None:
        return dict(classes)
    return {"cls": "label"} if "label" in rows[0] else {}


def check_manifest(
    folder: Path, manifest: str, rows: list[Row], columns: Columns, image_column: str,
    split_column: str | None,
) -> None:  # fmt: skip
    """At least one target; every column a setting names exists; every file exists."""
    if not columns.targets():
        raise UserError(
            "dataset: name at least one target, e.g. dataset.classes={cls: label} (or masks, "
            "depth, attributes, boxes)"
        )
    check_columns(rows, columns.named(image_column, split_column), folder / manifest)
    for name, path in columns.boxes.items():
        if not (folder / path).is_file():
            raise UserError(f"dataset.boxes.{name}: {folder / path} not found")
    paths = [image_column, *columns.masks.values(), *columns.depth.values()]
    check_files(rows, paths, folder)


def describe(
    folder: Path, rows: list[Row], columns: Columns, image_column: str, size: tuple[int, int],
    ignore_value: int = 255,
) -> tuple[DatasetInfo, Readers]:  # fmt: skip
    """The `DatasetInfo` the data implies, and what reads each row's targets."""
    num_classes: dict[str, int] = {}
    class_names: dict[str, list[str]] = {}
    labels: dict[str, tuple[str, dict[str, int]]] = {}
    for name, column in columns.classes.items():
        names, mapping = class_list([row[column] for row in rows])
        num_classes[name], class_names[name] = len(names), names
        labels[name] = (column, mapping)
    for name, column in columns.masks.items():
        largest = max(int(read_mask(folder / row[column], ignore_value).max()) for row in rows)
        num_classes[name] = largest + 1
        class_names[name] = [str(index) for index in range(largest + 1)]
    for name, names in columns.attributes.items():
        check_attributes(rows, name, names)
        num_classes[name], class_names[name] = len(names), list(names)
    boxes: dict[str, tuple[BoxTable, dict[str, int]]] = {}
    for name, path in columns.boxes.items():
        table = BoxTable(folder / path)
        boxes[name] = (table, image_ids(table, [row[image_column] for row in rows], name))
        num_classes[name], class_names[name] = len(table.categories.ids), [*table.categories.names]
    info = DatasetInfo(
        name="folder", image_size=size, targets=frozenset(columns.targets()),
        num_classes=num_classes, class_names=class_names,
    )  # fmt: skip
    return info, Readers(labels, boxes, ignore_value, 1.0)


def check_attributes(rows: list[Row], name: str, columns: list[str]) -> None:
    """Attribute columns hold 0 or 1 (1.0 and 0.0 too) in every row."""
    if not columns:
        raise UserError(f"dataset.attributes.{name} lists no columns")
    for row in rows:
        for column in columns:
            if row[column].strip() not in ("0", "1", "0.0", "1.0"):
                raise UserError(
                    f"dataset.attributes.{name}: column '{column}' holds '{row[column]}'; "
                    "attributes are 0 or 1"
                )


def image_ids(table: BoxTable, paths: list[str], name: str) -> dict[str, int]:
    """The COCO image id of each manifest image path: the image whose `file_name` is that
    path, or else its file name (when only one image has it)."""
    by_name = {str(entry["file_name"]): image for image, entry in table.coco.imgs.items()}
    by_base: dict[str, list[int]] = {}
    for file_name, image in by_name.items():
        by_base.setdefault(Path(file_name).name, []).append(image)
    found: dict[str, int] = {}
    for path in paths:
        candidates = [by_name[path]] if path in by_name else by_base.get(Path(path).name, [])
        if len(candidates) != 1:
            raise UserError(
                f"dataset.boxes.{name}: image {path} of the manifest is not in "
                f"{table.path.name} (or matches {len(candidates)} file_name entries); list "
                "every image there, with its path or its file name as file_name"
            )
        found[path] = candidates[0]
    return found

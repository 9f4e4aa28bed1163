"""`coco`: a COCO-format detection dataset, read with pycocotools.

The layout of COCO itself (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV
2014), and of most detection exports (CVAT, Label Studio, Roboflow, FiftyOne):

    {root}/annotations/instances_{split}.json   COCO's "images", "annotations", "categories"
    {root}/{split}/{file_name}                  the images the JSON lists

with `split` = `train_split` and `val_split` (COCO 2017: train2017, val2017).

Target `det`: {"boxes": FloatTensor[B, M, 4] xyxy pixels, "labels": LongTensor[B, M]},
padded to the most objects any image of the split has, with label -1 and an all-zero box.
Category ids, which need not be contiguous (COCO's run 1..90 with gaps), are mapped in
increasing order to classes 0..n-1, named by the categories' names; the training file's
categories are the classes. Crowd annotations (`iscrowd: 1`) and boxes without area are
left out, and boxes are clipped to their image, as detection training usually does.

Target `inst`, with `instance_masks: true` (off by default: a detection run would decode and
resize M masks per image for nothing, and COCO pads M to 90-odd objects): {"masks":
BoolTensor[B, M, H, W], "labels": LongTensor[B, M]}, the same objects in the same slots as
`det`, each decoded from its segmentation (polygons or RLE) with pycocotools' `annToMask`.
"""

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor
from torchvision import tv_tensors

from mtlrun.data.base import DatasetInfo
from mtlrun.data.files import FileData, require_folder
from mtlrun.data.transforms import JointAugmentation, Sample
from mtlrun.errors import UserError

LAYOUT = (
    "{root}/annotations/instances_{split}.json (COCO's format: images, annotations, "
    "categories) and the images it lists under {root}/{split}/"
)
SOURCE = (
    "cocodataset.org (e.g. train2017/, val2017/ and annotations_trainval2017.zip), or any "
    "COCO-format export"
)


def load_coco(path: Path) -> COCO:
    """A COCO-format JSON, indexed by pycocotools (its progress prints are kept quiet)."""
    if not path.is_file():
        raise UserError(f"{path} not found; expected {LAYOUT}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError) as error:
        raise UserError(
            f"{path} is not a COCO-format JSON ({error!r}); expected {LAYOUT}"
        ) from error
    if "categories" not in coco.dataset or not coco.dataset["categories"]:
        raise UserError(f"{path} lists no categories; expected {LAYOUT}")
    return coco


@dataclass(frozen=True)
class Categories:
    """COCO category ids in increasing order, and their names: class i is `ids[i]`."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def of(cls, coco: COCO) -> "Categories":
        ids = sorted(coco.getCatIds())
        return cls(tuple(ids), tuple(str(coco.cats[i]["name"]) for i in ids))


class BoxTable:
    """The boxes (xyxy pixels) and contiguous class labels of every image of a COCO-format
    JSON, and how many box slots a padded target needs.

    Args:
        path: the JSON.
        categories: the classes; None = this file's own categories.
    """

    def __init__(self, path: Path, categories: Categories | None = None) -> None:
        self.path = path
        self.coco = load_coco(path)
        self.categories = categories or Categories.of(self.coco)
        self.index = {category: label for label, category in enumerate(self.categories.ids)}
        unknown = sorted(set(self.coco.getCatIds()) - set(self.index))
        if unknown:
            raise UserError(
                f"{path} has category ids {unknown} that the training annotations do not "
                f"list (they list {list(self.categories.ids)})"
            )
        self.kept: dict[int, list[dict[str, Any]]] = {}  # the annotations behind each box
        self.objects = {image: self._objects(image) for image in self.coco.getImgIds()}
        self.slots = max([1, *(len(labels) for _, labels in self.objects.values())])
        self.has_masks = False  # set by CocoData: give `inst` targets too

    def _objects(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        entry = self.coco.imgs[image_id]
        width, height = float(entry.get("width", np.inf)), float(entry.get("height", np.inf))
        boxes, labels = [], []
        self.kept[image_id] = []
        for annotation in self.coco.imgToAnns.get(image_id, []):
            if annotation.get("iscrowd", 0):
                continue
            x, y, w, h = (float(value) for value in annotation["bbox"])
            box = [max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)]
            if box[2] > box[0] and box[3] > box[1]:
                boxes.append(box)
                labels.append(self.index[annotation["category_id"]])
                self.kept[image_id].append(annotation)
        return np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels, dtype=np.int64)

    def target(self, image_id: int, size: tuple[int, int]) -> dict[str, Any]:
        """The image's boxes and labels, padded to `slots` (label -1, all-zero box), for an
        image of (height, width) `size`."""
        boxes, labels = self.objects[image_id]
        padded = torch.zeros(self.slots, 4)
        padded[: len(boxes)] = torch.from_numpy(boxes)
        classes = torch.full((self.slots,), -1, dtype=torch.int64)
        classes[: len(labels)] = torch.from_numpy(labels)
        return {
            "boxes": tv_tensors.BoundingBoxes(padded, format="XYXY", canvas_size=size),
            "labels": classes,
        }

    def masks(self, image_id: int, size: tuple[int, int], labels: Tensor) -> dict[str, Any]:
        """The `inst` target: each kept object's mask (empty without a segmentation) in its
        `det` slot, for an image of (height, width) `size`."""
        masks = torch.zeros(self.slots, *size, dtype=torch.bool)
        for slot, annotation in enumerate(self.kept[image_id]):
            if annotation.get("segmentation"):
                decoded = torch.from_numpy(self.coco.annToMask(annotation)).bool()
                if tuple(decoded.shape) != size:
                    raise UserError(
                        f"{self.path}: image {image_id} is {size[0]}x{size[1]} but its "
                        f"annotations' width and height say {decoded.shape[0]}x{decoded.shape[1]}"
                    )
                masks[slot] = decoded
        return {"masks": tv_tensors.Mask(masks), "labels": labels.clone()}


def read_image(path: Path) -> tv_tensors.Image:
    """An image file as a (3, H, W) uint8 image (grey and RGBA become RGB)."""
    try:
        with Image.open(path) as opened:
            pixels = np.asarray(opened.convert("RGB"))
    except OSError as error:
        raise UserError(f"cannot read image {path} ({error})") from error
    return tv_tensors.Image(torch.from_numpy(pixels.copy()).permute(2, 0, 1))


class CocoSamples:
    """The images of one split with their `det` targets."""

    def __init__(self, folder: Path, table: BoxTable) -> None:
        self.folder, self.table = folder, table
        self.image_ids = sorted(table.coco.getImgIds())

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        image = read_image(self.folder / self.table.coco.imgs[image_id]["file_name"])
        size = (int(image.shape[-2]), int(image.shape[-1]))
        boxes = self.table.target(image_id, size)
        targets = {"det": boxes}
        if self.table.has_masks:
            targets["inst"] = self.table.masks(image_id, size, boxes["labels"])
        return {"image": image, "targets": targets}


def check_segmentations(table: BoxTable) -> None:
    """`instance_masks` needs segmentations to decode; a detection-only export has none."""
    if not any(
        annotation.get("segmentation") for kept in table.kept.values() for annotation in kept
    ):
        raise UserError(
            f"dataset.instance_masks=true, but {table.path} has no segmentations (polygons or "
            "RLE) to make instance masks from; set dataset.instance_masks=false"
        )


def coco_split(root: Path, split: str, categories: Categories | None) -> CocoSamples:
    """One split, checked: its JSON reads, its image folder exists and holds every image."""
    table = BoxTable(root / "annotations" / f"instances_{split}.json", categories)
    folder = root / split
    if not folder.is_dir():
        raise UserError(f"missing image folder {folder}; expected {LAYOUT}")
    samples = CocoSamples(folder, table)
    missing = [
        name
        for name in (table.coco.imgs[i]["file_name"] for i in samples.image_ids)
        if not (folder / name).is_file()
    ]
    if missing:
        raise UserError(
            f"{len(missing)} image(s) listed in {table.path.name} are missing under {folder}, "
            f"e.g. {missing[0]}"
        )
    return samples


class CocoData(FileData):
    """A COCO-format detection dataset (see the module docstring).

    Args:
        root: the folder holding `annotations/` and the split folders.
        train_split: the training split's name (`instances_{train_split}.json`, `{train_split}/`).
        val_split: the evaluated split's name.
        image_size: every image is resized to this (a side, or [height, width]); required,
            as the images differ in size.
        instance_masks: also give the `inst` target (the training file must have
            segmentations).
        train_size, val_size, augment, num_workers: as for every file dataset.
        batch_size, shuffle_seed, device, rank, world_size: runtime arguments.
    """

    def __init__(
        self,
        root: str = "data/coco",
        train_split: str = "train2017",
        val_split: str = "val2017",
        image_size: int | Sequence[int] | None = 320,
        instance_masks: bool = False,
        train_size: int | None = None,
        val_size: int | None = None,
        augment: JointAugmentation | None = None,
        num_workers: int = 4,
        *,
        batch_size: int = 16,
        shuffle_seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if image_size is None:
            raise UserError("dataset.image_size must be set: COCO images differ in size")
        folder = require_folder(root, "coco", LAYOUT, SOURCE)
        train = coco_split(folder, train_split, None)
        val = coco_split(folder, val_split, train.table.categories)
        names = list(train.table.categories.names)
        if instance_masks:
            check_segmentations(train.table)
            train.table.has_masks = val.table.has_masks = True
        tasks = ["det", "inst"] if instance_masks else ["det"]
        info = DatasetInfo(
            name="coco",
            image_size=(320, 320),  # replaced by image_size
            targets=frozenset(tasks),
            num_classes=dict.fromkeys(tasks, len(names)),
            class_names=dict.fromkeys(tasks, names),
        )
        super().__init__(
            info, train, val, image_size=image_size, train_size=train_size, val_size=val_size,
            augment=augment, num_workers=num_workers, batch_size=batch_size,
            shuffle_seed=shuffle_seed, device=device, rank=rank, world_size=world_size,
        )  # fmt: skip

"""`cityscapes`: Cityscapes in the preprocessed 128 x 256 layout of the multi-task literature.

The layout of the MTAN code (Liu, Johns & Davison, CVPR 2019), also read by Nash-MTL, CAGrad
and FAMO: 2975 training and 500 validation images, one `.npy` file per sample and modality:

    {root}/{train,val}/image/{i}.npy      (128, 256, 3) float, RGB in [0, 1]
    {root}/{train,val}/label_7/{i}.npy    (128, 256)    7 classes 0..6, -1 = ignore
    {root}/{train,val}/label_19/{i}.npy   (128, 256)    19 classes 0..18, -1 = ignore
    {root}/{train,val}/depth/{i}.npy      (128, 256, 1) float, disparity, 0 = invalid

`classes: 7 | 19` picks the label folder; a copy with a single `label/` folder is read from
there instead. Targets: `seg` and `depth` (the disparity: larger is nearer; random
scale-crop multiplies it by the zoom, see `mtlrun.data.transforms.RandomScaleCrop`).
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from mtlrun.data.base import DatasetInfo
from mtlrun.data.files import (
    ArrayFolder,
    FileData,
    check_array_split,
    check_labels,
    image_from_array,
    load_array,
    require_folder,
)
from mtlrun.data.transforms import DisparityMap, JointAugmentation, Sample
from mtlrun.errors import UserError

LAYOUT = (
    "{root}/{train,val}/{image,label_7,label_19,depth}/{i}.npy with image (H, W, 3) float, "
    "label_7 / label_19 (H, W) classes or -1 (or one folder label/), depth (H, W, 1) float "
    "disparity (H, W = 128, 256), the same i = 0..n-1 in every folder"
)
SOURCE = (
    "the preprocessed Cityscapes of the MTAN repository (github.com/lorenmt/mtan, "
    "'cityscapes' 128x256 archive)"
)
CLASS_NAMES = {
    # The 7 categories of Cityscapes (without 'void'), in label order.
    7: ["flat", "construction", "object", "nature", "sky", "human", "vehicle"],
    # The 19 evaluated classes (train ids 0..18).
    19: [
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
        "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
        "bus", "train", "motorcycle", "bicycle",
    ],
}  # fmt: skip


def label_folder(split_dir: Path, classes: int) -> str:
    """`label_{classes}` when present, else `label` (some copies name it so)."""
    preferred = f"label_{classes}"
    if (split_dir / preferred).is_dir() or not (split_dir / "label").is_dir():
        return preferred
    return "label"


class CityscapesSplit(Dataset):
    """One split (`train` or `val`) of the layout, checked when opened."""

    def __init__(self, root: Path, split: str, classes: int) -> None:
        self.folder = root / split
        self.folders = (
            ArrayFolder("image", 3),
            ArrayFolder(label_folder(self.folder, classes), None, kind="number"),
            ArrayFolder("depth", 1),
        )
        self.count, self.size = check_array_split(self.folder, self.folders, LAYOUT)
        check_labels(self.folder / self.folders[1].name / "0.npy", classes, LAYOUT)

    def __len__(self) -> int:
        return self.count

    def _array(self, folder: ArrayFolder, index: int) -> torch.Tensor:
        path = self.folder / folder.name / f"{index}.npy"
        return torch.from_numpy(np.asarray(load_array(path, folder, self.size, LAYOUT)))

    def __getitem__(self, index: int) -> Sample:
        image, label, disparity = (self._array(folder, index) for folder in self.folders)
        return {
            "image": image_from_array(image.numpy()),
            "targets": {
                "seg": tv_tensors.Mask(label.long()),
                "depth": DisparityMap(disparity.float().permute(2, 0, 1)),
            },
        }


class CityscapesData(FileData):
    """Cityscapes street scenes with semantic labels and disparity (see the module docstring).

    Args:
        root: the folder holding `train/` and `val/`.
        classes: 7 (categories) or 19 (classes): which label folder is read.
        image_size: resize to this (an int is a square side); null keeps 128 x 256.
        train_size: use only the first N training images; null = all 2975.
        val_size: use only the first N validation images; null = all 500.
        augment: training-time augmentation (`mtlrun.data.transforms.JointAugmentation`).
        num_workers: loader processes.
        batch_size: images per batch (runtime argument).
        shuffle_seed: seed of the training order (runtime argument).
        device: where batches go (runtime argument).
        rank, world_size: this process's share of each training batch (runtime arguments).
    """

    def __init__(
        self,
        root: str = "data/cityscapes",
        classes: int = 7,
        image_size: int | Sequence[int] | None = None,
        train_size: int | None = None,
        val_size: int | None = None,
        augment: JointAugmentation | None = None,
        num_workers: int = 4,
        *,
        batch_size: int = 8,
        shuffle_seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if classes not in CLASS_NAMES:
            raise UserError(f"dataset.classes must be 7 or 19, got {classes}")
        folder = require_folder(root, "cityscapes", LAYOUT, SOURCE)
        train = CityscapesSplit(folder, "train", classes)
        val = CityscapesSplit(folder, "val", classes)
        info = DatasetInfo(
            name="cityscapes",
            image_size=train.size,
            targets=frozenset({"seg", "depth"}),
            num_classes={"seg": classes},
            class_names={"seg": CLASS_NAMES[classes]},
        )
        super().__init__(
            info,
            train,
            val,
            image_size=image_size,
            train_size=train_size,
            val_size=val_size,
            augment=augment,
            num_workers=num_workers,
            batch_size=batch_size,
            shuffle_seed=shuffle_seed,
            device=device,
            rank=rank,
            world_size=world_size,
        )

"""`nyuv2`: NYU Depth V2 in the preprocessed layout of the multi-task learning literature.

The layout of the MTAN code (Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019), also read by LibMTL, Nash-MTL and FAMO: 795 training and 654
validation scenes at 288 x 384, one `.npy` file per sample and modality:

    {root}/{train,val}/image/{i}.npy    (288, 384, 3) float, RGB in [0, 1]
    {root}/{train,val}/label/{i}.npy    (288, 384)    13 classes 0..12, -1 = unlabelled
    {root}/{train,val}/depth/{i}.npy    (288, 384, 1) float, metres, 0 = invalid
    {root}/{train,val}/normal/{i}.npy   (288, 384, 3) float, unit normals, all-zero = invalid

Targets: `seg` (13 classes, ignore -1), `depth`, `normal`.
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
from mtlrun.data.transforms import DepthMap, JointAugmentation, NormalMap, Sample

LAYOUT = (
    "{root}/{train,val}/{image,label,depth,normal}/{i}.npy with image (H, W, 3) float, "
    "label (H, W) classes 0..12 or -1, depth (H, W, 1) float, normal (H, W, 3) float "
    "(H, W = 288, 384), the same i = 0..n-1 in every folder"
)
SOURCE = "the preprocessed NYUv2 of the MTAN repository (github.com/lorenmt/mtan, 'nyuv2.zip')"
FOLDERS = (
    ArrayFolder("image", 3),
    ArrayFolder("label", None, kind="number"),
    ArrayFolder("depth", 1),
    ArrayFolder("normal", 3),
)
# The 13-class grouping of NYUv2's labels (Couprie et al. 2013), in label order.
CLASS_NAMES = [
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "picture", "sofa", "table", "tv", "wall", "window",
]  # fmt: skip


class NYUv2Split(Dataset):
    """One split (`train` or `val`) of the layout, checked when opened."""

    def __init__(self, root: Path, split: str) -> None:
        self.folder = root / split
        self.count, self.size = check_array_split(self.folder, FOLDERS, LAYOUT)
        check_labels(self.folder / "label" / "0.npy", len(CLASS_NAMES), LAYOUT)

    def __len__(self) -> int:
        return self.count

    def _array(self, folder: ArrayFolder, index: int) -> torch.Tensor:
        path = self.folder / folder.name / f"{index}.npy"
        return torch.from_numpy(np.asarray(load_array(path, folder, self.size, LAYOUT)))

    def __getitem__(self, index: int) -> Sample:
        image, label, depth, normal = (self._array(folder, index) for folder in FOLDERS)
        return {
            "image": image_from_array(image.numpy()),
            "targets": {
                "seg": tv_tensors.Mask(label.long()),
                "depth": DepthMap(depth.float().permute(2, 0, 1)),
                "normal": NormalMap(normal.float().permute(2, 0, 1)),
            },
        }


class NYUv2Data(FileData):
    """NYUv2 scenes with semantic labels, depth and surface normals (see the module docstring).

    Args:
        root: the folder holding `train/` and `val/`.
        image_size: resize to this (an int is a square side); null keeps 288 x 384.
        train_size: use only the first N training scenes; null = all 795.
        val_size: use only the first N validation scenes; null = all 654.
        augment: training-time augmentation (`mtlrun.data.transforms.JointAugmentation`).
        num_workers: loader processes.
        batch_size: scenes per batch (runtime argument).
        shuffle_seed: seed of the training order (runtime argument).
        device: where batches go (runtime argument).
        rank, world_size: this process's share of each training batch (runtime arguments).
    """

    def __init__(
        self,
        root: str = "data/nyuv2",
        image_size: int | Sequence[int] | None = None,
        train_size: int | None = None,
        val_size: int | None = None,
        augment: JointAugmentation | None = None,
        num_workers: int = 4,
        *,
        batch_size: int = 2,
        shuffle_seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        folder = require_folder(root, "nyuv2", LAYOUT, SOURCE)
        train, val = NYUv2Split(folder, "train"), NYUv2Split(folder, "val")
        info = DatasetInfo(
            name="nyuv2",
            image_size=train.size,
            targets=frozenset({"seg", "depth", "normal"}),
            num_classes={"seg": len(CLASS_NAMES)},
            class_names={"seg": CLASS_NAMES},
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

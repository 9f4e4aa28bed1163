"""`multi_mnist`: two overlapping MNIST digits per image, built from the MNIST files.

The construction of Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018 (after Sabour, Frosst & Hinton 2017): each MNIST image is the *left* digit; a
second, randomly chosen image of the same split is the *right* digit. On a 36 x 36 canvas the
left digit fills rows and columns 0..27, the right one 6..33, overlapping pixels take the
brighter value, and the canvas is resized to 28 x 28 (nearest neighbour, sampled at pixel
centres as PIL does). The partner of every image is fixed by `seed`, so the dataset is the
same in every run.

The IDX files are read directly (nothing is downloaded), gzipped or not, from

    {root}/MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz], {train,t10k}-labels-idx1-ubyte[.gz]

as `dataset=mnist` reads them (`mtlrun.data.mnist.load_split`).

Targets: `left` and `right`, the two digits' classes (10 each). Images are grey, repeated
over 3 channels.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors

from mtlrun.data.base import DatasetInfo
from mtlrun.data.files import FileData, require_folder
from mtlrun.data.mnist import DIGIT_SIDE, LAYOUT, SOURCE, load_split
from mtlrun.data.transforms import JointAugmentation, Sample

CANVAS = 36  # side of the canvas both digits are drawn on
SHIFT = 6  # offset of the right digit on the canvas, in pixels


def overlay(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) uint8 left and right digits -> the (N, 28, 28) uint8 two-digit images (see
    the module docstring)."""
    count, side = len(left), left.shape[-1]
    canvas = torch.zeros(count, CANVAS, CANVAS, dtype=torch.uint8)
    canvas[:, :side, :side] = left
    window = canvas[:, SHIFT : SHIFT + side, SHIFT : SHIFT + side]
    canvas[:, SHIFT : SHIFT + side, SHIFT : SHIFT + side] = torch.maximum(window, right)
    resized = F.interpolate(canvas[:, None].float(), size=(side, side), mode="nearest-exact")
    return resized[:, 0].to(torch.uint8)


class MultiMNISTSplit(Dataset):
    """Two-digit images of one MNIST split (`train` or `t10k`), drawn once when the split is
    opened (47 MB for the 60000 training images), so loading a sample is an index."""

    def __init__(self, root: str, train: bool, seed: int) -> None:
        images, labels = load_split(Path(root), "train" if train else "t10k")
        digits, self.labels = torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())
        generator = torch.Generator().manual_seed(seed * 2 + int(train))
        self.partners = torch.randint(len(digits), (len(digits),), generator=generator)
        chunks = torch.arange(len(digits)).split(10_000)  # bounds the float canvas's memory
        self.images = (
            torch.cat([overlay(digits[chunk], digits[self.partners[chunk]]) for chunk in chunks])
            if len(digits)
            else digits
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        partner = int(self.partners[index])
        return {
            "image": tv_tensors.Image(self.images[index].expand(3, -1, -1).clone()),
            "targets": {"left": int(self.labels[index]), "right": int(self.labels[partner])},
        }


class MultiMNISTData(FileData):
    """MultiMNIST, generated from the MNIST files (see the module docstring).

    Args:
        root: the folder holding `MNIST/raw/`.
        seed: fixes which digit is paired with which.
        image_size: resize to this (an int is a square side); null keeps 28 x 28.
        train_size: use only the first N training images; null = all 60000.
        val_size: use only the first N test images; null = all 10000.
        augment: training-time augmentation; null = none (as in the paper).
        num_workers: loader processes.
        batch_size: images per batch (runtime argument).
        shuffle_seed: seed of the training order (runtime argument).
        device: where batches go (runtime argument).
        rank, world_size: this process's share of each training batch (runtime arguments).
    """

    def __init__(
        self,
        root: str = "data",
        seed: int = 0,
        image_size: int | Sequence[int] | None = None,
        train_size: int | None = None,
        val_size: int | None = None,
        augment: JointAugmentation | None = None,
        num_workers: int = 2,
        *,
        batch_size: int = 256,
        shuffle_seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        folder = str(require_folder(root, "multi_mnist", LAYOUT, SOURCE))
        train = MultiMNISTSplit(folder, train=True, seed=seed)
        val = MultiMNISTSplit(folder, train=False, seed=seed)
        digits = [str(digit) for digit in range(10)]
        info = DatasetInfo(
            name="multi_mnist",
            image_size=(DIGIT_SIDE, DIGIT_SIDE),
            targets=frozenset({"left", "right"}),
            num_classes={"left": 10, "right": 10},
            class_names={"left": digits, "right": digits},
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

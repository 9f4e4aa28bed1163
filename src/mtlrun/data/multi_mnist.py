"""`multi_mnist`: two overlapping MNIST digits per image, built from the MNIST files.

The construction of Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018 (after Sabour, Frosst & Hinton 2017): each MNIST image is the *left* digit; a
second, randomly chosen image of the same split is the *right* digit. On a 36 x 36 canvas the
left digit fills rows and columns 0..27, the right one 6..33, overlapping pixels take the
brighter value, and the canvas is resized to 28 x 28 (nearest neighbour, sampled at pixel
centres as PIL does). The partner of every image is fixed by `seed`, so the dataset is the
same in every run.

MNIST is read by `torchvision.datasets.MNIST` (nothing is downloaded), from

    {root}/MNIST/raw/{train,t10k}-images-idx3-ubyte, {train,t10k}-labels-idx1-ubyte

Targets: `left` and `right`, the two digits' classes (10 each). Images are grey, repeated
over 3 channels.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import MNIST

from mtlrun.data.base import DatasetInfo
from mtlrun.data.files import FileData, require_folder
from mtlrun.data.transforms import JointAugmentation, Sample
from mtlrun.errors import UserError

LAYOUT = (
    "{root}/MNIST/raw/ holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (uncompressed, as "
    "torchvision.datasets.MNIST reads them)"
)
SOURCE = "the MNIST files (yann.lecun.com/exdb/mnist or any mirror; gunzip them)"
CANVAS = 36  # side of the canvas both digits are drawn on
SHIFT = 6  # offset of the right digit on the canvas, in pixels


def overlay(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Two (28, 28) uint8 digits -> the (28, 28) uint8 two-digit image (see module docstring)."""
    side = left.shape[-1]
    canvas = torch.zeros(CANVAS, CANVAS, dtype=torch.uint8)
    canvas[:side, :side] = left
    window = canvas[SHIFT : SHIFT + side, SHIFT : SHIFT + side]
    canvas[SHIFT : SHIFT + side, SHIFT : SHIFT + side] = torch.maximum(window, right)
    return F.interpolate(canvas[None, None].float(), size=(side, side), mode="nearest-exact")[
        0, 0
    ].to(torch.uint8)


class MultiMNISTSplit(Dataset):
    """Two-digit images of one MNIST split (`train` or `t10k`)."""

    def __init__(self, root: str, train: bool, seed: int) -> None:
        try:
            digits = MNIST(root, train=train, download=False)
        except RuntimeError as error:
            raise UserError(
                f"MNIST not found under {root}; expected {LAYOUT}. Get {SOURCE}"
            ) from error
        except (AssertionError, TypeError, ValueError) as error:
            raise UserError(
                f"MNIST files under {root} are malformed ({error}); expected {LAYOUT}"
            ) from error
        self.images, self.labels = digits.data, digits.targets
        if self.images.ndim != 3 or len(self.images) != len(self.labels):
            raise UserError(
                f"MNIST under {root} has {len(self.images)} images of shape "
                f"{tuple(self.images.shape[1:])} and {len(self.labels)} labels; expected as many "
                f"(28, 28) images as labels: {LAYOUT}"
            )
        generator = torch.Generator().manual_seed(seed * 2 + int(train))
        self.partners = torch.randint(len(self.images), (len(self.images),), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        partner = int(self.partners[index])
        image = overlay(self.images[index], self.images[partner])
        return {
            "image": tv_tensors.Image(image.expand(3, -1, -1).clone()),
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
            image_size=tuple(train.images.shape[-2:]),
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

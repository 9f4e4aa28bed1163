"""`mnist`: single MNIST digits with a class, a layout and the image itself, for
classification and class- or layout-conditioned generation.

Each sample is one 28 x 28 MNIST digit, white on black, grey repeated over 3 channels, on
an `image_size` canvas: `fit: pad` centres the digit on a black canvas (no interpolation;
the LeNet-5 convention of 32 x 32), `fit: resize` resizes it (bilinear, antialiased).
Targets, all derived from that final image:

    cls    the digit, 0..9
    seg    per pixel: 0 = background, digit + 1 where the image is brighter than
           `threshold` (the layout a layout-conditioned generator draws from)
    gen    the image itself

The training split is MNIST's 60000 training images, the validation split its 10000 test
images, both in file order (`train_size` / `val_size` take the first N). The IDX files are
read directly, gzipped or not, from

    {root}/MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz], {train,t10k}-labels-idx1-ubyte[.gz]

(torchvision's MNIST reader accepts only the gunzipped files, so this module reads them
itself). MNIST is by Y. LeCun and C. Cortes (CC BY-SA 3.0).
"""

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors

from mtlrun.data.base import DatasetInfo
from mtlrun.data.files import FileData, require_folder
from mtlrun.data.transforms import JointAugmentation, Sample, square_or_pair
from mtlrun.errors import UserError

LAYOUT = (
    "{root}/MNIST/raw/ holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (gzipped with .gz or not)"
)
SOURCE = "the MNIST files (yann.lecun.com/exdb/mnist or any mirror)"
DIGIT_SIDE = 28
_IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only type MNIST uses


def read_idx(path: Path, dimensions: int) -> np.ndarray:
    """The uint8 array of an IDX file (big-endian header: two zero bytes, type code 0x08,
    number of dimensions, then one uint32 size per dimension; then the data), gunzipped
    first when `path` ends in `.gz`. Anything else is a one-line `UserError`."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise UserError(f"{path} is not readable ({error}); expected {LAYOUT}") from error
    header = 4 + 4 * dimensions
    if len(raw) < header or raw[:3] != bytes([0, 0, _IDX_UBYTE]) or raw[3] != dimensions:
        raise UserError(
            f"{path} is not an IDX file of unsigned bytes with {dimensions} dimension(s); "
            f"expected {LAYOUT}"
        )
    shape = tuple(int(size) for size in np.frombuffer(raw, ">u4", dimensions, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise UserError(
            f"{path} declares shape {shape} but holds {len(raw) - header} bytes of data; "
            f"expected {LAYOUT}"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def find_idx(raw: Path, name: str) -> Path:
    """`raw/name`, or `raw/name.gz` where only the gzipped file is there."""
    for path in (raw / name, raw / f"{name}.gz"):
        if path.is_file():
            return path
    raise UserError(f"MNIST file {raw / name}[.gz] not found; expected {LAYOUT}. Get {SOURCE}")


def load_split(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of the split `prefix` (train or t10k)."""
    raw = root / "MNIST" / "raw"
    images = read_idx(find_idx(raw, f"{prefix}-images-idx3-ubyte"), 3)
    labels = read_idx(find_idx(raw, f"{prefix}-labels-idx1-ubyte"), 1)
    if images.shape[1:] != (DIGIT_SIDE, DIGIT_SIDE) or len(images) != len(labels):
        raise UserError(
            f"MNIST {prefix} under {raw} has {len(images)} images of shape "
            f"{images.shape[1:]} and {len(labels)} labels; expected as many (28, 28) images "
            f"as labels: {LAYOUT}"
        )
    if labels.size and labels.max() > 9:
        raise UserError(f"MNIST {prefix} labels under {raw} go up to {labels.max()}; expected 0..9")
    return images, labels


class MNISTSplit(Dataset):
    """The samples of one MNIST split (see the module docstring).

    Args:
        images: uint8 digits [N, 28, 28].
        labels: uint8 classes [N].
        size: (height, width) of the final images.
        fit: "pad" (centre on a black canvas) or "resize".
        threshold: grey value above which a pixel belongs to the digit in `seg`.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        size: tuple[int, int],
        fit: str,
        threshold: float,
    ) -> None:
        self.images, self.labels = images, labels
        self.size, self.fit, self.threshold = size, fit, threshold

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        digit = torch.from_numpy(self.images[index].astype(np.float32) / 255)
        grey = self.place(digit)
        label = int(self.labels[index])
        layout = torch.where(grey > self.threshold, label + 1, 0)
        image = tv_tensors.Image(grey.expand(3, -1, -1).clone())
        return {
            "image": image,
            "targets": {"cls": label, "seg": tv_tensors.Mask(layout), "gen": image.clone()},
        }

    def place(self, digit: torch.Tensor) -> torch.Tensor:
        """A (28, 28) digit in [0, 1] -> the (H, W) image in [0, 1]."""
        height, width = self.size
        if self.fit == "resize":
            resized = F.interpolate(
                digit[None, None], size=self.size, mode="bilinear", antialias=True
            )
            return resized[0, 0].clamp(0.0, 1.0)
        top, left = (height - DIGIT_SIDE) // 2, (width - DIGIT_SIDE) // 2
        canvas = torch.zeros(height, width)
        canvas[top : top + DIGIT_SIDE, left : left + DIGIT_SIDE] = digit
        return canvas


def check_drawing(size: tuple[int, int], fit: str, threshold: float) -> None:
    """Stop on drawing settings that cannot work: an unknown `fit`, a canvas too small to pad
    the digits onto, a `threshold` outside [0, 1)."""
    if fit not in ("pad", "resize"):
        raise UserError(f"dataset.fit must be pad or resize, got {fit}")
    if fit == "pad" and min(size) < DIGIT_SIDE:
        raise UserError(
            f"dataset.image_size={list(size)} is smaller than the 28x28 digits, which "
            f"dataset.fit=pad cannot shrink; use dataset.fit=resize or a side >= 28"
        )
    if not 0.0 <= threshold < 1.0:
        raise UserError(f"dataset.threshold must be in [0, 1), got {threshold}")


class MNISTData(FileData):
    """Single MNIST digits with `cls`, `seg` and `gen` targets (see the module docstring).

    Args:
        root: the folder holding `MNIST/raw/`.
        image_size: side of the square images (or [height, width]); null = 28 x 28.
        fit: "pad" centres the digit on a black canvas (sides must be >= 28); "resize"
            resizes it to `image_size`.
        threshold: grey value in [0, 1) above which a pixel is the digit's in `seg`.
        train_size: use only the first N training images; null = all 60000.
        val_size: use only the first N test images; null = all 10000.
        augment: training-time augmentation; null = none.
        num_workers: loader processes.
        batch_size: images per batch (runtime argument).
        shuffle_seed: seed of the training order (runtime argument).
        device: where batches go (runtime argument).
        rank, world_size: this process's share of each training batch (runtime arguments).
    """

    def __init__(
        self,
        root: str = "data",
        image_size: int | Sequence[int] | None = 32,
        fit: str = "pad",
        threshold: float = 0.5,
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
        size = square_or_pair(image_size, "dataset.image_size") or (DIGIT_SIDE, DIGIT_SIDE)
        check_drawing(size, fit, threshold)
        folder = require_folder(root, "mnist", LAYOUT, SOURCE)
        train = MNISTSplit(*load_split(folder, "train"), size, fit, threshold)
        val = MNISTSplit(*load_split(folder, "t10k"), size, fit, threshold)
        digits = [str(digit) for digit in range(10)]
        info = DatasetInfo(
            name="mnist",
            image_size=size,
            targets=frozenset({"cls", "seg", "gen"}),
            num_classes={"cls": 10, "seg": 11},
            class_names={"cls": digits, "seg": ["background", *digits]},
        )
        super().__init__(
            info,
            train,
            val,
            image_size=None,  # the splits already draw at `size`, so `seg` matches the image
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

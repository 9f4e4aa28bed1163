"""`celeba`: CelebA faces with their 40 binary attributes and 5 landmarks, read by
`torchvision.datasets.CelebA` (nothing is downloaded).

The layout torchvision reads (Liu, Luo, Wang & Tang, "Deep Learning Face Attributes in the
Wild", ICCV 2015; aligned and cropped images of 178 x 218):

    {root}/celeba/img_align_celeba/{000001..202599}.jpg
    {root}/celeba/list_attr_celeba.txt               40 attributes, -1 / 1
    {root}/celeba/list_landmarks_align_celeba.txt    5 (x, y) points in the aligned images
    {root}/celeba/list_eval_partition.txt            0 train, 1 valid, 2 test
    {root}/celeba/identity_CelebA.txt, list_bbox_celeba.txt

Targets: `attr`, LongTensor[B, 40] of 0 / 1 (attribute names in `info.class_names["attr"]`),
and `landmarks`, FloatTensor[B, 5, 2] of (x, y) pixels. The boxes of `list_bbox_celeba.txt`
are not offered: they locate faces in the original, uncropped photographs, not in the
aligned images torchvision reads.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import CelebA
from torchvision.transforms.v2 import functional as F

from mtlrun.data.base import DatasetInfo
from mtlrun.data.files import FileData, require_folder
from mtlrun.data.transforms import FACE_POINTS, FaceLandmarks, JointAugmentation, Sample
from mtlrun.errors import UserError

LAYOUT = (
    "{root}/celeba/ holding img_align_celeba/*.jpg, list_attr_celeba.txt, "
    "list_landmarks_align_celeba.txt, list_eval_partition.txt, identity_CelebA.txt and "
    "list_bbox_celeba.txt (the layout torchvision.datasets.CelebA reads)"
)
SOURCE = (
    "the CelebA site (mmlab.ie.cuhk.edu.hk/projects/CelebA.html: Align&Cropped images, Anno, Eval)"
)
FILES = [name for _, _, name in CelebA.file_list if not name.endswith(".zip")]
SPLITS = ("train", "valid", "test")


class CelebAFiles(CelebA):
    """torchvision's reader; with `check_md5=False` files are only required to exist (for
    copies re-saved with other line endings, and for test fakes)."""

    def __init__(self, root: Path, split: str, check_md5: bool) -> None:
        self.check_md5 = check_md5
        super().__init__(str(root), split=split, target_type=["attr", "landmarks"])

    def _check_integrity(self) -> bool:
        if self.check_md5:
            return super()._check_integrity()
        folder = Path(self.root) / self.base_folder
        return (
            all((folder / name).is_file() for name in FILES)
            and (folder / "img_align_celeba").is_dir()
        )


class CelebASplit(Dataset):
    """One CelebA split as raw samples."""

    def __init__(self, root: Path, split: str, check_md5: bool) -> None:
        try:
            self.faces = CelebAFiles(root, split, check_md5)
        except RuntimeError as error:  # torchvision's "not found or corrupted"
            raise UserError(
                f"CelebA files under {root / 'celeba'} failed torchvision's md5 check; use the "
                f"original files or set dataset.check_md5=false; expected {LAYOUT}"
            ) from error
        except (ValueError, IndexError) as error:
            raise UserError(
                f"CelebA annotation files under {root / 'celeba'} are malformed ({error}); "
                f"expected {LAYOUT}"
            ) from error

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> Sample:
        try:
            picture, (attributes, landmarks) = self.faces[index]
        except OSError as error:
            name = self.faces.filename[index]
            raise UserError(
                f"cannot read CelebA image {name} ({error}); expected {LAYOUT}"
            ) from error
        image = F.pil_to_tensor(picture.convert("RGB"))
        return {
            "image": tv_tensors.Image(image),
            "targets": {
                "attr": attributes.long(),
                "landmarks": FaceLandmarks(
                    landmarks.float().view(-1, 2), canvas_size=tuple(image.shape[-2:])
                ),
            },
        }


def celeba_root(root: str | Path) -> Path:
    """The folder holding `celeba/` (a path to `celeba/` itself is accepted too)."""
    folder = require_folder(root, "celeba", LAYOUT, SOURCE)
    if not (folder / "celeba").is_dir() and folder.name == "celeba":
        folder = folder.parent
    missing = [name for name in FILES if not (folder / "celeba" / name).is_file()]
    if not (folder / "celeba" / "img_align_celeba").is_dir():
        missing.append("img_align_celeba/")
    if missing:
        raise UserError(
            f"CelebA under {folder / 'celeba'} lacks {', '.join(missing)}; expected {LAYOUT}. "
            f"Get it from {SOURCE}"
        )
    return folder


def celeba_splits(
    root: str | Path, val_split: str, check_md5: bool
) -> tuple[CelebASplit, CelebASplit]:
    """The training split and the evaluated one; both must list images, and the evaluated
    one's first image must be readable."""
    if val_split not in SPLITS[1:]:
        raise UserError(f"dataset.val_split must be valid or test, got '{val_split}'")
    folder = celeba_root(root)
    train = CelebASplit(folder, "train", check_md5)
    val = CelebASplit(folder, val_split, check_md5)
    if not len(val):
        raise UserError(f"CelebA's list_eval_partition.txt lists no '{val_split}' images")
    val[0]  # the first evaluation image must be readable
    if not len(train):
        raise UserError("CelebA's list_eval_partition.txt lists no 'train' images")
    return train, val


def celeba_info(train: CelebASplit) -> DatasetInfo:
    """What the first training face (which must be readable) and the attribute file's header
    say about the dataset; the header must name as many attributes as a row holds."""
    first = train[0]
    # The header line of the real attribute file ends with a space, which torchvision
    # reads as one more, empty, name.
    names = [name for name in train.faces.attr_names if name]
    if len(names) != first["targets"]["attr"].numel():
        raise UserError(
            f"list_attr_celeba.txt names {len(names)} attributes but its rows hold "
            f"{first['targets']['attr'].numel()} values; expected {LAYOUT}"
        )
    return DatasetInfo(
        name="celeba",
        image_size=tuple(first["image"].shape[-2:]),
        targets=frozenset({"attr", "landmarks"}),
        num_classes={"attr": len(names)},
        class_names={"attr": names, "landmarks": list(FACE_POINTS)},
    )


class CelebAData(FileData):
    """CelebA faces, 40 binary attributes and 5 landmarks (see the module docstring).

    Args:
        root: the folder holding `celeba/`.
        val_split: the split evaluated: `valid` or `test`.
        check_md5: verify the annotation files' checksums as torchvision does.
        image_size: resize to this (an int is a square side); null keeps 218 x 178.
        train_size: use only the first N training faces; null = all.
        val_size: use only the first N evaluation faces; null = all.
        augment: training-time augmentation (a flip also swaps left and right landmarks).
        num_workers: loader processes.
        batch_size: faces per batch (runtime argument).
        shuffle_seed: seed of the training order (runtime argument).
        device: where batches go (runtime argument).
        rank, world_size: this process's share of each training batch (runtime arguments).
    """

    def __init__(
        self,
        root: str = "data",
        val_split: str = "valid",
        check_md5: bool = True,
        image_size: int | Sequence[int] | None = 64,
        train_size: int | None = None,
        val_size: int | None = None,
        augment: JointAugmentation | None = None,
        num_workers: int = 4,
        *,
        batch_size: int = 256,
        shuffle_seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        train, val = celeba_splits(root, val_split, check_md5)
        super().__init__(
            celeba_info(train),
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

"""`oxford_pets`: the Oxford-IIIT Pet dataset, read by `torchvision.datasets.OxfordIIITPet`
(nothing is downloaded).

Parkhi, Vedaldi, Zisserman & Jawahar, "Cats and Dogs", CVPR 2012: 7349 photographs of 37
breeds (12 cats, 25 dogs), each with a trimap. The layout torchvision reads:

    {root}/oxford-iiit-pet/images/{Breed_name}_{n}.jpg
    {root}/oxford-iiit-pet/annotations/{trainval,test}.txt  "<id> <breed 1..37> <species 1..2> <n>"
    {root}/oxford-iiit-pet/annotations/trimaps/{id}.png     1 pet, 2 background, 3 border

Targets: `cls` (37 breeds), `species` (cat, dog), `seg`, the trimap as 3 classes
(0 background, 1 pet, 2 border), and `inst`, one instance per photograph: the trimap's pet
pixels (the uncertain border left out), labelled with the species. Training uses
`trainval`, evaluation `test`. The photographs differ in size, so they are resized to
`image_size` (default 224 x 224).
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import OxfordIIITPet
from torchvision.transforms.v2 import functional as F

from mtlrun.data.base import DatasetInfo
from mtlrun.data.files import FileData, require_folder
from mtlrun.data.transforms import JointAugmentation, Sample
from mtlrun.errors import UserError

LAYOUT = (
    "{root}/oxford-iiit-pet/ holding images/*.jpg, annotations/trainval.txt, "
    "annotations/test.txt and annotations/trimaps/*.png (the layout "
    "torchvision.datasets.OxfordIIITPet reads)"
)
SOURCE = "www.robots.ox.ac.uk/~vgg/data/pets (images.tar.gz and annotations.tar.gz, unpacked)"
TRIMAP_CLASSES = ["background", "pet", "border"]
# Trimap value (1 pet, 2 background, 3 border) -> class; background first, as in other
# segmentation targets.
_TRIMAP_TO_CLASS = torch.tensor([-1, 1, 0, 2])


class PetsSplit(Dataset):
    """One split (`trainval` or `test`) as raw samples."""

    def __init__(self, root: Path, split: str) -> None:
        try:
            self.pets = OxfordIIITPet(
                str(root), split=split, target_types=["category", "binary-category", "segmentation"]
            )
        except RuntimeError as error:
            raise UserError(f"Oxford-IIIT Pet not found under {root}; expected {LAYOUT}") from error
        except (OSError, ValueError) as error:
            raise UserError(
                f"Oxford-IIIT Pet under {root} is malformed ({error}); expected {LAYOUT}"
            ) from error
        if len(self.pets) == 0:
            raise UserError(f"annotations/{split}.txt under {root} lists no images: {LAYOUT}")
        self[0]  # the first photograph and trimap must be readable and agree in size

    def __len__(self) -> int:
        return len(self.pets)

    def __getitem__(self, index: int) -> Sample:
        try:
            picture, (breed, species, trimap) = self.pets[index]
        except OSError as error:
            raise UserError(
                f"cannot read Oxford-IIIT Pet sample {self.pets._images[index].stem} ({error}); "
                f"expected {LAYOUT}"
            ) from error
        trimap = F.pil_to_tensor(trimap)[0].long()
        if trimap.min() < 1 or trimap.max() > 3:
            raise UserError(f"trimap {self.pets._segs[index]} holds values outside 1..3: {LAYOUT}")
        image = F.pil_to_tensor(picture)
        if image.shape[-2:] != trimap.shape:
            raise UserError(
                f"trimap {self.pets._segs[index]} is {tuple(trimap.shape)} but its image is "
                f"{tuple(image.shape[-2:])}; they must be the same size: {LAYOUT}"
            )
        return {
            "image": tv_tensors.Image(image),
            "targets": {
                "cls": breed,
                "species": species,
                "seg": tv_tensors.Mask(_TRIMAP_TO_CLASS[trimap]),
                # One instance per photograph: the pet's pixels, labelled with its species.
                "inst": {
                    "masks": tv_tensors.Mask((trimap == 1)[None]),
                    "labels": torch.tensor([species]),
                },
            },
        }


def pets_root(root: str | Path) -> Path:
    """The folder holding `oxford-iiit-pet/` (a path to that folder itself is accepted too),
    checked for every part torchvision reads."""
    folder = require_folder(root, "oxford_pets", LAYOUT, SOURCE)
    if not (folder / "oxford-iiit-pet").is_dir() and folder.name == "oxford-iiit-pet":
        folder = folder.parent
    base = folder / "oxford-iiit-pet"
    parts = ["images/", "annotations/trainval.txt", "annotations/test.txt", "annotations/trimaps/"]
    missing = [part for part in parts if not (base / part.rstrip("/")).exists()]
    if missing:
        raise UserError(
            f"Oxford-IIIT Pet under {base} lacks {', '.join(missing)}; expected {LAYOUT}. "
            f"Get it from {SOURCE}"
        )
    return folder


class OxfordPetsData(FileData):
    """Oxford-IIIT Pet: breed, species and trimap segmentation (see the module docstring).

    Args:
        root: the folder holding `oxford-iiit-pet/`.
        image_size: resize to this (an int is a square side); required, as photographs
            differ in size.
        train_size: use only the first N `trainval` photographs; null = all 3680.
        val_size: use only the first N `test` photographs; null = all 3669.
        augment: training-time augmentation (`mtlrun.data.transforms.JointAugmentation`).
        num_workers: loader processes.
        batch_size: photographs per batch (runtime argument).
        shuffle_seed: seed of the training order (runtime argument).
        device: where batches go (runtime argument).
        rank, world_size: this process's share of each training batch (runtime arguments).
    """

    def __init__(
        self,
        root: str = "data",
        image_size: int | Sequence[int] | None = 224,
        train_size: int | None = None,
        val_size: int | None = None,
        augment: JointAugmentation | None = None,
        num_workers: int = 4,
        *,
        batch_size: int = 32,
        shuffle_seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if image_size is None:
            raise UserError(
                "oxford_pets photographs differ in size; set dataset.image_size (e.g. 224)"
            )
        folder = pets_root(root)
        train, val = PetsSplit(folder, "trainval"), PetsSplit(folder, "test")
        info = DatasetInfo(
            name="oxford_pets",
            image_size=(224, 224),  # replaced by image_size
            targets=frozenset({"cls", "species", "seg", "inst"}),
            num_classes={"cls": 37, "species": 2, "seg": len(TRIMAP_CLASSES), "inst": 2},
            class_names={
                # Breed names come from the training list's file names: all 37 or none.
                **({"cls": list(train.pets.classes)} if len(train.pets.classes) == 37 else {}),
                "species": list(train.pets.bin_classes),
                "seg": TRIMAP_CLASSES,
                "inst": list(train.pets.bin_classes),
            },
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

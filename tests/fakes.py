"""Small fake copies of the real datasets, written in exactly their real formats.

Each writer lays out a few samples the way the real download does (same folders, file
names, shapes, dtypes and ignore / invalid conventions), so the real loaders, and for
CelebA, MNIST and Oxford-IIIT Pet torchvision's own classes, read them. Sample content is
random but seeded, with known structure where tests need it (see each writer).
"""

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image

NYUV2_SIZE = (288, 384)
CITYSCAPES_SIZE = (128, 256)
CELEBA_SIZE = (218, 178)  # (height, width) of the aligned images
CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]
PET_BREEDS = ("Abyssinian", "Bengal", "american_bulldog", "beagle")  # cats are capitalised


def _dense_sample(
    generator: np.random.Generator, size: tuple[int, int], classes: int
) -> dict[str, np.ndarray]:
    """Image, label (with -1 pixels), depth (with 0 pixels) and normals (with zero pixels)."""
    height, width = size
    label = generator.integers(0, classes, size).astype(np.float32)
    label[:4] = -1  # an unlabelled band at the top, as around NYUv2's borders
    depth = generator.uniform(0.5, 9.0, (height, width, 1)).astype(np.float32)
    depth[:, :3] = 0.0  # invalid columns at the left edge
    normal = generator.normal(size=(height, width, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[-2:] = 0.0  # invalid rows at the bottom
    image = generator.uniform(0, 1, (height, width, 3)).astype(np.float32)
    return {"image": image, "label": label, "depth": depth, "normal": normal}


def _save_arrays(root: Path, split: str, index: int, arrays: dict[str, np.ndarray]) -> None:
    for folder, array in arrays.items():
        path = root / split / folder / f"{index}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)


def write_nyuv2(
    root: Path, train: int = 4, val: int = 2, size: tuple[int, int] = NYUV2_SIZE
) -> Path:
    """{train,val}/{image,label,depth,normal}/{i}.npy at 288 x 384 (float32, labels float
    with -1, depth 0 = invalid, all-zero normal = invalid)."""
    generator = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for index in range(count):
            _save_arrays(root, split, index, _dense_sample(generator, size, 13))
    return root


def write_cityscapes(
    root: Path,
    train: int = 4,
    val: int = 2,
    size: tuple[int, int] = CITYSCAPES_SIZE,
    label_folders: tuple[str, ...] = ("label_7", "label_19"),
) -> Path:
    """{train,val}/{image,label_7,label_19,depth}/{i}.npy at 128 x 256 (depth = disparity,
    0 = invalid; labels -1 = ignore). `label_folders=("label",)` writes the one-folder copy."""
    generator = np.random.default_rng(1)
    for split, count in (("train", train), ("val", val)):
        for index in range(count):
            sample = _dense_sample(generator, size, 7)
            arrays = {"image": sample["image"], "depth": sample["depth"]}
            for folder in label_folders:
                classes = 19 if folder == "label_19" else 7
                arrays[folder] = np.where(
                    sample["label"] < 0, -1, generator.integers(0, classes, size)
                ).astype(np.float32)
            _save_arrays(root, split, index, arrays)
    return root


def write_celeba(root: Path, partition: tuple[int, ...] = (0, 0, 0, 0, 1, 1, 2, 2)) -> Path:
    """root/celeba/ as torchvision reads it: img_align_celeba/{000001..}.jpg (178 x 218) and
    the five annotation files; `partition` gives each image's split (0 train, 1 valid,
    2 test; torchvision cannot read a split of a single image). Attribute j of image i is 1
    when (i + j) is even, else -1."""
    folder = root / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(2)
    names = [f"{index + 1:06d}.jpg" for index in range(len(partition))]
    height, width = CELEBA_SIZE
    attributes, identities, boxes, landmarks, splits = [], [], [], [], []
    for index, name in enumerate(names):
        pixels = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / name, quality=90)
        values = " ".join(f"{1 if (index + column) % 2 == 0 else -1:2d}" for column in range(40))
        attributes.append(f"{name} {values}")
        identities.append(f"{name} {index % 3 + 1}")
        boxes.append(f"{name}    95  71 226 313")
        points = [69 + index, 109, 106 + index, 113, 77, 142, 73, 152, 108, 154]
        landmarks.append(f"{name} " + " ".join(f"{value:4d}" for value in points))
        splits.append(f"{name} {partition[index]}")
    count = str(len(names))
    # The real files: a count line, a header line (the attribute header ends with a space).
    _write_lines(
        folder / "list_attr_celeba.txt", [count, " ".join(CELEBA_ATTRIBUTES) + " ", *attributes]
    )
    _write_lines(folder / "identity_CelebA.txt", identities)
    _write_lines(folder / "list_bbox_celeba.txt", [count, "image_id x_1 y_1 width height", *boxes])
    header = " ".join(
        f"{point}_{axis}"
        for point in ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
        for axis in "xy"
    )
    _write_lines(folder / "list_landmarks_align_celeba.txt", [count, header, *landmarks])
    _write_lines(folder / "list_eval_partition.txt", splits)
    return root


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def mnist_digit(label: int) -> np.ndarray:
    """A fake digit: a 28 x 28 image of the constant value 20 * label + 10 (so a test can
    tell which digit a pixel came from)."""
    return np.full((28, 28), 20 * label + 10, dtype=np.uint8)


def write_mnist(root: Path, train: int = 6, test: int = 4) -> Path:
    """root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte in the IDX format (big
    endian magic 2051 / 2049 and sizes, then uint8 data); image i has label i % 10 and is
    `mnist_digit(label)`."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = np.arange(count, dtype=np.uint8) % 10
        images = np.stack([mnist_digit(int(label)) for label in labels])
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, count) + labels.tobytes()
        )
    return root


def write_oxford_pets(root: Path, trainval: int = 4, test: int = 2) -> Path:
    """root/oxford-iiit-pet/ as torchvision reads it: images/{Breed}_{n}.jpg of varied
    sizes, annotations/{trainval,test}.txt and annotations/trimaps/{id}.png holding 1 (pet)
    in a centred box, 3 (border) around it, 2 (background) elsewhere."""
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(3)
    lists: dict[str, list[str]] = {"trainval": [], "test": []}
    number = 0
    for split, count in (("trainval", trainval), ("test", test)):
        for _ in range(count):
            breed = number % len(PET_BREEDS)
            name = f"{PET_BREEDS[breed]}_{number + 1}"
            species = 1 if PET_BREEDS[breed][0].isupper() else 2
            height, width = (60, 80) if number % 2 else (72, 54)
            pixels = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / "images" / f"{name}.jpg")
            trimap = np.full((height, width), 2, dtype=np.uint8)
            trimap[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 3
            trimap[height // 4 + 2 : 3 * height // 4 - 2, width // 4 + 2 : 3 * width // 4 - 2] = 1
            Image.fromarray(trimap).save(base / "annotations" / "trimaps" / f"{name}.png")
            lists[split].append(f"{name} {breed + 1} {species} {breed + 1}")
            number += 1
    for split, lines in lists.items():
        _write_lines(base / "annotations" / f"{split}.txt", lines)
    return root


@dataclass(frozen=True)
class Fake:
    """How to fake one file-backed dataset: its writer, and the task options that fit it."""

    write: Callable[[Path], Path]
    tasks: tuple[str, ...]


# The fakes of the file-backed datasets, by their configs' `_target_`.
FAKES: dict[str, Fake] = {
    "mtlrun.data.nyuv2.NYUv2Data": Fake(write_nyuv2, ("seg", "depth", "normal")),
    "mtlrun.data.cityscapes.CityscapesData": Fake(write_cityscapes, ("seg", "depth")),
    "mtlrun.data.celeba.CelebAData": Fake(write_celeba, ("attr", "landmarks")),
    "mtlrun.data.multi_mnist.MultiMNISTData": Fake(write_mnist, ("left", "right")),
    "mtlrun.data.oxford_pets.OxfordPetsData": Fake(
        write_oxford_pets, ("cls", "species", "seg", "inst")
    ),
}
# Targets the default dataset (shapes) lacks, and a dataset option that has each.
TARGET_DATASETS = {
    "normal": "nyuv2",
    "attr": "celeba",
    "landmarks": "celeba",
    "left": "multi_mnist",
    "right": "multi_mnist",
    "species": "oxford_pets",
}


def fake_data_overrides(
    compose: Callable[..., DictConfig], overrides: Sequence[str], folder: Path
) -> list[str]:
    """What to add to `overrides` so that a tiny run of them builds without real data.

    Tasks whose target the composed dataset lacks get a dataset that has it
    (`TARGET_DATASETS`); a file-backed dataset gets a fake written under `folder`, read in
    the training process with batches of 2, and its own tasks when the selected ones are not
    among them (a dataset option tried with the default tasks). Returns [] when nothing is
    needed.

    Args:
        compose: composes the config from overrides (the `compose_tiny` fixture).
        overrides: the case's own overrides.
        folder: where a fake may be written.
    """
    cfg = compose(*overrides)
    extra: list[str] = []
    lacking = [
        TARGET_DATASETS[str(task.target)]
        for task in cfg.tasks.values()
        if task.get("target") in TARGET_DATASETS
    ]
    if lacking and cfg.dataset._target_ not in FAKES:
        extra.append(f"dataset={lacking[0]}")
        cfg = compose(*overrides, *extra)
    fake = FAKES.get(cfg.dataset._target_)
    if fake is None:
        return extra
    if not set(cfg.tasks) <= set(fake.tasks):  # e.g. the default tasks on another dataset
        extra.append(f"tasks=[{','.join(fake.tasks)}]")
    extra += [f"dataset.root={fake.write(folder / 'data')}", "dataset.num_workers=0"]
    extra.append("trainer.batch_size=2")
    if "check_md5" in cfg.dataset:  # fakes cannot match the real files' checksums
        extra.append("dataset.check_md5=false")
    return extra


# Single MNIST digits read from the same IDX files as MultiMNIST (fake digit d is the
# constant 20 d + 10, so digits 0..1 are all background in `seg` and 2..9 all digit).
FAKES["mtlrun.data.mnist.MNISTData"] = Fake(write_mnist, ("cls", "seg", "gen", "gan"))


def write_folder(root: Path, count: int = 10) -> Path:
    """root/images/{i}.png of varied sizes, root/masks/{i}.png (1 in a centred box, 255 =
    ignore on its border, 0 elsewhere) and root/manifest.csv: image, label (cat / dog by
    parity), mask."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    generator = np.random.default_rng(4)
    lines = ["image,label,mask"]
    for index in range(count):
        height, width = (24, 30) if index % 2 else (28, 20)
        pixels = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{index}.png")
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[4:-4, 4:-4], mask[4, 4:-4] = 1, 255
        Image.fromarray(mask).save(root / "masks" / f"{index}.png")
        lines.append(f"images/{index}.png,{'dog' if index % 2 else 'cat'},masks/{index}.png")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


FAKES["mtlrun.data.folder.FolderData"] = Fake(write_folder, ("cls",))


def write_coco(root: Path) -> Path:
    """COCO's layout ({root}/annotations/instances_{train2017,val2017}.json and the images
    under {root}/{split}/) with a few pictures of shapes (see `learnable_fakes`)."""
    from learnable_fakes import write_learnable_coco  # it builds on this module

    return write_learnable_coco(root, train=4, val=2)


FAKES["mtlrun.data.coco.CocoData"] = Fake(write_coco, ("det",))

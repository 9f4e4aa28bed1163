"""The file-backed datasets, on small fakes written in their real formats (tests/fakes.py):
every loader yields the batch contract with the files' values, the loader's order and
augmentation are pure functions of (seed, epoch), bad data stops with one line naming the
file and the expected layout, and each dataset trains through the real config."""

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from fakes import (
    FAKES,
    Fake,
    fake_data_overrides,
    mnist_digit,
    write_celeba,
    write_cityscapes,
    write_mnist,
    write_nyuv2,
    write_oxford_pets,
)
from mtlrun.cli import config_dir
from mtlrun.data.contract import CONTRACT, TensorSpec
from mtlrun.data.files import FileData
from mtlrun.data.transforms import JointAugmentation
from mtlrun.engine import Run, fit
from mtlrun.errors import UserError

BuildRun = Callable[..., Run]
ComposeConfig = Callable[..., DictConfig]

BATCH = 2


def dataset_targets() -> dict[str, str]:
    """conf/dataset/ option -> the `_target_` its file names."""
    files = sorted((config_dir() / "dataset").glob("*.yaml"))
    return {path.stem: str(OmegaConf.load(path)._target_) for path in files}


# dataset option -> its fake (tests/fakes.py): every conf/dataset/ option that has one.
DATASETS: dict[str, Fake] = {
    name: FAKES[target] for name, target in dataset_targets().items() if target in FAKES
}
# Settings the tests give a dataset beyond its defaults (none for most).
SETTINGS: dict[str, dict[str, Any]] = {
    "celeba": {"check_md5": False},  # fakes cannot match the real files' checksums
    "oxford_pets": {"image_size": 40},  # the fake's photographs are small; 224 would be slow
    "coco": {"image_size": 40},
}


def test_every_file_dataset_has_a_fake_and_every_fake_a_config_file() -> None:
    """Adding a dataset is its module, its config file and its fake: each one missing fails."""
    targets = dataset_targets()
    file_backed = {
        name for name, target in targets.items() if issubclass(get_class(target), FileData)
    }
    assert file_backed == set(DATASETS), "a file-backed dataset without a fake in tests/fakes.py"
    assert set(FAKES) <= set(targets.values()), "a fake whose _target_ no conf/dataset/ file names"


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One fake of each dataset for the tests that only read them."""
    return {name: fake.write(tmp_path_factory.mktemp(name)) for name, fake in DATASETS.items()}


def open_data(name: str, root: Path, **settings: Any) -> FileData:
    kind = get_class(dataset_targets()[name])
    arguments = {"num_workers": 0, "batch_size": BATCH, **SETTINGS.get(name, {}), **settings}
    return kind(str(root), **arguments)


def assert_follows_the_contract(name: str, value: Any, size: int, image: tuple[int, int]) -> None:
    """`value`, the target `name` of a batch of `size` images of `image` (H, W), is laid out
    as `CONTRACT` says; letters other than H and W may be any size."""
    spec = CONTRACT[name].tensors
    expected = spec if isinstance(spec, dict) else {"": spec}
    parts = value if isinstance(spec, dict) else {"": value}
    assert set(parts) == set(expected), name
    letters = {"H": image[0], "W": image[1]}
    for key, tensor_spec in expected.items():
        tensor: torch.Tensor = parts[key]
        assert isinstance(tensor_spec, TensorSpec)
        assert tensor.dtype == tensor_spec.dtype, (name, key)
        assert tensor.dim() == 1 + len(tensor_spec.shape) and tensor.shape[0] == size, (name, key)
        for axis, actual in zip(tensor_spec.shape, tensor.shape[1:], strict=True):
            wanted = letters.setdefault(axis, actual) if isinstance(axis, str) else axis
            assert actual == wanted, (name, key, tensor_spec.shape, tuple(tensor.shape))


def first_val(data: FileData) -> dict[str, Any]:
    return next(iter(data.val_batches()))


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_loader_yields_the_batch_contract(name: str, fakes: dict[str, Path]) -> None:
    data = open_data(name, fakes[name])
    height, width = data.info.image_size
    batches = [*data.train_batches(0), *data.val_batches()]
    assert len(batches) == data.num_train_batches() + math.ceil(data.val_count / BATCH)
    for batch in batches:
        images, targets = batch["image"], batch["targets"]
        size = len(images)
        assert images.dtype == torch.float32 and images.shape == (size, 3, height, width)
        assert images.min() >= 0.0 and images.max() <= 1.0
        assert set(targets) == set(data.info.targets)
        for target, value in targets.items():
            assert_follows_the_contract(target, value, size, (height, width))


def test_nyuv2_batches_hold_the_files_values(fakes: dict[str, Path]) -> None:
    batch = first_val(open_data("nyuv2", fakes["nyuv2"]))
    folder = fakes["nyuv2"] / "val"
    for index in range(BATCH):
        stored = {
            kind: torch.from_numpy(np.load(folder / kind / f"{index}.npy"))
            for kind in ("image", "label", "depth", "normal")
        }
        assert torch.equal(batch["image"][index], stored["image"].permute(2, 0, 1))
        assert torch.equal(batch["targets"]["seg"][index], stored["label"].long())
        assert torch.equal(batch["targets"]["depth"][index], stored["depth"].permute(2, 0, 1))
        assert torch.equal(batch["targets"]["normal"][index], stored["normal"].permute(2, 0, 1))
    seg, depth = batch["targets"]["seg"], batch["targets"]["depth"]
    assert (seg == -1).any() and seg.max() <= 12  # the ignore label survives
    assert (depth == 0).any() and (depth > 0).any()  # and so do invalid depths
    assert (
        (batch["targets"]["normal"] != 0).any(1) == ~(batch["targets"]["normal"] == 0).all(1)
    ).all()


@pytest.mark.parametrize("classes", [7, 19])
def test_cityscapes_reads_the_label_folder_of_its_classes(
    classes: int, fakes: dict[str, Path]
) -> None:
    data = open_data("cityscapes", fakes["cityscapes"], classes=classes)
    batch = first_val(data)
    labels = np.load(fakes["cityscapes"] / "val" / f"label_{classes}" / "0.npy")
    assert torch.equal(batch["targets"]["seg"][0], torch.from_numpy(labels).long())
    assert data.info.num_classes["seg"] == classes == len(data.info.class_names["seg"])
    disparity = np.load(fakes["cityscapes"] / "val" / "depth" / "0.npy")
    assert torch.equal(batch["targets"]["depth"][0], torch.from_numpy(disparity).permute(2, 0, 1))


def test_cityscapes_copies_with_one_label_folder_are_read(tmp_path: Path) -> None:
    root = write_cityscapes(tmp_path, train=2, val=1, label_folders=("label",))
    batch = first_val(open_data("cityscapes", root))
    expected = torch.from_numpy(np.load(root / "val" / "label" / "0.npy")).long()
    assert torch.equal(batch["targets"]["seg"][0], expected)


@pytest.mark.parametrize(("split", "count"), [("valid", 2), ("test", 2)])
def test_celeba_reads_attributes_landmarks_and_partition(
    split: str, count: int, fakes: dict[str, Path]
) -> None:
    data = open_data("celeba", fakes["celeba"], val_split=split, image_size=None)
    assert (data.train_count, data.val_count) == (4, count)  # partition 0 0 0 0 1 1 2 2
    assert data.info.class_names["attr"][0] == "5_o_Clock_Shadow"
    assert data.info.image_size == (218, 178)
    batch = first_val(data)
    first = 4 if split == "valid" else 6  # the index of the split's first image
    for row in range(len(batch["image"])):
        index = first + row
        expected = [1 if (index + column) % 2 == 0 else 0 for column in range(40)]
        assert batch["targets"]["attr"][row].tolist() == expected
        assert batch["targets"]["landmarks"][row, :2].tolist() == [
            [69.0 + index, 109.0],
            [106.0 + index, 113.0],
        ]


def test_celeba_landmarks_follow_a_resize(fakes: dict[str, Path]) -> None:
    batch = first_val(open_data("celeba", fakes["celeba"], image_size=[109, 89]))
    assert batch["targets"]["landmarks"][0, 2].tolist() == pytest.approx([77 / 2, 142 / 2], abs=1)


def test_multi_mnist_overlays_left_and_right_digits(fakes: dict[str, Path]) -> None:
    """Fake digit d is the constant 20 d + 10. On the 36 px canvas the left digit covers
    0..27 and the right one 6..33, so in the 28 px image (canvas pixel = (i + 0.5) * 36 / 28)
    pixel 0 shows only the left digit, 24 only the right one, 14 the brighter of the two,
    and 27 the canvas's empty margin."""
    data = open_data("multi_mnist", fakes["multi_mnist"])
    for batch in data.val_batches():
        for image, left, right in zip(
            batch["image"], batch["targets"]["left"], batch["targets"]["right"], strict=True
        ):
            pixels = (image[0] * 255).round()
            left_value, right_value = mnist_digit(int(left))[0, 0], mnist_digit(int(right))[0, 0]
            assert pixels[0, 0] == left_value and pixels[24, 24] == right_value
            assert pixels[14, 14] == max(left_value, right_value) and pixels[27, 27] == 0
            assert pixels[0, 24] == 0 and pixels[24, 0] == 0  # corners no digit reaches
            assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    lefts = [int(label) for batch in data.val_batches() for label in batch["targets"]["left"]]
    assert lefts == [0, 1, 2, 3]  # test image i is digit i % 10, in file order


def test_multi_mnist_pairs_are_fixed_by_the_seed(fakes: dict[str, Path]) -> None:
    def rights(seed: int) -> list[int]:
        data = open_data("multi_mnist", fakes["multi_mnist"], seed=seed)
        batches = [*data.val_batches(), *data.train_batches(0)]
        return [int(label) for batch in batches for label in batch["targets"]["right"]]

    assert rights(0) == rights(0)
    assert rights(0) != rights(1)


def test_oxford_pets_gives_breed_species_and_trimap(fakes: dict[str, Path]) -> None:
    data = open_data("oxford_pets", fakes["oxford_pets"])
    batch = next(iter(data.train_batches(0)))
    assert data.info.image_size == (40, 40)
    assert data.info.class_names["seg"] == ["background", "pet", "border"]
    train_list = (fakes["oxford_pets"] / "oxford-iiit-pet/annotations/trainval.txt").read_text()
    rows = [line.split() for line in train_list.splitlines()]
    breeds = {int(breed) - 1 for _, breed, _, _ in rows}
    assert set(batch["targets"]["cls"].tolist()) <= breeds
    seg = batch["targets"]["seg"]
    assert (seg[:, 20, 20] == 1).all() and (seg[:, 0, 0] == 0).all()  # pet centre, corner
    assert (seg == 2).any()  # the border
    # One instance per photograph: the pet's pixels of the resized trimap, its species.
    inst = batch["targets"]["inst"]
    assert inst["masks"].shape == (len(seg), 1, 40, 40) and inst["masks"].dtype == torch.bool
    assert torch.equal(inst["masks"][:, 0], seg == 1)
    assert torch.equal(inst["labels"][:, 0], batch["targets"]["species"])
    assert data.info.num_classes["inst"] == 2 and "inst" in data.info.targets


def test_order_is_a_pure_function_of_seed_and_epoch(fakes: dict[str, Path]) -> None:
    data = open_data("multi_mnist", fakes["multi_mnist"], augment=JointAugmentation(hflip=0.5))

    def epoch(number: int, start: int = 0) -> list[torch.Tensor]:
        return [batch["image"] for batch in data.train_batches(number, start=start)]

    first = epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(0), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first[1:], epoch(0, start=1), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, epoch(1), strict=True))
    seen = sorted(
        int(label) for batch in data.train_batches(1) for label in batch["targets"]["left"]
    )
    assert seen == sorted(index % 10 for index in range(6))  # every sample once


def test_workers_give_the_same_batches_as_the_training_process(fakes: dict[str, Path]) -> None:
    """Augmentation seeds travel with the indices, so where a sample is loaded is irrelevant."""
    augment = JointAugmentation(scales=[1.0, 1.2, 1.5], hflip=0.5)
    inline = open_data("nyuv2", fakes["nyuv2"], image_size=32, augment=augment)
    workers = open_data("nyuv2", fakes["nyuv2"], image_size=32, augment=augment, num_workers=2)
    for ours, theirs in zip(inline.train_batches(3), workers.train_batches(3), strict=True):
        assert torch.equal(ours["image"], theirs["image"])
        for name, target in ours["targets"].items():
            assert torch.equal(target, theirs["targets"][name])


def test_augmentation_is_for_training_only_and_leaves_the_global_generator(
    fakes: dict[str, Path],
) -> None:
    augment = JointAugmentation(scales=[1.5], hflip=1.0)
    plain = open_data("nyuv2", fakes["nyuv2"], image_size=32)
    augmented = open_data("nyuv2", fakes["nyuv2"], image_size=32, augment=augment)
    assert torch.equal(first_val(plain)["image"], first_val(augmented)["image"])
    state = torch.get_rng_state()
    zoomed = next(iter(augmented.train_batches(0)))["image"]
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(zoomed, next(iter(plain.train_batches(0)))["image"])


class CountingSamples(Dataset):
    """Wraps a dataset and counts the samples read."""

    def __init__(self, samples: Dataset) -> None:
        self.samples, self.reads = samples, 0

    def __len__(self) -> int:
        return len(self.samples)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        self.reads += 1
        return self.samples[index]


def test_resuming_mid_epoch_reads_no_skipped_sample(fakes: dict[str, Path]) -> None:
    data = open_data("multi_mnist", fakes["multi_mnist"])
    counter = CountingSamples(data.train.samples)
    data.train.samples = counter
    assert len(list(data.train_batches(0, start=2))) == 1
    assert counter.reads == BATCH


def one_line_error(make: Callable[[], Any], *named: str) -> str:
    """The UserError `make` raises: one line, naming each of `named`."""
    with pytest.raises(UserError) as raised:
        make()
    message = str(raised.value)
    assert "\n" not in message
    for part in named:
        assert part in message, (part, message)
    return message


@pytest.mark.parametrize("name", list(DATASETS))
def test_missing_root_names_the_layout_and_the_source(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    message = one_line_error(lambda: open_data(name, missing), str(missing), "expected")
    assert "Get it from" in message


@pytest.mark.parametrize("name", ["nyuv2", "cityscapes"])
def test_mismatched_counts_and_shapes_are_named(name: str, tmp_path: Path) -> None:
    root = {"nyuv2": write_nyuv2, "cityscapes": write_cityscapes}[name](tmp_path, train=3, val=1)
    depth = root / "train" / "depth"
    (depth / "2.npy").unlink()
    one_line_error(lambda: open_data(name, root), str(root / "train"), "depth/: 2", "image/: 3")
    np.save(depth / "2.npy", np.load(depth / "1.npy"))
    np.save(depth / "0.npy", np.zeros((5, 5, 1), np.float32))
    one_line_error(lambda: open_data(name, root), str(depth / "0.npy"), "(5, 5, 1)", "expected")


def test_nyuv2_problems_name_the_file(tmp_path: Path) -> None:
    root = write_nyuv2(tmp_path, train=3, val=1)
    layout = "{root}/{train,val}/{image,label,depth,normal}/{i}.npy"
    split = root / "train"
    (split / "normal").rename(split / "normals")
    one_line_error(lambda: open_data("nyuv2", root), f"missing folder {split / 'normal'}", layout)
    (split / "normals").rename(split / "normal")

    depth = np.load(split / "depth" / "0.npy")
    np.save(split / "depth" / "0.npy", depth[..., 0])  # (H, W) instead of (H, W, 1)
    one_line_error(lambda: open_data("nyuv2", root), str(split / "depth/0.npy"), "(288, 384, 1)")
    np.save(split / "depth" / "0.npy", depth)

    (split / "label" / "1.npy").rename(split / "label" / "7.npy")
    one_line_error(lambda: open_data("nyuv2", root), str(split / "label"), "no 1.npy")
    (split / "label" / "7.npy").rename(split / "label" / "1.npy")

    (split / "image" / "0.npy").write_bytes(b"not an array")
    one_line_error(lambda: open_data("nyuv2", root), str(split / "image" / "0.npy"), layout)


def test_labels_outside_the_classes_are_named(tmp_path: Path) -> None:
    root = write_cityscapes(tmp_path, train=2, val=1, label_folders=("label",))
    np.save(root / "train" / "label" / "0.npy", np.full((128, 256), 18.0, np.float32))
    one_line_error(
        lambda: open_data("cityscapes", root, classes=7), str(root / "train/label/0.npy"), "0..6"
    )
    one_line_error(lambda: open_data("cityscapes", root, classes=5), "dataset.classes")


def test_a_bad_file_late_in_a_split_is_one_line_even_from_a_worker(tmp_path: Path) -> None:
    root = write_nyuv2(tmp_path, train=4, val=1, size=(32, 48))
    np.save(root / "train" / "normal" / "3.npy", np.zeros((32, 48), np.float32))
    data = open_data("nyuv2", root, num_workers=1)
    one_line_error(
        lambda: list(data.train_batches(0)), str(root / "train/normal/3.npy"), "(32, 48, 3)"
    )


def test_torchvision_datasets_missing_parts_are_named(tmp_path: Path) -> None:
    celeba = write_celeba(tmp_path / "c")
    (celeba / "celeba" / "list_landmarks_align_celeba.txt").unlink()
    one_line_error(lambda: open_data("celeba", celeba), "list_landmarks_align_celeba.txt")
    pets = write_oxford_pets(tmp_path / "p")
    for trimap in (pets / "oxford-iiit-pet/annotations/trimaps").iterdir():
        trimap.unlink()
    (pets / "oxford-iiit-pet/annotations/trimaps").rmdir()
    one_line_error(lambda: open_data("oxford_pets", pets), "annotations/trimaps/")
    mnist = write_mnist(tmp_path / "m")
    (mnist / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    one_line_error(lambda: open_data("multi_mnist", mnist), str(mnist), "MNIST/raw/")


def test_celeba_checksums_are_checked_unless_turned_off(fakes: dict[str, Path]) -> None:
    one_line_error(lambda: open_data("celeba", fakes["celeba"], check_md5=True), "check_md5=false")


def test_settings_the_data_cannot_meet_are_user_errors(fakes: dict[str, Path]) -> None:
    one_line_error(
        lambda: open_data("multi_mnist", fakes["multi_mnist"], batch_size=7), "batch_size"
    )
    one_line_error(
        lambda: open_data("oxford_pets", fakes["oxford_pets"], image_size=None), "image_size"
    )
    one_line_error(lambda: open_data("nyuv2", fakes["nyuv2"], train_size=0), "dataset.train_size")
    one_line_error(
        lambda: open_data("nyuv2", fakes["nyuv2"], image_size=[4, 4]), "dataset.image_size"
    )


@pytest.mark.slow  # a training run per dataset
@pytest.mark.parametrize("name", list(DATASETS))
def test_two_training_steps_on_each_fake(
    name: str, build_tiny_run: BuildRun, compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    """`mtlrun dataset=<name> dataset.root=<fake>` with the dataset's tasks, in process."""
    overrides = [f"dataset={name}"]
    overrides += fake_data_overrides(compose_tiny, overrides, tmp_path)
    run = build_tiny_run(tmp_path / "run", *overrides)
    assert type(run.data).__module__ + "." + type(run.data).__name__ in FAKES
    metrics = fit(run)
    assert metrics["step"] == run.data.num_train_batches() >= 2
    for task_name, task in run.tasks.items():
        assert math.isfinite(metrics[f"val/{task_name}/{task.main_metric}"])
        assert math.isfinite(metrics[f"val/{task_name}/loss"])

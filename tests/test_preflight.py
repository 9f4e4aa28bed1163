"""The first training and validation batch are checked against the batch contract, the
dataset's `DatasetInfo` and the tasks before training: every mistake a new user made with
their own data (issue 14) is one line naming the task, the key and the fix."""

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import BuildRun
from mtlrun.data import DatasetInfo
from mtlrun.errors import UserError
from mtlrun.preflight import check_batch, check_data_source
from mtlrun.tasks import Task
from mtlrun.tasks.classification import ClassificationTask
from mtlrun.tasks.depth import DepthTask
from mtlrun.tasks.detection import DetectionTask
from mtlrun.tasks.generation import GenerationTask
from mtlrun.tasks.instance import InstanceTask
from mtlrun.tasks.multilabel import MultiLabelTask
from mtlrun.tasks.segmentation import SegmentationTask

SIDE, COUNT = 16, 4
INFO = DatasetInfo(
    name="mine",
    image_size=(SIDE, SIDE),
    targets=frozenset({"cls", "seg", "depth", "gen", "attr", "det", "inst"}),
    num_classes={"cls": 5, "seg": 3, "det": 2, "attr": 3, "inst": 2},
    class_names={"attr": ["a", "b", "c"]},
)


def tasks() -> dict[str, Task]:
    shape = {"info": INFO, "in_channels": 8, "stride": 4}
    return {
        "cls": ClassificationTask("cls", **shape),
        "seg": SegmentationTask("seg", **shape),
        "depth": DepthTask("depth", **shape),
        "gen": GenerationTask("gen", **shape),
        "attr": MultiLabelTask("attr", **shape),
        "det": DetectionTask("det", **shape),
        "inst": InstanceTask("inst", **shape),
    }


def good_batch() -> dict[str, Any]:
    boxes = torch.tensor([[1.0, 1.0, 8.0, 8.0], [0.0, 0.0, 0.0, 0.0]]).expand(COUNT, 2, 4)
    masks = torch.zeros(COUNT, 2, SIDE, SIDE, dtype=torch.bool)
    masks[:, 0, 1:8, 1:8] = True
    return {
        "image": torch.rand(COUNT, 3, SIDE, SIDE),
        "targets": {
            "cls": torch.tensor([0, 1, 4, 2]),
            "seg": torch.randint(-1, 3, (COUNT, SIDE, SIDE)),
            "depth": torch.rand(COUNT, 1, SIDE, SIDE) * 5,
            "gen": torch.rand(COUNT, 3, SIDE, SIDE),
            "attr": torch.randint(0, 2, (COUNT, 3)),
            "det": {"boxes": boxes.clone(), "labels": torch.tensor([[1, -1]] * COUNT)},
            "inst": {"masks": masks, "labels": torch.tensor([[0, -1]] * COUNT)},
        },
    }


def changed(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    batch = good_batch()
    change(batch)
    return batch


def set_target(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda batch: batch["targets"].__setitem__(key, value)


def set_image(value: torch.Tensor) -> Callable[[dict[str, Any]], None]:
    return lambda batch: batch.__setitem__("image", value)


def nan_depth(batch: dict[str, Any]) -> None:
    batch["targets"]["depth"][0, 0, 3, 3] = float("nan")


def rename(batch: dict[str, Any]) -> None:
    batch["targets"]["label"] = batch["targets"].pop("cls")


def box_outside(batch: dict[str, Any]) -> None:
    batch["targets"]["det"]["boxes"][1, 0] = torch.tensor([4.0, 4.0, 20.0, 9.0])


# case -> (the mistake, what the one line must say: its subject and its fix)
CASES: dict[str, tuple[Callable[[dict[str, Any]], None], list[str]]] = {
    "grey images": (
        set_image(torch.rand(COUNT, 1, SIDE, SIDE)),
        ["'image'", "1 channel", "expand"],
    ),
    "HxWxC images": (set_image(torch.rand(COUNT, SIDE, SIDE, 3)), ["channels last", "permute"]),
    "uint8 images": (
        set_image(torch.randint(0, 256, (COUNT, 3, SIDE, SIDE), dtype=torch.uint8)),
        ["uint8", "/ 255"],
    ),
    "0..255 float images": (set_image(torch.rand(COUNT, 3, SIDE, SIDE) * 255), ["[0, 1]", "255"]),
    "no batch axis": (set_image(torch.rand(3, SIDE, SIDE)), ["[B, 3, H, W]"]),
    "empty images": (set_image(torch.rand(0, 3, SIDE, SIDE)), ["empty"]),
    "images of another size": (set_image(torch.rand(COUNT, 3, 20, 20)), ["20x20", "image_size"]),
    "wrong target key": (rename, ["task 'cls'", "no target 'cls'", "label", "tasks.cls.target"]),
    "labels >= num_classes": (
        set_target("cls", torch.tensor([0, 13, 2, 1])),
        ["task 'cls'", "13", "0..4", "num_classes['cls']"],
    ),
    "negative class labels": (set_target("cls", torch.tensor([0, -1, 2, 1])), ["-1", "0..4"]),
    "float class labels": (
        set_target("cls", torch.tensor([0.0, 1.0, 2.0, 3.0])),
        ["floats", ".long()"],
    ),
    "labels as int32": (
        set_target("cls", torch.tensor([0, 1, 2, 3], dtype=torch.int32)),
        ["int32", "torch.int64"],
    ),
    "labels not a tensor": (set_target("cls", [0, 1, 2, 3]), ["must be a tensor", "list"]),
    "1-channel gen target": (
        set_target("gen", torch.rand(COUNT, 1, SIDE, SIDE)),
        ["task 'gen'", "(4, 1, 16, 16)", "[B, 3, H, W]"],
    ),
    "gen target outside [0, 1]": (
        set_target("gen", torch.rand(COUNT, 3, SIDE, SIDE) * 2 - 1),
        ["task 'gen'", "outside [0, 1]"],
    ),
    "gen target of another size": (
        set_target("gen", torch.rand(COUNT, 3, 8, 8)),
        ["task 'gen'", "H=16"],
    ),
    "seg mask not resized with the image": (
        set_target("seg", torch.zeros(COUNT, 28, 28, dtype=torch.long)),
        ["task 'seg'", "(4, 28, 28)", "resize it with the image"],
    ),
    "seg classes beyond num_classes": (
        set_target("seg", torch.full((COUNT, SIDE, SIDE), 7)),
        ["task 'seg'", "7", "or -1, ignored"],
    ),
    "NaN depth": (nan_depth, ["task 'depth'", "NaN", "0 (invalid)"]),
    "depth without its channel axis": (
        set_target("depth", torch.rand(COUNT, SIDE, SIDE)),
        ["[B, 1, H, W]"],
    ),
    "attributes other than 0/1": (
        set_target("attr", torch.full((COUNT, 3), 2)),
        ["task 'attr'", "0/1"],
    ),
    "box outside the image": (box_outside, ["task 'det'", "outside the 16x16 image"]),
    "instance masks as uint8": (
        set_target(
            "inst",
            {
                "masks": torch.zeros(COUNT, 2, SIDE, SIDE, dtype=torch.uint8),
                "labels": torch.tensor([[0, -1]] * COUNT),
            },
        ),
        ["task 'inst'", "['masks']", "torch.bool"],
    ),
    "instance labels beyond num_classes": (
        set_target(
            "inst",
            {
                "masks": torch.zeros(COUNT, 2, SIDE, SIDE, dtype=torch.bool),
                "labels": torch.tensor([[0, 5]] * COUNT),
            },
        ),
        ["task 'inst'", "0..1", "or -1"],
    ),
    "fewer instance labels than masks": (
        set_target(
            "inst",
            {
                "masks": torch.zeros(COUNT, 3, SIDE, SIDE, dtype=torch.bool),
                "labels": torch.tensor([[0, -1]] * COUNT),
            },
        ),
        ["task 'inst'", "3 mask slots but 2 labels"],
    ),
    "boxes without labels": (
        set_target("det", {"boxes": torch.zeros(COUNT, 2, 4)}),
        ["task 'det'", "labels"],
    ),
}


def test_a_batch_that_keeps_the_contract_passes() -> None:
    check_batch(good_batch(), INFO, tasks(), "the first training batch")


@pytest.mark.parametrize("case", list(CASES))
def test_each_mistake_is_one_line_naming_the_key_and_the_fix(case: str) -> None:
    change, said = CASES[case]
    with pytest.raises(UserError) as caught:
        check_batch(changed(change), INFO, tasks(), "the first training batch")
    message = str(caught.value)
    assert "\n" not in message
    for part in said:
        assert part in message, f"{part!r} not in: {message}"


def test_a_target_of_the_users_own_name_is_checked_as_its_task_type() -> None:
    info = DatasetInfo("mine", (SIDE, SIDE), frozenset({"digit"}), {"digit": 10})
    task = ClassificationTask("digit", info, in_channels=8, stride=4, target="digit")
    batch = {"image": torch.rand(2, 3, SIDE, SIDE), "targets": {"digit": torch.tensor([1.0, 2.0])}}
    with pytest.raises(UserError, match=r"task 'digit': target 'digit'.*\.long\(\)"):
        check_batch(batch, info, {"digit": task}, "the first training batch")


class Source:
    """A data source of one batch per split, for the whole-source checks."""

    def __init__(self, train: list[Any], val: list[Any]) -> None:
        self.info, self.train, self.val = INFO, train, val

    def num_train_batches(self) -> int:
        return len(self.train)

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        yield from self.train[start:]

    def val_batches(self) -> Iterator[Any]:
        yield from self.val


def test_the_validation_batch_is_checked_before_training_too() -> None:
    bad = changed(set_target("cls", torch.tensor([0, 13, 2, 1])))
    with pytest.raises(UserError, match="the first validation batch"):
        check_data_source(Source([good_batch()], [bad]), tasks())


def test_a_source_without_batches_or_methods_is_one_line() -> None:
    with pytest.raises(UserError, match="no training batches"):
        check_data_source(Source([], [good_batch()]), tasks())
    source = Source([good_batch()], [good_batch()])
    source.val_batches = None  # type: ignore[assignment,method-assign]
    with pytest.raises(UserError, match=r"Source lacks val_batches\(\); a data source needs"):
        check_data_source(source, tasks())
    del source.info
    with pytest.raises(UserError, match=re.escape("lacks val_batches(), info (a DatasetInfo)")):
        check_data_source(source, tasks())


def test_build_checks_the_first_batches(build_tiny_run: BuildRun, tmp_path: Path) -> None:
    """Through the real config: a class task pointed at the shapes dataset's masks."""
    with pytest.raises(UserError, match=r"task 'cls': target 'seg' .* shape \(8, 32, 32\)"):
        build_tiny_run(tmp_path, "tasks=[cls]", "tasks.cls.target=seg")

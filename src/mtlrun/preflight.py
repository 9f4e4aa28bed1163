"""Check a dataset against the batch contract before training: its methods, then its first
training and validation batch against `mtlrun.data.CONTRACT`, its own `DatasetInfo` and the
tasks that read it. A problem is one line naming the task, the key and the fix, instead of a
PyTorch traceback (some only after a whole epoch).

Each target is checked as the contract row of the task type that reads it (a `cls` task's
target is a class index whatever its name, `tasks.cls.target=digit`), or, for a task type
of the user's own, as the row of the target's name, if there is one.
"""

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from mtlrun.data import CONTRACT, DatasetInfo
from mtlrun.data.contract import TargetSpec, TensorSpec
from mtlrun.errors import UserError
from mtlrun.tasks import Task

METHODS = ("num_train_batches", "train_batches", "val_batches")
# task type -> the contract row its target follows when its name is not a row of its own
ROW_OF_TASK = {
    "ClassificationTask": "cls",
    "SegmentationTask": "seg",
    "DepthTask": "depth",
    "NormalTask": "normal",
    "GenerationTask": "gen",
    "GANTask": "gen",
    "MultiLabelTask": "attr",
    "LandmarksTask": "landmarks",
    "DetectionTask": "det",
    "InstanceTask": "inst",
}


def check_data_source(data: Any, tasks: dict[str, Task]) -> None:
    """Stop before training, in one line, when the dataset lacks a method or its first
    training or validation batch breaks the contract (see the module docstring)."""
    kind = type(data).__name__
    lacks = [f"{name}()" for name in METHODS if not callable(getattr(data, name, None))]
    if not isinstance(getattr(data, "info", None), DatasetInfo):
        lacks.append("info (a DatasetInfo)")
    if lacks:
        raise UserError(
            f"dataset: {kind} lacks {', '.join(lacks)}; a data source needs `info`, "
            "num_train_batches(), train_batches(epoch, start=0) and val_batches() (see "
            "mtlrun.data.DataSource)"
        )
    for split, batches in (("training", data.train_batches(0)), ("validation", data.val_batches())):
        check_batch(first(batches, kind, split), data.info, tasks, f"the first {split} batch")


def first(batches: Iterator[Any], kind: str, split: str) -> Any:
    """The first batch of an iterator, or one line when there is none."""
    try:
        batch = next(iter(batches))
    except StopIteration:
        raise UserError(
            f"dataset: {kind} gives no {split} batches; is the split empty, or smaller than "
            "trainer.batch_size?"
        ) from None
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # let a loader's worker processes go now
    return batch


def check_batch(batch: Any, info: DatasetInfo, tasks: dict[str, Task], where: str) -> None:
    """Check one batch: its layout, its images, and each task's target."""
    if not isinstance(batch, dict) or not {"image", "targets"} <= set(batch):
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise UserError(
            f"dataset: {where} must be a dict {{'image': ..., 'targets': {{...}}}}, got {got}"
        )
    size = check_images(batch["image"], info, where)
    targets = batch["targets"]
    if not isinstance(targets, dict):
        raise UserError(
            f"dataset: {where}'s 'targets' must be a dict {{target name: tensor}}, got "
            f"{type(targets).__name__}"
        )
    for name, task in tasks.items():
        if task.target not in targets:
            raise UserError(
                f"task '{name}': {where} has no target '{task.target}' (it has: "
                f"{', '.join(sorted(map(str, targets))) or 'none'}); set tasks.{name}.target to "
                "one of those, or give the batch that key"
            )
        row = ROW_OF_TASK.get(type(task).__name__) or (
            task.target if task.target in CONTRACT else None
        )
        if row is not None:
            context = f"task '{name}': target '{task.target}' in {where}"
            check_target(targets[task.target], CONTRACT[row], size, context)
            check_values(targets[task.target], row, info, task, context)


def check_images(images: Any, info: DatasetInfo, where: str) -> tuple[int, int, int]:
    """The images are FloatTensor[B, 3, H, W] in [0, 1] at `info.image_size`; returns
    (B, H, W)."""
    prefix = f"dataset: {where}'s 'image'"
    if not isinstance(images, Tensor):
        raise UserError(f"{prefix} must be a torch tensor, got {type(images).__name__}")
    shape = tuple(images.shape)
    if images.ndim != 4:
        raise UserError(f"{prefix} has shape {shape}; the contract is [B, 3, H, W] (a batch axis)")
    if shape[1] != 3 and shape[3] in (1, 3):
        raise UserError(
            f"{prefix} has shape {shape}, channels last; give [B, 3, H, W]: "
            "images.permute(0, 3, 1, 2)"
        )
    if shape[1] == 1:
        raise UserError(
            f"{prefix} has 1 channel (grey); the contract is 3: images.expand(-1, 3, -1, -1)"
        )
    if shape[1] != 3:
        raise UserError(f"{prefix} has {shape[1]} channels; the contract is 3 (RGB)")
    if shape[0] == 0 or images.numel() == 0:
        raise UserError(f"{prefix} is empty (shape {shape}); every batch needs images")
    if images.dtype == torch.uint8:
        raise UserError(f"{prefix} is uint8; give float32 in [0, 1]: images.float() / 255")
    # The model's dtype: float32, unless a caller built it in another default (float64).
    wanted = torch.get_default_dtype()
    if images.dtype != wanted:
        raise UserError(f"{prefix} is {images.dtype}; give {wanted} in [0, 1]: images.float()")
    if tuple(shape[2:]) != tuple(info.image_size):
        raise UserError(
            f"{prefix} is {shape[2]}x{shape[3]} but the dataset's info.image_size is "
            f"{info.image_size[0]}x{info.image_size[1]}; make them agree"
        )
    # NaN pixels are left to `trainer.nonfinite` (skip or stop at the step they reach).
    finite = images[torch.isfinite(images)]
    low, high = (finite.min().item(), finite.max().item()) if finite.numel() else (0.0, 0.0)
    if low < 0.0 or high > 1.0:
        raise UserError(
            f"{prefix} has values in [{low:g}, {high:g}]; the contract is [0, 1] (divide "
            "0..255 values by 255)"
        )
    return shape[0], shape[2], shape[3]


def check_target(value: Any, spec: TargetSpec, size: tuple[int, int, int], context: str) -> None:
    """The target's tensors have the contract's dtypes and shapes for this batch."""
    if isinstance(spec.tensors, dict):
        if not isinstance(value, dict) or set(value) != set(spec.tensors):
            got = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise UserError(f"{context} must be {spec.text()}, got {got}")
        for key, part in spec.tensors.items():
            check_tensor(value[key], part, size, f"{context}['{key}']", spec.text())
    else:
        check_tensor(value, spec.tensors, size, context, spec.text())


def check_tensor(
    value: Any, spec: TensorSpec, size: tuple[int, int, int], context: str, layout: str
) -> None:
    batch, height, width = size
    if not isinstance(value, Tensor):
        raise UserError(f"{context} must be a tensor {layout}, got {type(value).__name__}")
    if spec.dtype == torch.int64 and value.is_floating_point():
        raise UserError(f"{context} holds floats ({value.dtype}); class labels are int64: .long()")
    wanted = torch.get_default_dtype() if spec.dtype == torch.float32 else spec.dtype
    if value.dtype != wanted:
        raise UserError(f"{context} is {value.dtype}; the contract is {layout}: .to({wanted})")
    expected = (batch, *(height if s == "H" else width if s == "W" else s for s in spec.shape))
    fixed = [isinstance(s, int) for s in expected]
    shape = tuple(value.shape)
    if len(shape) != len(expected) or any(
        f and s != e for f, s, e in zip(fixed, shape, expected, strict=True)
    ):
        hint = " (resize it with the image)" if "H" in spec.shape else ""
        raise UserError(
            f"{context} has shape {shape}; the contract is {layout} with B={batch}, H={height}, "
            f"W={width}{hint}"
        )


def check_values(value: Any, row: str, info: DatasetInfo, task: Task, context: str) -> None:
    """Class labels within the dataset's classes, finite depth, 0/1 attributes, boxes inside
    the image, one label per instance mask."""
    kind = CONTRACT[row].kind
    if kind in ("classification", "segmentation", "detection", "instances"):
        padded = kind in ("detection", "instances")
        labels = value["labels"] if padded else value
        allowed = -1 if padded else getattr(task, "ignore_index", None)
        check_labels(labels, info, task, allowed, context)
    checks: dict[str, Callable[[], tuple[bool, str]]] = {
        "depth": lambda: (bool(torch.isfinite(value).all()), "NaN or inf; mark them 0 (invalid)"),
        "normals": lambda: (bool(torch.isfinite(value).all()), "NaN or inf; mark them all-zero"),
        "generation": lambda: (  # NaN, as in the images, is left to trainer.nonfinite
            not bool(((value < 0) | (value > 1)).any()),
            "values outside [0, 1], the images' range",
        ),
        "attributes": lambda: (bool(((value == 0) | (value == 1)).all()), "values other than 0/1"),
        "detection": lambda: boxes_inside(value, info),
        "instances": lambda: (
            value["masks"].shape[1] == value["labels"].shape[1],
            f"{value['masks'].shape[1]} mask slots but {value['labels'].shape[1]} labels; "
            "give one label per mask (-1 for padding)",
        ),
    }
    check = checks.get(kind)
    if check is not None:
        fine, problem = check()
        if not fine:
            raise UserError(f"{context} has {problem}")


def check_labels(
    labels: Tensor, info: DatasetInfo, task: Task, allowed: int | None, context: str
) -> None:
    classes = info.num_classes.get(task.target)
    if classes is None:
        return  # the task has already said it needs classes
    valid = (labels >= 0) & (labels < classes)
    if allowed is not None:
        valid |= labels == allowed
    if not bool(valid.all()):
        wrong = labels[~valid]
        also = f" (or {allowed}, ignored)" if allowed is not None else ""
        raise UserError(
            f"{context} has labels from {int(wrong.min())} to {int(wrong.max())} outside "
            f"0..{classes - 1}{also}: info.num_classes['{task.target}'] is {classes}; raise "
            "it or map the labels to 0..num_classes-1"
        )


def boxes_inside(value: dict[str, Tensor], info: DatasetInfo) -> tuple[bool, str]:
    boxes, real = value["boxes"], value["labels"] >= 0
    height, width = info.image_size
    x1, y1, x2, y2 = boxes[real].unbind(-1) if real.any() else (torch.zeros(0),) * 4
    inside = (x1 >= 0) & (y1 >= 0) & (x2 <= width) & (y2 <= height) & (x1 < x2) & (y1 < y2)
    return bool(inside.all()), (
        f"boxes outside the {width}x{height} image or with x2 <= x1 / y2 <= y1; boxes are "
        "(x1, y1, x2, y2) in pixels"
    )

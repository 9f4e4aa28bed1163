"""The batch contract, written once: the table `CONTRACT` below.

Every dataset yields `{"image": FloatTensor[B, 3, H, W] in [0, 1], "targets": {...}}`, each
target named by a task's `target:` and laid out as its row here says. The docs
(`help(mtlrun.data)`, `describe()`) and the tests read this table; a new target name means a
new row.
"""

import textwrap
from dataclasses import dataclass

import torch

TENSOR_NAMES = {torch.float32: "FloatTensor", torch.int64: "LongTensor", torch.bool: "BoolTensor"}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a batch, without its batch axis.

    Attributes:
        dtype: its dtype.
        shape: its sizes after the batch axis: ints are fixed, "H" and "W" are the image's
            height and width, other letters a size of the dataset's own (A attributes,
            K landmarks, M box or instance slots).
    """

    dtype: torch.dtype
    shape: tuple[int | str, ...]

    def text(self) -> str:
        """E.g. `LongTensor[B, H, W]`."""
        return f"{TENSOR_NAMES[self.dtype]}[{', '.join(map(str, ('B', *self.shape)))}]"


@dataclass(frozen=True)
class TargetSpec:
    """One target of the batch: a tensor, or a dict of tensors (detection), and what its
    values mean."""

    kind: str
    tensors: TensorSpec | dict[str, TensorSpec]
    meaning: str

    def text(self) -> str:
        if isinstance(self.tensors, TensorSpec):
            return self.tensors.text()
        parts = (f'"{key}": {spec.text()}' for key, spec in self.tensors.items())
        return "{" + ", ".join(parts) + "}"


_CLASS_INDEX = TensorSpec(torch.int64, ())

# target name -> its layout in every batch that carries it
CONTRACT: dict[str, TargetSpec] = {
    "cls": TargetSpec("classification", _CLASS_INDEX, "class index"),
    "species": TargetSpec("classification", _CLASS_INDEX, "class index"),
    "left": TargetSpec("classification", _CLASS_INDEX, "class index"),
    "right": TargetSpec("classification", _CLASS_INDEX, "class index"),
    "seg": TargetSpec(
        "segmentation", TensorSpec(torch.int64, ("H", "W")), "class index, -1 = ignore"
    ),
    "depth": TargetSpec(
        "depth", TensorSpec(torch.float32, (1, "H", "W")), "depth, 0 = invalid pixel"
    ),
    "normal": TargetSpec(
        "normals",
        TensorSpec(torch.float32, (3, "H", "W")),
        "unit vectors, all-zero = invalid pixel",
    ),
    "gen": TargetSpec(
        "generation", TensorSpec(torch.float32, (3, "H", "W")), "the image to reconstruct"
    ),
    "det": TargetSpec(
        "detection",
        {"boxes": TensorSpec(torch.float32, ("M", 4)), "labels": TensorSpec(torch.int64, ("M",))},
        "boxes (x1, y1, x2, y2) in pixels; an image with fewer than M objects is padded "
        "with label -1 and an all-zero box (padding is masked by `labels >= 0`)",
    ),
    "inst": TargetSpec(
        "instances",
        {
            "masks": TensorSpec(torch.bool, ("M", "H", "W")),
            "labels": TensorSpec(torch.int64, ("M",)),
        },
        "each object's own (visible) pixels as one mask, with its class; an image with fewer "
        "than M objects is padded with label -1 and an empty mask (padding is masked by "
        "`labels >= 0`; a real label with an empty mask, e.g. an object cropped away, counts "
        "as padding too)",
    ),
    "attr": TargetSpec("attributes", TensorSpec(torch.int64, ("A",)), "0/1 per attribute"),
    "landmarks": TargetSpec(
        "landmarks", TensorSpec(torch.float32, ("K", 2)), "(x, y) of each point in pixels"
    ),
}


def describe() -> str:
    """The targets' rows of the contract as plain text: name, kind, layout, meaning."""
    lines = []
    for name, spec in CONTRACT.items():
        lines.append(f"    {name:<10} {spec.kind:<15} {spec.text()}")
        lines += textwrap.wrap(
            spec.meaning, 88, initial_indent=" " * 15, subsequent_indent=" " * 15
        )
    return "\n".join(lines)

"""Head parts that keep *where* things are in the feature map, for tasks whose answer
depends on position (which digit is on the left, where the eyes are).

Pooling a feature map to one vector throws position away: a `cls` head on pooled features
cannot tell the left digit of a MultiMNIST image from the right one. `CheckedFlatten` keeps
every cell (the head is then sized for one input size, checked with a one-line error) and
`SoftArgmax` turns per-point heatmaps into coordinates.
"""

import math

import torch
from torch import Tensor, nn

from mtlrun.data import DatasetInfo
from mtlrun.errors import UserError

POOLS = ("avg", "flatten")
LANDMARK_POOLS = ("softargmax", "flatten", "avg")


def feature_size(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The (height, width) of a backbone's features for an image of `image_size`: the image
    divided by the stride, rounded up, as padded stride-2 convolutions give."""
    height, width = image_size
    return math.ceil(height / stride), math.ceil(width / stride)


class CheckedFlatten(nn.Module):
    """Flatten [B, C, h, w] features to [B, C * h * w], refusing any other (h, w) than the one
    the next layer was sized for, in one line naming the owner and the fix.

    Modules holding one are `fixed_input_size`: `build` runs one image of the dataset's size
    through the model before training, so a mismatch stops the run there.

    Args:
        size: the (h, w) expected.
        owner: who sized it, for the message (e.g. "tasks.left (pool=flatten)").
        fix: what to change, for the message.
    """

    fixed_input_size = True

    def __init__(self, size: tuple[int, int], owner: str, fix: str) -> None:
        super().__init__()
        self.size, self.owner, self.fix = tuple(size), owner, fix

    def forward(self, features: Tensor) -> Tensor:
        if tuple(features.shape[-2:]) != self.size:
            height, width = features.shape[-2:]
            raise UserError(
                f"{self.owner} is sized for {self.size[0]}x{self.size[1]} features but got "
                f"{height}x{width}; {self.fix}"
            )
        return features.flatten(1)


class SoftArgmax(nn.Module):
    """[B, K, h, w] heatmaps -> [B, K, 2] expected (x, y) under a softmax over each map, as
    fractions of the width and height (cell centres at (j + 0.5) / w); differentiable, so a
    coordinate loss trains the heatmaps (Nibali et al., "Numerical Coordinate Regression with
    Convolutional Neural Networks", 2018)."""

    def forward(self, heatmaps: Tensor) -> Tensor:
        height, width = heatmaps.shape[-2:]
        weights = heatmaps.float().flatten(2).softmax(dim=-1).view_as(heatmaps)
        xs = (torch.arange(width, device=heatmaps.device, dtype=weights.dtype) + 0.5) / width
        ys = (torch.arange(height, device=heatmaps.device, dtype=weights.dtype) + 0.5) / height
        x = (weights.sum(dim=-2) * xs).sum(dim=-1)
        y = (weights.sum(dim=-1) * ys).sum(dim=-1)
        return torch.stack([x, y], dim=-1)


def class_head_input(
    task: str, pool: str, info: DatasetInfo, in_channels: int, stride: int
) -> tuple[list[nn.Module], int]:
    """The first layers of a head that reads one vector per image, and that vector's width:
    `avg` pools the features (any input size), `flatten` keeps every cell (one input size,
    the dataset's `image_size` at the backbone's stride)."""
    if pool == "avg":
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten()], in_channels
    if pool != "flatten":
        raise UserError(f"tasks.{task}.pool={pool} is unknown; choose from: {', '.join(POOLS)}")
    height, width = feature_size(info.image_size, stride)
    flatten = CheckedFlatten(
        (height, width),
        f"tasks.{task} (pool=flatten, for {info.image_size[0]}x{info.image_size[1]} images "
        f"at stride {stride})",
        f"use tasks.{task}.pool=avg, or a backbone whose features are the image size / stride",
    )
    return [flatten], in_channels * height * width


def landmark_head(
    task: str, pool: str, info: DatasetInfo, in_channels: int, stride: int, hidden: int, points: int
) -> nn.Sequential:
    """A head mapping features to [B, points, 2] (x, y) fractions of the image's width and
    height: `softargmax` (a heatmap per point, any input size), `flatten` (every cell into an
    MLP, one input size) or `avg` (pooled features into an MLP, which cannot localise)."""
    if pool not in LANDMARK_POOLS:
        raise UserError(
            f"tasks.{task}.pool={pool} is unknown; choose from: {', '.join(LANDMARK_POOLS)}"
        )
    if pool == "softargmax":
        layers: list[nn.Module] = []
        if hidden > 0:
            layers += [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(hidden if hidden > 0 else in_channels, points, 1), SoftArgmax()]
        return nn.Sequential(*layers)
    layers, width = class_head_input(task, pool, info, in_channels, stride)
    if hidden > 0:
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
    layers += [nn.Linear(hidden if hidden > 0 else width, 2 * points), nn.Unflatten(1, (points, 2))]
    return nn.Sequential(*layers)


def has_fixed_input_size(model: nn.Module) -> bool:
    """Whether any part of `model` accepts only one input size."""
    return any(getattr(module, "fixed_input_size", False) for module in model.modules())

"""Landmark heads that localise, checked on images whose points are functions of the pixels:
two coloured squares at random places, the points their centres. A head on pooled features
knows which colours are there, not where, so it cannot beat guessing the mean position."""

import pytest
import torch
from torch import Tensor

from mtlrun.data import DatasetInfo
from mtlrun.errors import UserError
from mtlrun.models.backbones import ConvNet
from mtlrun.tasks.landmarks import LandmarksTask

SIDE, SQUARE = 32, 4
INFO = DatasetInfo(
    name="squares",
    image_size=(SIDE, SIDE),
    targets=frozenset({"landmarks"}),
    class_names={"landmarks": ["red", "green"]},
)


def squares(count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`count` black images with a red and a green square, and their centres (x, y) in px."""
    images = torch.zeros(count, 3, SIDE, SIDE)
    corners = torch.randint(0, SIDE - SQUARE + 1, (count, 2, 2), generator=generator)
    for image, points in zip(images, corners, strict=True):
        for channel, (x, y) in enumerate(points.tolist()):
            image[channel, y : y + SQUARE, x : x + SQUARE] = 1.0
    return images, corners.float() + SQUARE / 2


def trained_error(pool: str, steps: int = 150) -> float:
    """Mean pixel error on new images after training a small conv net with this head."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    backbone = ConvNet(channels=[16, 32], blocks_per_stage=1)
    task = LandmarksTask(
        "landmarks", INFO, backbone.out_channels, backbone.stride, hidden=32, pool=pool
    )
    model = torch.nn.Sequential(backbone, task.head)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        images, points = squares(32, generator)
        loss = task.loss(model(images), points)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    images, points = squares(200, generator)
    with torch.no_grad():
        task.reset_metrics()
        task.update_metrics(model(images), points)
    return task.compute_metrics()["error_px"]


@pytest.mark.slow
def test_softargmax_and_flatten_localise_where_pooling_cannot() -> None:
    """Guessing the centre of the image misses a uniformly placed point by ~10 px."""
    assert trained_error("softargmax") < 1.0  # measured 0.13 px
    assert trained_error("flatten") < 4.0  # 2.2 px
    assert trained_error("avg") > 6.0  # 11.3 px


def test_softargmax_gives_the_expected_position_of_each_heatmap() -> None:
    task = LandmarksTask("landmarks", INFO, in_channels=4, stride=8, hidden=0)
    head = task.head
    conv = head[0]
    with torch.no_grad():  # heatmap k = 100 x input channel k: a sharp peak where it is 1
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0] = conv.weight[1, 1] = 100.0
    features = torch.zeros(1, 4, 4, 4)
    features[0, 0, 1, 3] = 1.0  # point 0 at row 1, column 3 of a 4 x 4 map
    features[0, 1, 2, 0] = 1.0  # point 1 at row 2, column 0
    output = head(features)
    assert output.shape == (1, 2, 2)
    assert output.flatten().tolist() == pytest.approx(
        [3.5 / 4, 1.5 / 4, 0.5 / 4, 2.5 / 4], abs=1e-3
    )
    assert head(torch.zeros(3, 4, 9, 7)).shape == (3, 2, 2)  # any feature size


def test_unknown_landmark_pool_is_one_line() -> None:
    with pytest.raises(UserError, match=r"tasks\.landmarks\.pool=max.*softargmax, flatten, avg"):
        LandmarksTask("landmarks", INFO, in_channels=4, stride=8, pool="max")

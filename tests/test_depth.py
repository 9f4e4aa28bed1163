"""The `depth` task: head shapes, L1 loss and pooled error metrics over valid pixels."""

import pytest
import torch
from torch import nn

from mtlrun.data import DatasetInfo
from mtlrun.data.shapes import ShapesData
from mtlrun.errors import UserError
from mtlrun.models.backbones import ConvNet, ResNet18
from mtlrun.tasks.depth import DepthTask
from mtlrun.tasks.pictures import colour_map

INFO = DatasetInfo(name="tiny", image_size=(32, 32), targets=frozenset({"depth"}))


@pytest.mark.parametrize("backbone_type", [ConvNet, ResNet18], ids=["cnn", "resnet18"])
def test_head_predicts_at_input_resolution(backbone_type: type[nn.Module]) -> None:
    backbone = backbone_type()
    task = DepthTask("depth", INFO, backbone.out_channels, backbone.stride)
    model = nn.Sequential(backbone, task.head).to(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert model(images).shape == (2, 1, 32, 32)


def _task() -> DepthTask:
    return DepthTask("depth", INFO, in_channels=8, stride=2)


# Two 1x2x2 maps; 0 in the target marks an invalid pixel, whatever is predicted there.
PREDICTED = torch.tensor([[[[2.0, 5.0], [1.0, 9.0]]], [[[4.0, 4.0], [7.0, 100.0]]]])
TARGET = torch.tensor([[[[1.0, 4.0], [2.0, 0.0]]], [[[4.0, 8.0], [0.0, 0.0]]]])
# valid pixels: |err| = 1, 1, 1 | 0, 4      rel = 1, 1/4, 1/2 | 0, 1/2


def test_loss_is_l1_over_valid_pixels() -> None:
    predicted = PREDICTED.clone().requires_grad_(True)
    loss = _task().loss(predicted, TARGET)
    assert loss.item() == pytest.approx((1 + 1 + 1 + 0 + 4) / 5)
    loss.backward()
    assert (predicted.grad[TARGET == 0] == 0).all()


def test_loss_without_valid_pixels_is_zero() -> None:
    loss = _task().loss(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert loss.item() == 0.0


def test_first_training_batch_calibrates_the_offset_once() -> None:
    task = _task()
    features = torch.zeros(2, 8, 1, 1)
    task.loss(task.head(features), TARGET)
    assert task.head.offset.item() == pytest.approx((1 + 4 + 2 + 4 + 8) / 5)
    task.loss(task.head(features), TARGET * 10)  # later batches leave it alone
    assert task.head.offset.item() == pytest.approx(19 / 5)
    restored = _task()
    restored.head.load_state_dict(task.head.state_dict())  # a resumed run keeps it
    assert restored.head.calibrated and restored.head.offset.item() == pytest.approx(19 / 5)
    evaluated = _task()
    evaluated.head.eval()
    evaluated.loss(evaluated.head(features), TARGET)  # evaluation never calibrates
    assert not evaluated.head.calibrated


def test_metrics_pool_pixels_over_batches() -> None:
    task = _task()
    task.reset_metrics()
    task.update_metrics(PREDICTED[:1], TARGET[:1])
    task.update_metrics(PREDICTED[1:], TARGET[1:])
    metrics = task.compute_metrics()
    # Pixel-wise over the whole set (5 valid pixels), not the mean of per-batch means
    # (which would be (1 + 2) / 2 = 1.5 for abs_err).
    assert metrics["abs_err"] == pytest.approx(7 / 5)
    assert metrics["rel_err"] == pytest.approx((1 + 0.25 + 0.5 + 0 + 0.5) / 5)
    task.reset_metrics()
    task.update_metrics(TARGET, TARGET)
    assert task.compute_metrics() == {"abs_err": 0.0, "rel_err": 0.0}


def test_metric_directions() -> None:
    task = _task()
    assert set(task.metric_directions) == {"abs_err", "rel_err"}
    assert all(way == "min" for way in task.metric_directions.values())
    assert task.main_metric == "abs_err"


def test_depth_on_dataset_without_depth_is_one_clear_line() -> None:
    info = DatasetInfo(name="flowers", image_size=(32, 32), targets=frozenset({"cls"}))
    with pytest.raises(UserError) as error:
        DepthTask("depth", info, 8, 4)
    assert "\n" not in str(error.value)
    assert "'depth'" in str(error.value) and "'flowers'" in str(error.value)


def test_colour_map_spans_the_ramp() -> None:
    values = torch.linspace(0, 1, 9).view(1, 1, 3, 3)
    colours = colour_map(values, 0.0, 1.0)
    assert colours.shape == (1, 3, 3, 3)
    assert colours.min() >= 0 and colours.max() <= 1
    low, high = colours[0, :, 0, 0], colours[0, :, 2, 2]
    assert low[2] > low[0] and high[0] > high[2]  # blue-ish at the low end, red-ish at the top
    torch.testing.assert_close(colour_map(values * 10 + 5, 5.0, 15.0), colours)


def test_pictures() -> None:
    data = ShapesData(val_size=3, batch_size=3)
    batch = next(data.val_batches())
    target = batch["targets"]["depth"].clone()
    target[:, :, :4] = 0  # some invalid pixels
    pictures = _task().pictures(batch["image"], torch.rand(3, 1, 32, 32) * 10, target)
    picture = pictures["truth_vs_prediction"]
    # 32 px tiles enlarged 3x, 1 px padding; a 16 px title band above, a 26 px colour bar below
    assert picture.shape == (3, 16 + 3 * 97 + 1 + 26, 3 * 97 + 1)
    assert picture.min() >= 0 and picture.max() <= 1
    bar = picture[:, -26:]
    low, high = bar[:, 8, 71], bar[:, 8, -72]  # the ramp's two ends
    assert low[2] > low[0] and high[0] > high[2]  # blue (near) ... red (far)

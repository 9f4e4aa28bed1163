"""The `normal` task: unit outputs at input resolution, 1 - cos loss over valid pixels, and
angle metrics checked on hand-computed cases."""

import math

import pytest
import torch
from torch import nn

from mtlrun.data import DatasetInfo
from mtlrun.models.backbones import ConvNet, ResNet
from mtlrun.tasks.metrics import Histogram
from mtlrun.tasks.normal import AXES, NormalTask

INFO = DatasetInfo(name="tiny", image_size=(16, 16), targets=frozenset({"normal"}))


def task() -> NormalTask:
    return NormalTask("normal", INFO, in_channels=8, stride=2)


def tilted(degrees: float) -> list[float]:
    """A unit normal at `degrees` from +z, tilted towards +x."""
    radians = math.radians(degrees)
    return [math.sin(radians), 0.0, math.cos(radians)]


# One image of 1 x 6 pixels: the target faces +z everywhere but at the last pixel, which is
# invalid (all-zero); the prediction is tilted by these angles (the last one is ignored).
ANGLES = [0.0, 10.0, 20.0, 25.0, 45.0, 90.0]
TARGET = torch.tensor([[0.0, 0.0, 1.0]] * 5 + [[0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 6)
PREDICTED = torch.tensor([tilted(angle) for angle in ANGLES]).T.reshape(1, 3, 1, 6)
VALID = ANGLES[:5]


def test_metrics_on_a_hand_computed_case() -> None:
    normal = task()
    normal.update_metrics(PREDICTED, TARGET)
    metrics = normal.compute_metrics()
    assert metrics["mean_angle"] == pytest.approx(sum(VALID) / 5, abs=1e-4)  # 20
    assert metrics["median_angle"] == pytest.approx(20.0, abs=0.011)  # histogram bins of 0.01
    assert metrics["within_11.25"] == pytest.approx(2 / 5)  # 0, 10
    assert metrics["within_22.5"] == pytest.approx(3 / 5)  # 0, 10, 20
    assert metrics["within_30"] == pytest.approx(4 / 5)  # 0, 10, 20, 25
    assert set(metrics) == set(normal.metric_directions)


def test_loss_is_one_minus_mean_cosine_over_valid_pixels() -> None:
    predicted = PREDICTED.clone().requires_grad_(True)
    loss = task().loss(predicted, TARGET)
    expected = 1 - sum(math.cos(math.radians(angle)) for angle in VALID) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert (predicted.grad[..., 5] == 0).all()  # the invalid pixel adds nothing
    assert (predicted.grad[..., :5] != 0).any()


def test_perfect_prediction_has_zero_loss_and_error() -> None:
    normal = task()
    target = nn.functional.normalize(torch.randn(2, 3, 4, 4), dim=1)
    assert normal.loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    normal.update_metrics(target, target)
    metrics = normal.compute_metrics()
    assert metrics["mean_angle"] == pytest.approx(0.0, abs=0.05)
    assert metrics["within_11.25"] == 1.0


def test_metrics_pool_pixels_over_batches() -> None:
    """Two batches give the metrics of their pixels taken together."""
    together, split = task(), task()
    together.update_metrics(PREDICTED, TARGET)
    split.update_metrics(PREDICTED[..., :2], TARGET[..., :2])
    split.update_metrics(PREDICTED[..., 2:], TARGET[..., 2:])
    assert split.compute_metrics() == pytest.approx(together.compute_metrics())


def test_a_batch_without_valid_pixels_gives_zero_loss() -> None:
    predicted = PREDICTED.clone().requires_grad_(True)
    loss = task().loss(predicted, torch.zeros_like(TARGET))
    assert loss.item() == 0.0
    loss.backward()
    assert (predicted.grad == 0).all()


def test_reset_forgets_earlier_batches() -> None:
    normal = task()
    normal.update_metrics(PREDICTED, TARGET)
    normal.reset_metrics()
    normal.update_metrics(TARGET, TARGET)
    assert normal.compute_metrics()["mean_angle"] == pytest.approx(0.0, abs=0.05)


@pytest.mark.parametrize(
    "backbone", [ConvNet(), ResNet(18, small_input=True)], ids=["cnn", "resnet18"]
)
def test_head_predicts_unit_normals_at_input_resolution(backbone: nn.Module) -> None:
    normal = NormalTask("normal", INFO, backbone.out_channels, backbone.stride)
    output = nn.Sequential(backbone, normal.head).eval()(torch.rand(2, 3, 32, 32))
    assert output.shape == (2, 3, 32, 32)
    assert torch.allclose(output.norm(dim=1), torch.ones(2, 32, 32), atol=1e-5)


def test_pictures_draw_normals_as_colours_with_invalid_pixels_black() -> None:
    images = torch.rand(1, 3, 1, 6)
    picture = task().pictures(images, PREDICTED, TARGET)["truth_vs_prediction"]
    assert picture.shape[0] == 3 and picture.min() >= 0 and picture.max() <= 1
    # A 16 px title band, then 1 x 6 px tiles enlarged 16x with 1 px padding around each.
    truth_column = picture[:, 16 + 1 : 16 + 1 + 16, 1 + 96 + 1 : 1 + 96 + 1 + 96]
    assert torch.equal(truth_column[:, 8, 5 * 16 + 8], torch.zeros(3))  # the invalid pixel
    assert torch.allclose(truth_column[:, 8, 8], torch.tensor([0.5, 0.5, 1.0]))


def test_the_axis_legend_names_each_colour_in_one_word() -> None:
    """The label font's space is 2 px wide: a legend entry "no normal" read "nonormal"."""
    assert all(" " not in name for name in AXES) and AXES["invalid"] == (0.0, 0.0, 0.0)


def test_histogram_quantiles_are_exact_to_a_bin() -> None:
    histogram = Histogram(0.0, 100.0, 1000)
    values = torch.arange(101, dtype=torch.float64)  # 0, 1, ..., 100
    histogram.update(values[:50])
    histogram.update(values[50:])
    assert histogram.quantile(0.5) == pytest.approx(50.0, abs=0.1)
    assert histogram.quantile(0.1) == pytest.approx(10.0, abs=0.1)
    histogram.reset()
    assert math.isnan(histogram.quantile(0.5))  # nothing counted: NaN, not 0


def test_angle_metrics_need_directions_only() -> None:
    """Metrics normalise both maps: a prediction scaled by 3 has the same angles."""
    plain, scaled = task(), task()
    plain.update_metrics(PREDICTED, TARGET)
    scaled.update_metrics(3 * PREDICTED, TARGET)
    assert scaled.compute_metrics() == pytest.approx(plain.compute_metrics())

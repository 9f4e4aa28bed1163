"""Classification precision/recall, NaN for evaluations with nothing to count, and what
handles a NaN metric (best-checkpoint selection)."""

import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from mtlrun.data import DatasetInfo
from mtlrun.run import Progress
from mtlrun.state import improved
from mtlrun.tasks import Direction, metrics
from mtlrun.tasks.classification import ClassificationTask
from mtlrun.tasks.depth import DepthTask
from mtlrun.tasks.metrics import ConfusionMatrix, Histogram, Mean
from mtlrun.tasks.normal import NormalTask
from mtlrun.tasks.segmentation import SegmentationTask

INFO = DatasetInfo(
    "toy",
    (8, 8),
    frozenset({"cls", "seg", "depth", "normal"}),
    {"cls": 3, "seg": 3},
    {"cls": ["circle", "square", "star"]},
)


@pytest.fixture
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a new process: the NaN warning not given yet."""
    monkeypatch.setattr(metrics, "_warned", [])


def test_precision_and_recall_per_class_and_macro() -> None:
    confusion = ConfusionMatrix(num_classes=4)
    # true:      0 0 0 1 1 2   predicted: 0 0 1 1 2 2; class 3 occurs nowhere
    confusion.update(torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 0, 1, 1, 2]))
    precision, recall = confusion.precision_recall()
    assert precision[:3] == pytest.approx([1.0, 0.5, 0.5])
    assert recall[:3] == pytest.approx([2 / 3, 0.5, 1.0])
    assert precision[3] == recall[3] == 0.0  # undefined: 0, as scikit-learn's default
    macro_precision, macro_recall = confusion.macro_precision_recall()
    assert macro_precision == pytest.approx(2 / 3)
    assert macro_recall == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)


def test_a_class_only_predicted_has_zero_recall_weight_and_zero_precision() -> None:
    confusion = ConfusionMatrix(num_classes=2)
    confusion.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    precision, recall = confusion.precision_recall()
    assert precision == [1.0, 0.0] and recall == [0.5, 0.0]


def test_classification_reports_macro_and_per_class_precision_recall() -> None:
    task = ClassificationTask("cls", INFO, in_channels=4, stride=1)
    logits = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 2]), 3).float()
    task.update_metrics(logits, torch.tensor([0, 1, 1, 2]))
    result = task.compute_metrics()
    assert result["acc"] == pytest.approx(0.75)
    assert result["precision"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert result["recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert result["precision/circle"] == pytest.approx(0.5)
    assert result["recall/square"] == pytest.approx(0.5)
    assert set(result) == set(task.metric_directions)
    assert all(way == Direction.MAX for way in task.metric_directions.values())
    picture = task.evaluation_pictures()["confusion_matrix"]
    assert picture.shape[0] == 3 and picture.min() >= 0 and picture.max() <= 1
    assert picture.shape[1] > 90 and picture.shape[2] > 90  # three cells of >= 28 px, labels


def test_many_classes_report_only_the_macro_means() -> None:
    info = DatasetInfo("many", (8, 8), frozenset({"cls"}), {"cls": 100})
    task = ClassificationTask("cls", info, in_channels=4, stride=1)
    assert set(task.metric_directions) == {"acc", "f1", "precision", "recall"}


def test_nothing_counted_is_nan_with_one_warning(fresh_warning: None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        confusion = ConfusionMatrix(num_classes=3)
        confusion.update(torch.tensor([1, 2]), torch.tensor([-1, -1]))  # all ignored
        values = [confusion.accuracy(), confusion.mean_iou(), confusion.macro_f1()]
        values += [Mean().compute(), Histogram(0, 1, 10).quantile(0.5)]
    assert all(math.isnan(value) for value in values)
    assert len(caught) == 1 and "NaN rather than 0" in str(caught[0].message)


@pytest.mark.parametrize(
    ("task", "name", "target", "output"),
    [
        (SegmentationTask, "seg", torch.full((1, 4, 4), -1), torch.zeros(1, 3, 4, 4)),
        (DepthTask, "depth", torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)),
        (NormalTask, "normal", torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)),
    ],
)
def test_dense_tasks_without_valid_pixels_report_nan(
    task: type, name: str, target: torch.Tensor, output: torch.Tensor, fresh_warning: None
) -> None:
    """All pixels ignored (segmentation) or invalid (depth 0, normal 0-vector)."""
    made = task(name, INFO, 4, 1)
    made.reset_metrics()
    with pytest.warns(RuntimeWarning, match="no valid targets"):
        made.update_metrics(output, target)
        result = made.compute_metrics()
    assert result and all(math.isnan(value) for value in result.values()), result


def test_a_nan_metric_never_becomes_the_best() -> None:
    run = SimpleNamespace(
        monitor="val/depth/abs_err", directions={"val/depth/abs_err": Direction.MIN}
    )
    progress = Progress(metrics={"val/depth/abs_err": math.nan})
    assert not improved(run, progress) and progress.best is None  # type: ignore[arg-type]
    progress.metrics = {"val/depth/abs_err": 0.5}
    assert improved(run, progress) and progress.best == 0.5  # type: ignore[arg-type]
    progress.metrics = {"val/depth/abs_err": math.nan}
    assert not improved(run, progress) and progress.best == 0.5  # type: ignore[arg-type]

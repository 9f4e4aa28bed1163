"""The `attr` task: attribute selection, BCE loss and per-attribute metrics on a
hand-computed case."""

import math

import pytest
import torch

from mtlrun.data import DatasetInfo
from mtlrun.errors import UserError
from mtlrun.tasks.multilabel import MultiLabelTask

NAMES = ["Smiling", "Young", "Bald"]
INFO = DatasetInfo(
    name="faces",
    image_size=(8, 8),
    targets=frozenset({"attr"}),
    num_classes={"attr": 3},
    class_names={"attr": NAMES},
)
# Four images; logits > 0 predict the attribute.
TARGET = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
LOGITS = torch.tensor([[2.0, -1.0, -3.0], [-1.0, 1.0, -2.0], [1.0, 1.0, -1.0], [-2.0, 1.0, -1.0]])
# Smiling: TP 1, FN 1, FP 1, TN 1 -> acc 1/2, F1 = 2/4
# Young:   TP 2, FP 1, TN 1, FN 0 -> acc 3/4, F1 = 4/5
# Bald:    never present nor predicted -> acc 1, F1 undefined (left out of the mean)


def make(**settings: object) -> MultiLabelTask:
    return MultiLabelTask("attr", INFO, in_channels=6, stride=1, **settings)


def test_metrics_on_a_hand_computed_case() -> None:
    task = make()
    task.update_metrics(LOGITS[:2], TARGET[:2])
    task.update_metrics(LOGITS[2:], TARGET[2:])
    metrics = task.compute_metrics()
    assert metrics["acc/Smiling"] == pytest.approx(0.5)
    assert metrics["acc/Young"] == pytest.approx(0.75)
    assert metrics["acc/Bald"] == pytest.approx(1.0)
    assert metrics["acc"] == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    assert metrics["f1"] == pytest.approx((2 / 4 + 4 / 5) / 2)
    assert set(metrics) == set(task.metric_directions)


def test_loss_is_mean_binary_cross_entropy_over_attributes() -> None:
    loss = make().loss(LOGITS, TARGET)
    probability = torch.sigmoid(LOGITS)
    expected = -(TARGET * probability.log() + (1 - TARGET) * (1 - probability).log()).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_task_can_take_some_attributes_in_its_own_order() -> None:
    task = make(attributes=["Young", "Smiling"])
    assert task.head(torch.rand(4, 6, 2, 2)).shape == (4, 2)
    task.update_metrics(LOGITS[:, [1, 0]], TARGET)
    metrics = task.compute_metrics()
    assert metrics["acc/Young"] == pytest.approx(0.75) and "acc/Bald" not in metrics
    single = make(attributes=["Bald"])
    assert set(single.metric_directions) == {"acc", "f1"}
    loss = single.loss(torch.tensor([[0.0]] * 4), TARGET)
    assert loss.item() == pytest.approx(math.log(2))


def test_unknown_attributes_are_user_errors() -> None:
    with pytest.raises(UserError, match="Smiling, Young, Bald"):
        make(attributes=["Smilling"])

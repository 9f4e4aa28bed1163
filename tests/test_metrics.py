"""Metrics on cases small enough to compute by hand."""

import math

import pytest
import torch

from mtlrun.data import DatasetInfo
from mtlrun.tasks import Direction
from mtlrun.tasks.classification import ClassificationTask
from mtlrun.tasks.generation import GenerationTask, kl_per_sample
from mtlrun.tasks.metrics import ConfusionMatrix, Mean
from mtlrun.tasks.segmentation import SegmentationTask

# 3 classes; the last pixel is ignored. Counts (true row, predicted column):
#   [[1, 1, 0],
#    [0, 2, 0],
#    [1, 0, 0]]
TARGET = torch.tensor([0, 0, 1, 1, 2, -1])
PREDICTED = torch.tensor([0, 1, 1, 1, 0, 2])
ACCURACY = 3 / 5
# F1 = 2TP / (2TP + FP + FN): class 0: 2/4, class 1: 4/5, class 2: 0/1
MACRO_F1 = (2 / 4 + 4 / 5 + 0) / 3
# IoU = TP / (TP + FP + FN): class 0: 1/3, class 1: 2/3, class 2: 0/1
MEAN_IOU = (1 / 3 + 2 / 3 + 0) / 3

INFO = DatasetInfo(
    name="toy",
    image_size=(4, 4),
    targets=frozenset({"cls", "seg", "gen"}),
    num_classes={"cls": 3, "seg": 3},
)


def test_confusion_matrix_on_a_hand_computed_case() -> None:
    confusion = ConfusionMatrix(num_classes=3)
    confusion.update(PREDICTED, TARGET)
    assert confusion.accuracy() == pytest.approx(ACCURACY)
    assert confusion.macro_f1() == pytest.approx(MACRO_F1)
    assert confusion.mean_iou() == pytest.approx(MEAN_IOU)


def test_confusion_matrix_accumulates_over_updates_of_any_shape() -> None:
    confusion = ConfusionMatrix(num_classes=3)
    confusion.update(PREDICTED[:3].view(1, 3), TARGET[:3].view(1, 3))
    confusion.update(PREDICTED[3:], TARGET[3:])
    assert confusion.accuracy() == pytest.approx(ACCURACY)
    assert confusion.mean_iou() == pytest.approx(MEAN_IOU)


def test_classes_absent_from_targets_and_predictions_do_not_count() -> None:
    confusion = ConfusionMatrix(num_classes=5)
    confusion.update(PREDICTED, TARGET)
    assert confusion.macro_f1() == pytest.approx(MACRO_F1)
    assert confusion.mean_iou() == pytest.approx(MEAN_IOU)


def test_custom_ignore_index_leaves_those_labels_out() -> None:
    """An ignore index inside the class range (here class 1) drops those target pixels."""
    confusion = ConfusionMatrix(num_classes=3, ignore_index=1)
    confusion.update(torch.tensor([0, 0, 2, 1]), torch.tensor([0, 1, 2, 2]))
    assert confusion.accuracy() == pytest.approx(2 / 3)
    # class 0: 1/1; class 1: predicted once, never a kept target: 0/1; class 2: 1/2
    assert confusion.mean_iou() == pytest.approx((1 + 0 + 1 / 2) / 3)


def test_reset_forgets_and_empty_matrix_reports_nan() -> None:
    confusion = ConfusionMatrix(num_classes=3)
    confusion.update(PREDICTED, TARGET)
    confusion.reset()
    empty = [confusion.accuracy(), confusion.macro_f1(), confusion.mean_iou()]
    assert all(math.isnan(value) for value in empty)  # not a score of 0
    confusion.update(torch.tensor([1]), torch.tensor([1]))
    assert confusion.accuracy() == confusion.macro_f1() == confusion.mean_iou() == 1.0


def test_mean_is_over_all_values_of_all_updates() -> None:
    mean = Mean()
    assert math.isnan(mean.compute())
    mean.update(torch.tensor([1.0, 2.0, 3.0]))
    mean.update(torch.tensor([[10.0]]))
    assert mean.compute() == pytest.approx(16 / 4)
    mean.reset()
    mean.update(torch.tensor([5.0]))
    assert mean.compute() == pytest.approx(5.0)


def test_classification_task_metrics_from_logits() -> None:
    task = ClassificationTask("cls", INFO, in_channels=4, stride=1)
    logits = torch.nn.functional.one_hot(PREDICTED[:5], 3).float()
    task.update_metrics(logits, TARGET[:5])
    computed = task.compute_metrics()
    assert {key: computed[key] for key in ("acc", "f1")} == pytest.approx(
        {"acc": ACCURACY, "f1": MACRO_F1}
    )
    assert set(computed) == set(task.metric_directions)


def test_segmentation_task_metrics_ignore_pixels() -> None:
    task = SegmentationTask("seg", INFO, in_channels=4, stride=1, ignore_index=-1)
    logits = torch.nn.functional.one_hot(PREDICTED, 3).float().T.reshape(1, 3, 2, 3)
    task.update_metrics(logits, TARGET.reshape(1, 2, 3))
    assert task.compute_metrics() == pytest.approx({"miou": MEAN_IOU, "pixel_acc": ACCURACY})
    # Logits are 1 for the predicted class, else 0: cross-entropy is log(e + 2) - 1 on the 3
    # right pixels and log(e + 2) on the 2 wrong ones; the ignored pixel adds nothing.
    expected = math.log(math.e + 2) - 3 / 5
    assert task.loss(logits, TARGET.reshape(1, 2, 3)).item() == pytest.approx(expected)


def reconstruction(mse_per_image: list[float]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Targets of 0.5 and outputs off by sqrt(mse) everywhere: known MSE per image."""
    target = torch.full((len(mse_per_image), 3, 4, 4), 0.5, dtype=torch.float64)
    offsets = torch.tensor(mse_per_image, dtype=torch.float64).sqrt().view(-1, 1, 1, 1)
    return {"image": target + offsets}, target


def test_psnr_of_a_known_mse() -> None:
    task = GenerationTask("gen", INFO, in_channels=4, stride=1)
    output, target = reconstruction([1e-2, 1e-3])
    task.update_metrics(output, target)
    # PSNR = -10 log10(MSE) per image: 20 dB and 30 dB, averaged
    assert task.compute_metrics() == pytest.approx({"psnr": 25.0})
    assert task.loss(output, target).item() == pytest.approx((1e-2 + 1e-3) / 2, rel=1e-5)
    assert task.metric_directions == {"psnr": Direction.MAX}


def test_vae_kl_of_known_gaussians() -> None:
    """KL(N(m, s²) || N(0, 1)) = (m² + s² - 1 - log s²) / 2 per latent element, summed."""
    mean = torch.tensor([[1.0, 0.0, 2.0]])
    log_variance = torch.tensor([[0.0, math.log(2.0), 0.0]])
    expected = (1 / 2) + (2 - 1 - math.log(2)) / 2 + (4 / 2)
    assert kl_per_sample(mean, log_variance).tolist() == pytest.approx([expected])
    assert kl_per_sample(torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)).tolist() == [0, 0]


def test_vae_loss_and_kl_metric() -> None:
    task = GenerationTask("gen", INFO, in_channels=4, stride=1, variant="vae", beta=0.5)
    output, target = reconstruction([1e-2, 1e-2])
    mean = torch.ones(2, 2, 4, 4)  # 32 latent values of KL 1/2 each: 16 per image
    output.update({"mean": mean, "log_variance": torch.zeros_like(mean)})
    values_per_image = 3 * 4 * 4
    expected_loss = 1e-2 + 0.5 * 16 / values_per_image
    assert task.loss(output, target).item() == pytest.approx(expected_loss, rel=1e-5)
    task.update_metrics(output, target)
    assert task.compute_metrics() == pytest.approx({"psnr": 20.0, "kl": 16.0})
    assert task.metric_directions == {"psnr": Direction.MAX, "kl": Direction.MIN}

"""`cls`: image classification from pooled shared features."""

import torch.nn.functional as F
from torch import Tensor, nn

from mtlrun.data import DatasetInfo
from mtlrun.tasks.base import Direction, Task
from mtlrun.tasks.metrics import ConfusionMatrix


class ClassificationTask(Task):
    """Global-average-pooled features -> MLP -> class logits; cross-entropy loss.

    Metrics: `acc` (accuracy) and `f1` (macro-F1), both higher-better.
    """

    metric_directions = {"acc": Direction.MAX, "f1": Direction.MAX}
    main_metric = "acc"

    def __init__(
        self,
        name: str,
        info: DatasetInfo,
        in_channels: int,
        stride: int,
        target: str = "cls",
        hidden: int = 128,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(name, target, info)
        num_classes = self.num_classes()
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if hidden > 0:
            layers += [nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden if hidden > 0 else in_channels, num_classes))
        self.head = nn.Sequential(*layers)
        self.label_smoothing = label_smoothing
        self.confusion = ConfusionMatrix(num_classes)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), target, label_smoothing=self.label_smoothing)

    def reset_metrics(self) -> None:
        self.confusion.reset()

    def update_metrics(self, output: Tensor, target: Tensor) -> None:
        self.confusion.update(output.argmax(dim=1), target)

    def compute_metrics(self) -> dict[str, float]:
        return {"acc": self.confusion.accuracy(), "f1": self.confusion.macro_f1()}

"""`cls`: image classification from pooled or flattened shared features."""

import torch.nn.functional as F
from torch import Tensor, nn

from mtlrun.data import DatasetInfo
from mtlrun.models.heads import class_head_input
from mtlrun.tasks.base import Direction, Task
from mtlrun.tasks.metrics import ConfusionMatrix
from mtlrun.tasks.pictures import confusion_picture

PER_CLASS_LIMIT = 20  # more classes: only the macro means (a table of hundreds helps nobody)


class ClassificationTask(Task):
    """Global-average-pooled (`pool: avg`) or flattened (`pool: flatten`) features -> MLP ->
    class logits; cross-entropy loss.

    `flatten` keeps where things are (e.g. which digit is on the left), at the price of one
    input size: the head is sized for the dataset's image size, checked before training.

    Metrics (all higher-better): `acc` (accuracy), `f1`, `precision` and `recall` (macro:
    means over the classes that occur), and with at most `PER_CLASS_LIMIT` classes
    `precision/<class>` and `recall/<class>`. Pictures: the confusion matrix of the whole
    validation split.
    """

    metric_directions = {
        "acc": Direction.MAX,
        "f1": Direction.MAX,
        "precision": Direction.MAX,
        "recall": Direction.MAX,
    }
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
        pool: str = "avg",
    ) -> None:
        super().__init__(name, target, info)
        num_classes = self.num_classes()
        layers, width = class_head_input(name, pool, info, in_channels, stride)
        if hidden > 0:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden if hidden > 0 else width, num_classes))
        self.head = nn.Sequential(*layers)
        self.label_smoothing = label_smoothing
        self.confusion = ConfusionMatrix(num_classes)
        self.class_names = info.class_names.get(target) or [str(k) for k in range(num_classes)]
        self.per_class = num_classes <= PER_CLASS_LIMIT
        self.metric_directions = dict(type(self).metric_directions)
        if self.per_class:
            self.metric_directions.update(
                {
                    f"{kind}/{n}": Direction.MAX
                    for kind in ("precision", "recall")
                    for n in self.class_names
                }
            )

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), target, label_smoothing=self.label_smoothing)

    def reset_metrics(self) -> None:
        self.confusion.reset()

    def update_metrics(self, output: Tensor, target: Tensor) -> None:
        self.confusion.update(output.argmax(dim=1), target)

    def compute_metrics(self) -> dict[str, float]:
        precision, recall = self.confusion.macro_precision_recall()
        metrics = {
            "acc": self.confusion.accuracy(),
            "f1": self.confusion.macro_f1(),
            "precision": precision,
            "recall": recall,
        }
        if self.per_class:
            per_class = self.confusion.precision_recall()
            for kind, values in zip(("precision", "recall"), per_class, strict=True):
                metrics.update(
                    {f"{kind}/{n}": v for n, v in zip(self.class_names, values, strict=True)}
                )
        return metrics

    def evaluation_pictures(self) -> dict[str, Tensor]:
        """The confusion matrix of the whole validation split, rows normalised."""
        return {"confusion_matrix": confusion_picture(self.confusion.matrix(), self.class_names)}

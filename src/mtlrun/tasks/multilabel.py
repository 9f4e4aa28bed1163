"""`attr`: several binary attributes of an image at once (multi-label classification)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlrun.data import DatasetInfo
from mtlrun.errors import UserError
from mtlrun.tasks.base import Direction, Task


class MultiLabelTask(Task):
    """Pooled features -> MLP -> one logit per attribute; binary cross-entropy per attribute,
    averaged.

    The target is a (B, A) tensor of 0 / 1 over all the dataset's attributes; a task predicts
    the `attributes` it names (all when null), so one dataset target can be split into
    several tasks, down to one task per attribute as in the 40-task CelebA benchmark (Sener &
    Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018).

    Metrics (all higher-better): `acc`, the mean over attributes of each attribute's
    accuracy; `f1`, the mean over attributes of each one's F1 score of the positive class
    (attributes that are never present nor predicted are left out of the mean); and with
    several attributes `acc/<attribute>` for each.

    Args:
        attributes: names of the attributes this task predicts (from the dataset's list).
        hidden: width of the hidden layer; 0 = a single linear layer.
        dropout: dropout before the output layer (with hidden > 0).
    """

    # Metric families, for readers that do not build the task (mtlrun-report reads
    # `acc/<attribute>` as `acc`); an instance lists its attributes' keys.
    metric_directions = {"acc": Direction.MAX, "f1": Direction.MAX}
    main_metric = "acc"

    def __init__(
        self,
        name: str,
        info: DatasetInfo,
        in_channels: int,
        stride: int,
        target: str = "attr",
        attributes: list[str] | None = None,
        hidden: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(name, target, info)
        known = list(info.class_names.get(target) or [])
        count = self.num_classes()
        known = known or [str(column) for column in range(count)]
        chosen = list(attributes) if attributes is not None else known
        unknown = [attribute for attribute in chosen if attribute not in known]
        if unknown or not chosen:
            raise UserError(
                f"tasks.{name}.attributes names unknown or no attributes {unknown}; dataset "
                f"'{info.name}' has: {', '.join(known)}"
            )
        self.attributes = chosen
        self.columns = torch.tensor([known.index(attribute) for attribute in chosen])
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if hidden > 0:
            layers += [nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden if hidden > 0 else in_channels, len(chosen)))
        self.head = nn.Sequential(*layers)
        self.metric_directions = {"acc": Direction.MAX, "f1": Direction.MAX}
        if len(chosen) > 1:
            self.metric_directions.update(
                {f"acc/{attribute}": Direction.MAX for attribute in chosen}
            )
        self.reset_metrics()

    def _labels(self, target: Tensor) -> Tensor:
        return target[:, self.columns.to(target.device)]

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(output.float(), self._labels(target).float())

    def reset_metrics(self) -> None:
        self.counts: Tensor | None = None  # (4, A): true/false positives, false/true negatives

    def update_metrics(self, output: Tensor, target: Tensor) -> None:
        predicted = output > 0
        actual = self._labels(target) > 0
        counts = torch.stack(
            [
                (predicted & actual).sum(0),
                (predicted & ~actual).sum(0),
                (~predicted & actual).sum(0),
                (~predicted & ~actual).sum(0),
            ]
        )
        self.counts = counts if self.counts is None else self.counts + counts

    def compute_metrics(self) -> dict[str, float]:
        if self.counts is None:
            return dict.fromkeys(self.metric_directions, 0.0)
        true_positive, false_positive, false_negative, true_negative = self.counts.double().cpu()
        total = (true_positive + false_positive + false_negative + true_negative).clamp(min=1)
        accuracy = (true_positive + true_negative) / total
        f1_support = 2 * true_positive + false_positive + false_negative
        defined = f1_support > 0
        f1 = 2 * true_positive[defined] / f1_support[defined]
        metrics = {
            "acc": float(accuracy.mean()),
            "f1": float(f1.mean()) if defined.any() else 0.0,
        }
        if len(self.attributes) > 1:
            metrics.update(
                {
                    f"acc/{name}": float(value)
                    for name, value in zip(self.attributes, accuracy, strict=True)
                }
            )
        return metrics

"""`seg`: semantic segmentation at input resolution."""

import torch.nn.functional as F
from torch import Tensor

from mtlrun.data import DatasetInfo
from mtlrun.models.decoders import UpsampleDecoder
from mtlrun.tasks.base import Direction, Task
from mtlrun.tasks.metrics import ConfusionMatrix
from mtlrun.tasks.pictures import class_legend, overlay, stack, titled_columns


class SegmentationTask(Task):
    """Upsampling decoder -> per-pixel class logits; cross-entropy over labelled pixels.

    Metrics: `miou` (mean IoU over classes present) and `pixel_acc`, both higher-better.
    """

    metric_directions = {"miou": Direction.MAX, "pixel_acc": Direction.MAX}
    main_metric = "miou"

    def __init__(
        self,
        name: str,
        info: DatasetInfo,
        in_channels: int,
        stride: int,
        target: str = "seg",
        hidden: int = 64,
        ignore_index: int = -1,
    ) -> None:
        super().__init__(name, target, info)
        num_classes = self.num_classes()
        self.head = UpsampleDecoder(in_channels, hidden, num_classes, stride)
        self.ignore_index = ignore_index
        self.confusion = ConfusionMatrix(num_classes, ignore_index)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output.float(), target, ignore_index=self.ignore_index)

    def reset_metrics(self) -> None:
        self.confusion.reset()

    def update_metrics(self, output: Tensor, target: Tensor) -> None:
        self.confusion.update(output.argmax(dim=1), target)

    def compute_metrics(self) -> dict[str, float]:
        return {"miou": self.confusion.mean_iou(), "pixel_acc": self.confusion.accuracy()}

    def pictures(self, images: Tensor, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Input | ground truth | prediction, per row, under column titles, with the legend
        of the class colours below."""
        predicted = output.argmax(dim=1)
        grid = titled_columns(
            ["input", "truth", "prediction"],
            images, overlay(images, target), overlay(images, predicted),
        )  # fmt: skip
        names = self.info.class_names.get(self.target) or [
            str(k) for k in range(self.num_classes())
        ]
        footer = class_legend(names, grid.shape[-1], ignored=bool((target < 0).any()))
        return {"truth_vs_prediction": stack(grid, footer)}

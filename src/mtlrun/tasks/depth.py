"""`depth`: per-pixel depth regression at input resolution."""

import torch
from torch import Tensor, nn

from mtlrun.data import DatasetInfo
from mtlrun.models.decoders import UpsampleDecoder
from mtlrun.tasks.base import Direction, Task
from mtlrun.tasks.metrics import nothing_counted
from mtlrun.tasks.pictures import colour_bar, colour_map, stack, titled_columns


def depth_errors(predicted: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sums of |d̂ - d| and |d̂ - d| / d over valid pixels (d > 0), and their number.

    Sums rather than means, so that the metrics pool pixels over a whole evaluation, as the
    NYUv2 multi-task literature reports them (e.g. Liu et al. 2019, "End-to-End Multi-Task
    Learning with Attention").
    """
    predicted, target = predicted.float(), target.float()
    valid = target > 0
    error = torch.where(valid, (predicted - target).abs(), 0.0)
    relative = torch.where(valid, error / torch.where(valid, target, 1.0), 0.0)
    return error.sum(), relative.sum(), valid.sum()


class DepthHead(nn.Module):
    """Upsampling decoder -> one depth value per pixel, plus a constant offset.

    The offset starts at 0 and is set once, by `calibrate`, to the mean valid depth of the
    first training batch: a data-dependent initialisation (as Salimans & Kingma 2016 do for
    weight normalisation), so training does not spend its first hundreds of steps moving a
    constant from 0 to the depth scale (metres on NYUv2, 2..10 on shapes). Both are buffers,
    so a resumed run keeps its calibration.
    """

    # Buffers (register_buffer), typed for the checker: nn.Module's __getattr__ is not.
    offset: Tensor
    calibrated: Tensor

    def __init__(self, in_channels: int, hidden: int, stride: int) -> None:
        super().__init__()
        self.decoder = UpsampleDecoder(in_channels, hidden, 1, stride)
        self.register_buffer("offset", torch.zeros(()))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    def forward(self, features: Tensor) -> Tensor:
        return self.decoder(features) + self.offset

    @torch.no_grad()
    def calibrate(self, target: Tensor) -> None:
        """Set the offset to the mean valid depth of `target`, the first time only; decided
        on the device, so the host never waits."""
        valid = target > 0
        mean = torch.where(valid, target.float(), 0.0).sum() / valid.sum().clamp(min=1)
        self.offset.copy_(torch.where(self.calibrated, self.offset, mean))
        self.calibrated.fill_(True)


class DepthTask(Task):
    """Depth per pixel at input resolution (see `DepthHead`); L1 loss over valid pixels.

    Metrics, pooled over every valid pixel of the evaluation (both lower-better):
    `abs_err` = mean |d̂ - d| and `rel_err` = mean |d̂ - d| / d. Target pixels with depth 0
    are invalid and add nothing to the loss or the metrics.
    """

    metric_directions = {"abs_err": Direction.MIN, "rel_err": Direction.MIN}
    main_metric = "abs_err"

    head: DepthHead

    def __init__(
        self,
        name: str,
        info: DatasetInfo,
        in_channels: int,
        stride: int,
        target: str = "depth",
        hidden: int = 64,
    ) -> None:
        super().__init__(name, target, info)
        self.head = DepthHead(in_channels, hidden, stride)
        self.reset_metrics()

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        if self.head.training:
            self.head.calibrate(target)
        error, _, count = depth_errors(output, target)
        # clamp: a batch without valid pixels gives loss 0, not 0/0
        return error / count.clamp(min=1)

    def reset_metrics(self) -> None:
        self.sums: Tensor | None = None  # (abs error, relative error, valid pixels), on device

    def update_metrics(self, output: Tensor, target: Tensor) -> None:
        sums = torch.stack([value.double() for value in depth_errors(output, target)])
        self.sums = sums if self.sums is None else self.sums + sums

    def compute_metrics(self) -> dict[str, float]:
        error, relative, count = self.sums.tolist() if self.sums is not None else [0.0] * 3
        if count == 0:  # no valid pixel: NaN, not a perfect 0
            nan = nothing_counted()
            return {"abs_err": nan, "rel_err": nan}
        return {"abs_err": error / count, "rel_err": relative / count}

    def pictures(self, images: Tensor, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Input | ground truth | prediction, per row; one colour scale (the ground truth's
        range over the shown images) for both, near = dark blue, far = dark red; invalid
        pixels are black."""
        valid = target > 0
        shown = target[valid]
        low, high = (shown.min(), shown.max()) if shown.numel() else (0.0, 1.0)
        truth = torch.where(valid, colour_map(target, low, high), 0.0)
        predicted = colour_map(output, low, high)
        grid = titled_columns(["input", "truth", "prediction"], images, truth, predicted)
        bar = colour_bar(float(low), float(high), grid.shape[-1], "depth (black: none)")
        return {"truth_vs_prediction": stack(grid, bar)}

"""`normal`: per-pixel surface normal estimation at input resolution."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlrun.data import DatasetInfo
from mtlrun.models.decoders import UpsampleDecoder
from mtlrun.tasks.base import Direction, Task
from mtlrun.tasks.metrics import Histogram, nothing_counted
from mtlrun.tasks.pictures import legend, stack, titled_columns

# The colours of unit normals along each axis ((n + 1) / 2), for the pictures' legend.
AXES = {
    "+x": (1.0, 0.5, 0.5),
    "+y": (0.5, 1.0, 0.5),
    "+z": (0.5, 0.5, 1.0),
    "-x": (0.0, 0.5, 0.5),
    "-y": (0.5, 0.0, 0.5),
    "-z": (0.5, 0.5, 0.0),
    "invalid": (0.0, 0.0, 0.0),  # one word: the label font's space is 2 px ("nonormal")
}

THRESHOLDS = (11.25, 22.5, 30.0)  # degrees; the within-angle metrics of the NYUv2 literature
_HISTOGRAM_BINS = 18_000  # 0.01 degree bins over 0..180: the median to within 0.01 degree


def valid_pixels(target: Tensor) -> Tensor:
    """(B, H, W) mask of the pixels whose target normal is not the all-zero vector."""
    return (target != 0).any(dim=1)


def angle_errors(predicted: Tensor, target: Tensor) -> Tensor:
    """Angles in degrees between predicted and target normals, (B, H, W); meaningful at the
    valid pixels only (see `valid_pixels`). Both are normalised first, so only directions
    count."""
    cosine = (F.normalize(predicted.float(), dim=1) * F.normalize(target.float(), dim=1)).sum(1)
    return torch.rad2deg(torch.acos(cosine.clamp(-1.0, 1.0)))


class NormalHead(nn.Module):
    """Upsampling decoder -> 3 channels, normalised to unit length per pixel."""

    def __init__(self, in_channels: int, hidden: int, stride: int) -> None:
        super().__init__()
        self.decoder = UpsampleDecoder(in_channels, hidden, 3, stride)

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.decoder(features), dim=1)


class NormalTask(Task):
    """Surface normals per pixel; loss 1 - cos(n̂, n) averaged over valid pixels.

    The loss and metrics of the NYUv2 multi-task benchmark (Eigen & Fergus, "Predicting
    Depth, Surface Normals and Semantic Labels with a Common Multi-Scale Convolutional
    Architecture", ICCV 2015; as used by Liu et al. 2019 MTAN, Nash-MTL and FAMO). With
    θ = arccos(n̂ · n) in degrees over the valid pixels (target not all-zero):
    `mean_angle` ↓ and `median_angle` ↓ of θ, and `within_11.25`, `within_22.5`,
    `within_30` ↑, the fractions of pixels with θ < 11.25°, 22.5°, 30°. Metrics pool every
    valid pixel of the evaluation (the MTAN code averages per-batch values instead); the
    median comes from a 0.01°-bin histogram, exact to 0.01°.
    """

    metric_directions = {
        "mean_angle": Direction.MIN,
        "median_angle": Direction.MIN,
        **{f"within_{threshold:g}": Direction.MAX for threshold in THRESHOLDS},
    }
    main_metric = "mean_angle"

    def __init__(
        self,
        name: str,
        info: DatasetInfo,
        in_channels: int,
        stride: int,
        target: str = "normal",
        hidden: int = 64,
    ) -> None:
        super().__init__(name, target, info)
        self.head = NormalHead(in_channels, hidden, stride)
        self.histogram = Histogram(0.0, 180.0, _HISTOGRAM_BINS)
        self.reset_metrics()

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        valid = valid_pixels(target)
        cosine = (output.float() * target.float()).sum(dim=1)
        # clamp: a batch without valid pixels gives loss 0, not 0/0
        return torch.where(valid, 1.0 - cosine, 0.0).sum() / valid.sum().clamp(min=1)

    def reset_metrics(self) -> None:
        self.sums: Tensor | None = None  # (angle sum, pixels, pixels within each threshold)
        self.histogram.reset()

    def update_metrics(self, output: Tensor, target: Tensor) -> None:
        # Masks weight the sums rather than select pixels: selecting would sync the host.
        valid = valid_pixels(target)
        angles = angle_errors(output, target).double()
        within = [(valid & (angles < threshold)).sum() for threshold in THRESHOLDS]
        sums = torch.stack([torch.where(valid, angles, 0.0).sum(), valid.sum(), *within])
        sums = sums.double()
        self.sums = sums if self.sums is None else self.sums + sums
        self.histogram.update(angles, weights=valid)

    def compute_metrics(self) -> dict[str, float]:
        values = self.sums.tolist() if self.sums is not None else [0.0] * (2 + len(THRESHOLDS))
        angle_sum, count, *within = values
        if count == 0:  # no valid pixel: NaN, not a perfect 0
            count = nothing_counted()
        return {
            "mean_angle": angle_sum / count,
            "median_angle": self.histogram.quantile(0.5),
            **{
                f"within_{threshold:g}": hits / count
                for threshold, hits in zip(THRESHOLDS, within, strict=True)
            },
        }

    def pictures(self, images: Tensor, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Input | ground truth | prediction, per row; a normal (x, y, z) is drawn as the
        colour ((x, y, z) + 1) / 2, invalid pixels black."""
        valid = valid_pixels(target)[:, None]
        truth = torch.where(valid, (target.float() + 1) / 2, 0.0)
        predicted = (output.float() + 1) / 2
        grid = titled_columns(["input", "truth", "prediction"], images, truth, predicted)
        key = legend(list(AXES), list(AXES.values()), grid.shape[-1])
        return {"truth_vs_prediction": stack(grid, key)}

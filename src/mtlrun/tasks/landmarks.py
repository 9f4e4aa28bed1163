"""`landmarks`: regression of a fixed set of key points (e.g. the five facial landmarks)."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlrun.data import DatasetInfo
from mtlrun.errors import UserError
from mtlrun.models.heads import landmark_head
from mtlrun.tasks.base import Direction, Task
from mtlrun.tasks.pictures import enlarged, from_pil, label_font, stack, to_pil


class LandmarksTask(Task):
    """Features -> (x, y) of each of K points, as fractions of the image's width and height;
    L1 loss on those fractions. The head (`pool`) is `softargmax` (a heatmap per point, its
    expected position: localises at any input size), `flatten` (every feature cell into an
    MLP: localises, one input size) or `avg` (pooled features into an MLP: knows what, not
    where, so it learns little more than the mean position).

    The target is FloatTensor[B, K, 2] of (x, y) pixels; the point names come from the
    dataset (`info.class_names[target]`). Metrics (lower-better): `nme`, the mean distance
    between predicted and true points divided by the distance between the two reference
    points `normalise_by` (the eyes: the inter-ocular normalised mean error of face
    alignment, Sagonas et al., "300 Faces in-the-Wild Challenge", ICCV-W 2013), averaged
    over images; and `error_px`, the mean distance in pixels.

    Args:
        hidden: width of the hidden layer (a 3x3 conv for softargmax); 0 = none.
        pool: softargmax | flatten | avg (see above).
        normalise_by: indices of the two points whose distance normalises `nme`.
    """

    metric_directions = {"nme": Direction.MIN, "error_px": Direction.MIN}
    main_metric = "nme"

    def __init__(
        self,
        name: str,
        info: DatasetInfo,
        in_channels: int,
        stride: int,
        target: str = "landmarks",
        hidden: int = 128,
        normalise_by: tuple[int, int] | list[int] = (0, 1),
        pool: str = "softargmax",
    ) -> None:
        super().__init__(name, target, info)
        points = list(info.class_names.get(target) or [])
        if not points:
            raise UserError(
                f"task '{name}' needs the names of the points of target '{target}', which "
                f"dataset '{info.name}' does not give"
            )
        if len(normalise_by) != 2 or not all(0 <= i < len(points) for i in normalise_by):
            raise UserError(
                f"tasks.{name}.normalise_by must be two point indices in 0..{len(points) - 1}, "
                f"got {list(normalise_by)}"
            )
        self.num_points = len(points)
        self.normalise_by = list(normalise_by)
        height, width = info.image_size
        self.scale = torch.tensor([float(width), float(height)])
        self.head = landmark_head(name, pool, info, in_channels, stride, hidden, len(points))
        self.reset_metrics()

    def _pixels(self, output: Tensor) -> Tensor:
        return output.float() * self.scale.to(output.device)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(output.float(), target.float() / self.scale.to(target.device))

    def reset_metrics(self) -> None:
        self.sums: Tensor | None = None  # (normalised error sum, pixel error sum, images)

    def update_metrics(self, output: Tensor, target: Tensor) -> None:
        target = target.float()
        distances = (self._pixels(output) - target).norm(dim=-1)  # (B, K)
        first, second = self.normalise_by
        reference = (target[:, first] - target[:, second]).norm(dim=-1).clamp(min=1e-6)
        sums = torch.stack(
            [
                (distances.mean(1) / reference).sum(),
                distances.mean(1).sum(),
                distances.new_tensor(len(distances)),
            ]
        ).double()
        self.sums = sums if self.sums is None else self.sums + sums

    def compute_metrics(self) -> dict[str, float]:
        if self.sums is None:
            return {"nme": 0.0, "error_px": 0.0}
        normalised, pixels, images = self.sums.tolist()
        images = max(images, 1.0)
        return {"nme": normalised / images, "error_px": pixels / images}

    def pictures(self, images: Tensor, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Each image, enlarged to a tile of at least `TILE` pixels (4 a row), with its true
        points as green rings and its predicted points as red crosses over them, both edged
        in black to show on any colour; a legend below shows the two markers."""
        from PIL import ImageDraw
        from torchvision.utils import make_grid

        big = enlarged(images)
        factor = big.shape[-1] // images.shape[-1]
        drawn = []
        for image, predicted, truth in zip(big, self._pixels(output), target, strict=True):
            picture = to_pil(image)
            draw = ImageDraw.Draw(picture)
            for points, colour, ring in ((truth, TRUTH, True), (predicted, PREDICTION, False)):
                centres = (points.detach().float().cpu() + 0.5) * factor - 0.5  # pixel centres
                mark(draw, centres.tolist(), colour, ring)
            drawn.append(from_pil(picture))
        grid = make_grid(torch.stack(drawn), nrow=min(len(drawn), 4), padding=1, pad_value=1.0)
        return {"truth_vs_prediction": stack(grid, marker_legend(grid.shape[-1]))}


TRUTH, PREDICTION = (0, 230, 0), (255, 40, 40)  # the markers' colours
_RADIUS = 5  # a marker's radius in pixels of the enlarged picture


def mark(draw: Any, points: list[list[float]], colour: tuple[int, int, int], ring: bool) -> None:
    """A ring (`ring`) or a cross in `colour` at each (x, y), edged in black."""
    for x, y in points:
        for edge, width, fill in ((1, 4, (0, 0, 0)), (0, 2, colour)):
            r = _RADIUS + edge if ring else _RADIUS - 1 + edge
            if ring:
                draw.ellipse((x - r, y - r, x + r, y + r), outline=fill, width=width)
            else:
                draw.line((x - r, y - r, x + r, y + r), fill=fill, width=width)
                draw.line((x - r, y + r, x + r, y - r), fill=fill, width=width)


def marker_legend(width: int) -> Tensor:
    """A white band `width` wide with the two markers and what they show."""
    from PIL import ImageDraw

    font = label_font()
    picture = to_pil(torch.ones(3, 20, width))
    draw = ImageDraw.Draw(picture)
    x = 10
    for name, colour, ring in (("truth", TRUTH, True), ("prediction", PREDICTION, False)):
        mark(draw, [[x, 10]], colour, ring)
        draw.text((x + 10, 10), name, fill="black", font=font, anchor="lm")
        x += 10 + int(font.getlength(name)) + 20
    return from_pil(picture)

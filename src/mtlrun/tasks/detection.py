"""`det`: anchor-free object detection on the shared features (FCOS, Tian et al. 2019).

Every location of the head's feature map predicts, per class, whether an object's centre
region covers it, the distances (left, top, right, bottom) from the location to that
object's box edges, and its "centerness". Boxes come back by non-maximum suppression.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

from mtlrun.data import DatasetInfo
from mtlrun.errors import UserError
from mtlrun.tasks.base import Direction, Task
from mtlrun.tasks.detection_metrics import DetectionAP, rank_within_groups
from mtlrun.tasks.pictures import box_legend, draw_boxes, stack, truth_vs_prediction

# per image {"boxes": (n, 4), "scores": (n,), "labels": (n,), "locations": (n,)}, the last
# the index of the feature-map cell (row-major) each box came from
Detections = list[dict[str, Tensor]]


def conv_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    # GroupNorm rather than BatchNorm, as in FCOS: detection statistics vary a lot between
    # images (many locations are empty), and the head must not depend on the batch.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(32, out_channels), out_channels),
        nn.ReLU(inplace=True),
    )


class FCOSHead(nn.Module):
    """Shared features -> per-location class logits, ltrb box distances and centerness.

    A 3x3 conv block reduces the features to `hidden` channels; if the backbone's stride is
    coarser than `output_stride` the map is then upsampled (bilinear, power of two) so that
    small, nearby objects get locations of their own. Separate towers of `num_convs` blocks
    feed classification and regression; centerness sits on the regression tower (the
    variant of the FCOS paper's later versions).

    Outputs a dict of maps at the head's stride: `logits` (B, C, h, w), `distances`
    (B, 4, h, w) in pixels, positive (exp of the regression, Tian et al. 2019 eq. 2's
    exp(s x)) and `centerness` (B, 1, h, w) logits.
    """

    def __init__(
        self, in_channels: int, num_classes: int, stride: int, hidden: int = 128,
        num_convs: int = 2, output_stride: int | None = 4, prior_probability: float = 0.01,
    ) -> None:  # fmt: skip
        super().__init__()
        self.stride = stride if output_stride is None else min(stride, output_stride)
        factor = stride // max(self.stride, 1)
        if self.stride < 1 or factor * self.stride != stride or factor & (factor - 1):
            raise UserError(
                f"detection head: output_stride={output_stride} must be the backbone's stride "
                f"({stride}) divided by a power of two, or null"
            )
        self.reduce = conv_gn_relu(in_channels, hidden)
        self.upsample = (
            nn.Upsample(scale_factor=factor, mode="bilinear") if factor > 1 else nn.Identity()
        )
        self.class_tower = nn.Sequential(*(conv_gn_relu(hidden, hidden) for _ in range(num_convs)))
        self.box_tower = nn.Sequential(*(conv_gn_relu(hidden, hidden) for _ in range(num_convs)))
        self.class_logits = nn.Conv2d(hidden, num_classes, 3, padding=1)
        self.box_regression = nn.Conv2d(hidden, 4, 3, padding=1)
        self.centerness = nn.Conv2d(hidden, 1, 3, padding=1)
        for layer in (self.class_logits, self.box_regression, self.centerness):
            nn.init.normal_(layer.weight, std=0.01)
            assert layer.bias is not None  # Conv2d's default bias=True
            nn.init.zeros_(layer.bias)
        # Focal-loss prior (Lin et al. 2017, "Focal Loss for Dense Object Detection"): start
        # every location at probability `prior_probability`, so the many easy negatives do
        # not swamp the first steps.
        prior_logit = math.log(prior_probability / (1 - prior_probability))
        assert self.class_logits.bias is not None
        nn.init.constant_(self.class_logits.bias, prior_logit)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return self.predict(features)[0]

    def predict(self, features: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """The output maps, with the reduced (upsampled) features and the regression tower's
        features they came from, for heads that build on them (instance masks)."""
        shared = self.upsample(self.reduce(features))
        box_features = self.box_tower(shared)
        # exp in float32: bf16 keeps ~3 significant digits, too coarse for pixel distances;
        # the clamp keeps a diverging step from overflowing to inf.
        regression = self.box_regression(box_features).float().clamp(max=10.0)
        output = {
            "logits": self.class_logits(self.class_tower(shared)),
            "distances": torch.exp(regression) * self.stride,
            "centerness": self.centerness(box_features),
        }
        return output, shared, box_features


def locations(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """(x, y) pixel centres of a feature map's cells, row-major: (height * width, 2)."""
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)


def flatten_output(output: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Head maps -> per-location float tensors (B, L, C), (B, L, 4), (B, L), row-major."""
    logits = output["logits"].float().flatten(2).transpose(1, 2)
    distances = output["distances"].float().flatten(2).transpose(1, 2)
    centerness = output["centerness"].float().flatten(1)
    return logits, distances, centerness


def encode(
    boxes: Tensor, labels: Tensor, points: Tensor, stride: int, center_radius: float
) -> tuple[Tensor, Tensor]:
    """Assign ground-truth boxes to locations (FCOS, Tian et al. 2019, sec. 3.1).

    A location is a candidate for a box when it lies inside the box and, with centre
    sampling, within `center_radius * stride` of the box centre in x and y; among several
    candidates it takes the box of smallest area. Fully vectorised: no host sync.

    Args:
        boxes: (B, M, 4) xyxy pixels.
        labels: (B, M), -1 = padding.
        points: (L, 2) location centres.
        stride: the head's stride.
        center_radius: centre-sampling radius in strides; 0 = the whole box.

    Returns:
        labels (B, L) of the assigned box, -1 = background, and that box (B, L, 4) (arbitrary
        where the label is -1).
    """
    batch, slots = labels.shape
    if slots == 0:
        return labels.new_full((batch, len(points)), -1), boxes.new_zeros(batch, len(points), 4)
    boxes = boxes.float()
    x, y = points[None, :, None, 0], points[None, :, None, 1]  # (1, L, 1)
    x1, y1, x2, y2 = (boxes[:, None, :, i] for i in range(4))  # (B, 1, M)
    inside = (x > x1) & (y > y1) & (x < x2) & (y < y2)
    if center_radius > 0:
        reach = center_radius * stride
        near = ((x - (x1 + x2) / 2).abs() < reach) & ((y - (y1 + y2) / 2).abs() < reach)
        inside = inside & near
    candidate = inside & (labels >= 0)[:, None, :]
    area = ((x2 - x1) * (y2 - y1)).expand_as(candidate)
    smallest_area, chosen = torch.where(candidate, area, torch.inf).min(dim=2)  # (B, L)
    assigned = torch.where(torch.isfinite(smallest_area), labels.gather(1, chosen), -1)
    assigned_boxes = boxes.gather(1, chosen[..., None].expand(-1, -1, 4))
    return assigned, assigned_boxes


def box_distances(points: Tensor, boxes: Tensor) -> Tensor:
    """Distances (left, top, right, bottom) from locations (L, 2) to boxes (..., L, 4)."""
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)


def distance_boxes(points: Tensor, distances: Tensor) -> Tensor:
    """Boxes xyxy from locations (L, 2) and ltrb distances (..., L, 4); inverse of the above."""
    return torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)


def centerness_target(distances: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) (Tian et al. 2019, eq. 3)."""
    left, top, right, bottom = distances.clamp(min=1e-6).unbind(-1)
    ratio_x = torch.minimum(left, right) / torch.maximum(left, right)
    ratio_y = torch.minimum(top, bottom) / torch.maximum(top, bottom)
    return torch.sqrt(ratio_x * ratio_y)


def fcos_losses(
    points: Tensor, output: dict[str, Tensor], labels: Tensor, boxes: Tensor,
    focal_alpha: float, focal_gamma: float,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """FCOS's three loss terms from the head's maps and the `encode`d targets (labels (B, L),
    -1 = background; boxes (B, L, 4)): the sigmoid focal loss over all locations and classes
    (Lin et al. 2017) and the centerness BCE at positive locations, each divided by the
    number of positive locations, and the GIoU loss (Rezatofighi et al. 2019) of the boxes at
    positive locations, weighted by their centerness targets and divided by their sum."""
    logits, distances, centerness = flatten_output(output)
    positive = labels >= 0
    num_positive = positive.sum().clamp(min=1).float()
    class_target = F.one_hot(labels.clamp(min=0), logits.shape[-1]) * positive[..., None]
    class_loss = sigmoid_focal_loss(
        logits, class_target.float(), focal_alpha, focal_gamma, reduction="sum"
    )
    predicted = distance_boxes(points, distances)
    # Background locations get their own prediction as target: finite, and weighted 0.
    boxes = torch.where(positive[..., None], boxes, predicted.detach())
    centre = torch.where(positive, centerness_target(box_distances(points, boxes)), 0.0)
    box_loss = (generalized_box_iou_loss(predicted, boxes) * centre).sum()
    centre_loss = F.binary_cross_entropy_with_logits(centerness, centre, reduction="none")
    centre_loss = (centre_loss * positive).sum()
    return (
        class_loss / num_positive,
        centre_loss / num_positive,
        box_loss / centre.sum().clamp(min=1e-6),
    )


def decode(
    logits: Tensor, distances: Tensor, centerness: Tensor, points: Tensor,
    image_size: tuple[int, int], score_threshold: float, nms_iou: float,
    max_detections: int, pre_nms_top_k: int = 1000,
) -> Detections:  # fmt: skip
    """Per-location predictions -> boxes per image.

    Score = sqrt(class probability * centerness), as the FCOS reference implementation
    reports it (a geometric mean keeps it on the probability scale). The best
    `pre_nms_top_k` (location, class) pairs per image above `score_threshold` go through
    class-wise NMS, and the best `max_detections` survivors per image are kept. Reads the
    number of boxes to the host.

    Args:
        logits: (B, L, C) class logits.
        distances: (B, L, 4) ltrb distances in pixels.
        centerness: (B, L) centerness logits.
        points: (L, 2) location centres.
        image_size: (height, width), to clip boxes to the image.
    """
    batch, count, num_classes = logits.shape
    scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(centerness)[..., None])
    top_scores, top_index = scores.flatten(1).topk(min(pre_nms_top_k, count * num_classes), dim=1)
    location, label = top_index // num_classes, top_index % num_classes
    boxes = distance_boxes(points, distances).gather(1, location[..., None].expand(-1, -1, 4))
    height, width = image_size
    boxes = torch.minimum(boxes.clamp(min=0), boxes.new_tensor([width, height, width, height]))
    image = torch.arange(batch, device=logits.device)[:, None].expand_as(label)
    keep = top_scores > score_threshold
    boxes, top_scores, label, image = boxes[keep], top_scores[keep], label[keep], image[keep]
    kept = batched_nms(boxes, top_scores, image * num_classes + label, nms_iou)  # best first
    kept = kept[torch.sort(image[kept], stable=True).indices]  # by image, best first within
    kept = kept[rank_within_groups(image[kept]) < max_detections]
    sizes = torch.bincount(image[kept], minlength=batch).tolist()
    location = location[keep][kept].split(sizes)
    parts = (boxes[kept].split(sizes), top_scores[kept].split(sizes), label[kept].split(sizes))
    return [
        {"boxes": b, "scores": s, "labels": c, "locations": where}
        for b, s, c, where in zip(*parts, location, strict=True)
    ]


class DetectionTask(Task):
    """FCOS-style detection (Tian et al. 2019) with one feature level.

    Loss: sigmoid focal loss over all locations and classes (Lin et al. 2017) plus binary
    cross-entropy of centerness at positive locations, both divided by the number of
    positive locations, plus the GIoU loss (Rezatofighi et al. 2019) of the boxes at
    positive locations, weighted by their centerness targets and divided by their sum.
    Metrics (higher-better): `map` (COCO mAP@[.50:.95]), `map50` (mAP@.50) and
    `ap50/<class>` (AP@.50 of each class that has ground truth in the evaluation).

    Args:
        name, info, in_channels, stride: as for every task.
        target: key of the detection target in the batch.
        hidden, num_convs, output_stride: head shape (see `FCOSHead`).
        center_radius: centre sampling radius in strides (0 = whole box is positive).
        focal_alpha, focal_gamma: focal loss parameters.
        score_threshold, nms_iou, max_detections, pre_nms_top_k: decoding (see `decode`).
        draw_threshold: lowest score of predicted boxes drawn in pictures.
    """

    # Metric families, for readers that do not build the task (mtlrun-report reads
    # `ap50/<class>` as `ap50`); an instance lists its classes' keys.
    metric_directions = {"map": Direction.MAX, "map50": Direction.MAX, "ap50": Direction.MAX}
    main_metric = "map50"

    def __init__(
        self,
        name: str,
        info: DatasetInfo,
        in_channels: int,
        stride: int,
        target: str = "det",
        hidden: int = 128,
        num_convs: int = 2,
        output_stride: int | None = 4,
        center_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        score_threshold: float = 0.05,
        nms_iou: float = 0.6,
        max_detections: int = 100,
        pre_nms_top_k: int = 1000,
        draw_threshold: float = 0.3,
    ) -> None:
        super().__init__(name, target, info)
        num_classes = self.num_classes()
        self.head = FCOSHead(in_channels, num_classes, stride, hidden, num_convs, output_stride)
        self.stride = self.head.stride
        self.center_radius = center_radius
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.score_threshold, self.nms_iou = score_threshold, nms_iou
        self.max_detections, self.pre_nms_top_k = max_detections, pre_nms_top_k
        self.draw_threshold = draw_threshold
        names = info.class_names.get(target) or [str(k) for k in range(num_classes)]
        self.metric_directions = {"map": Direction.MAX, "map50": Direction.MAX}
        self.metric_directions.update({f"ap50/{n}": Direction.MAX for n in names})
        self.average_precision = DetectionAP(names)

    def _points(self, output: dict[str, Tensor]) -> Tensor:
        height, width = output["logits"].shape[-2:]
        return locations(height, width, self.stride, output["logits"].device)

    def loss(self, output: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
        points = self._points(output)
        labels, boxes = encode(
            target["boxes"], target["labels"], points, self.stride, self.center_radius
        )
        terms = fcos_losses(points, output, labels, boxes, self.focal_alpha, self.focal_gamma)
        return terms[0] + terms[1] + terms[2]

    def detect(self, output: dict[str, Tensor], score_threshold: float | None = None) -> Detections:
        """Boxes, scores and labels per image from the head's output."""
        return decode(
            *flatten_output(output), self._points(output), self.info.image_size,
            self.score_threshold if score_threshold is None else score_threshold,
            self.nms_iou, self.max_detections, self.pre_nms_top_k,
        )  # fmt: skip

    def reset_metrics(self) -> None:
        self.average_precision.reset()

    def update_metrics(self, output: dict[str, Tensor], target: dict[str, Tensor]) -> None:
        self.average_precision.update(self.detect(output), target["boxes"], target["labels"])

    def compute_metrics(self) -> dict[str, float]:
        return self.average_precision.compute()

    def pictures(
        self, images: Tensor, output: dict[str, Tensor], target: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Input | ground-truth boxes | predicted boxes (score >= draw_threshold), per row;
        box colours are the class colours of segmentation pictures."""
        scale = max(1, 128 // images.shape[-1])  # small images are enlarged so boxes show
        threshold = max(self.score_threshold, self.draw_threshold)
        detections = self.detect(output, threshold)
        real = target["labels"] >= 0
        names = self.average_precision.class_names
        truth = draw_boxes(
            images, [b[r] for b, r in zip(target["boxes"], real, strict=True)],
            [c[r] for c, r in zip(target["labels"], real, strict=True)], scale, names,
        )  # fmt: skip
        predicted = draw_boxes(
            images, [d["boxes"] for d in detections], [d["labels"] for d in detections], scale,
            names, [d["scores"] for d in detections],
        )  # fmt: skip
        grid = truth_vs_prediction(images, truth, predicted, scale, threshold)
        return {"truth_vs_prediction": stack(grid, box_legend(names, grid.shape[-1]))}

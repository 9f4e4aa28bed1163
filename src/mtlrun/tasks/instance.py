"""`inst`: instance segmentation on the shared features (CondInst, Tian, Shen & Chen, ECCV 2020).

Why CondInst rather than a Mask R-CNN on the shared trunk: every task here is a head that
maps the shared features to outputs, and a loss and metrics that read those outputs with the
targets (`Task.loss(output, target)`). A Mask R-CNN's heads need the targets *inside* the
forward pass (proposal sampling, RoI matching) and behave differently in training and
evaluation, so it would need a second calling convention through the engine, every sharing
scheme and DDP. CondInst is single-stage and fully convolutional: it is the `det` task's FCOS
head (reused from `mtlrun.tasks.detection`) plus two maps, so the head's output is a plain
dict of maps like every other task's and the whole loss sits in `loss`:

- a *controller* on the regression tower predicts, at every location, the weights of a tiny
  per-instance mask network (three 1x1 convolutions, `dynamic_channels` wide);
- a *mask branch* turns the reduced features into `mask_channels` maps at `mask_stride`.

An instance's mask is its own small network applied to the mask maps plus the coordinates of
each pixel relative to the instance's location (which tells touching objects of one class
apart), upsampled bilinearly to the image. Training applies it at the positive locations of
FCOS's assignment, against the mask of the object each is assigned to; inference applies it
to the boxes that survive NMS.

The loss is one scalar, the sum of four terms: FCOS's focal, centerness and GIoU terms
(`detection.fcos_losses`) plus `mask_weight` times the dice loss of the masks (Milletari et
al. 2016, as CondInst uses it). A weighting therefore sees `inst` as one task with one loss,
like every other task (a gradient method gets one gradient for it); the four terms are logged
apart as `train/<task>/{class,centerness,box,mask}` to show which of them moves.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlrun.data import DatasetInfo
from mtlrun.errors import UserError
from mtlrun.tasks.base import Direction, Task
from mtlrun.tasks.detection import (
    Detections,
    FCOSHead,
    conv_gn_relu,
    decode,
    encode,
    fcos_losses,
    flatten_output,
    locations,
)
from mtlrun.tasks.instance_metrics import InstanceAP, masks_to_boxes
from mtlrun.tasks.pictures import draw_instances, truth_vs_prediction


def dynamic_sizes(mask_channels: int, dynamic_channels: int) -> list[tuple[int, int]]:
    """(out, in) of the three 1x1 layers of an instance's mask network: the mask maps and two
    relative coordinates in, one logit out."""
    return [
        (dynamic_channels, mask_channels + 2),
        (dynamic_channels, dynamic_channels),
        (1, dynamic_channels),
    ]


class InstanceHead(nn.Module):
    """Shared features -> FCOS maps (`logits`, `distances`, `centerness`, see `FCOSHead`),
    `controller` (B, P, h, w): each location's mask-network parameters, and `mask_features`
    (B, mask_channels, H / mask_stride, W / mask_stride)."""

    def __init__(
        self, in_channels: int, num_classes: int, stride: int, hidden: int = 128,
        num_convs: int = 2, output_stride: int | None = 4, mask_stride: int = 2,
        mask_channels: int = 8, dynamic_channels: int = 8,
    ) -> None:  # fmt: skip
        super().__init__()
        self.detector = FCOSHead(in_channels, num_classes, stride, hidden, num_convs, output_stride)
        self.stride = self.detector.stride
        mask_stride = min(mask_stride, self.stride)  # never coarser than the FCOS maps
        factor = self.stride // max(mask_stride, 1)
        if mask_stride < 1 or factor * mask_stride != self.stride or factor & (factor - 1):
            raise UserError(
                f"instance head: mask_stride={mask_stride} must be the head's stride "
                f"({self.stride}) divided by a power of two"
            )
        self.mask_stride = mask_stride
        self.sizes = dynamic_sizes(mask_channels, dynamic_channels)
        num_params = sum(out * (inp + 1) for out, inp in self.sizes)
        self.controller = nn.Conv2d(hidden, num_params, 3, padding=1)
        nn.init.normal_(self.controller.weight, std=0.01)
        assert self.controller.bias is not None
        nn.init.zeros_(self.controller.bias)
        layers: list[nn.Module] = [conv_gn_relu(hidden, hidden)]
        for _ in range(int(math.log2(factor))):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear"), conv_gn_relu(hidden, hidden)]
        layers.append(nn.Conv2d(hidden, mask_channels, 1))
        self.mask_branch = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        output, shared, box_features = self.detector.predict(features)
        output["controller"] = self.controller(box_features)
        output["mask_features"] = self.mask_branch(shared)
        return output


def dynamic_mask_logits(
    params: Tensor, mask_features: Tensor, images: Tensor, points: Tensor, mask_stride: int,
    sizes: list[tuple[int, int]], coordinate_scale: float,
) -> Tensor:  # fmt: skip
    """Each instance's mask network on its image's mask maps: logits (K, h, w), float32.

    Args:
        params: (K, P) each instance's network parameters (weights, then bias, per layer).
        mask_features: (B, C, h, w) the mask branch's maps.
        images: (K,) the image of each instance.
        points: (K, 2) the (x, y) pixel position of each instance's location.
        coordinate_scale: pixels per unit of the relative coordinates.
    """
    count = len(params)
    height, width = mask_features.shape[-2:]
    grid = locations(height, width, mask_stride, mask_features.device)
    relative = (grid[None] - points[:, None].float()) / coordinate_scale  # (K, hw, 2)
    x = torch.cat([mask_features.float().flatten(2)[images], relative.transpose(1, 2)], dim=1)
    offset = 0
    for layer, (out, inp) in enumerate(sizes):
        weight = params[:, offset : offset + out * inp].reshape(count, out, inp)
        offset += out * inp
        bias = params[:, offset : offset + out, None]
        offset += out
        x = torch.baddbmm(bias, weight, x)
        if layer < len(sizes) - 1:
            x = F.relu(x)
    return x.view(count, height, width)


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """1 - 2 sum(p t) / (sum(p^2) + sum(t^2)) per instance (CondInst's form), (K,)."""
    probability = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    overlap = (probability * target).sum(1)
    total = (probability * probability).sum(1) + (target * target).sum(1)
    return 1 - 2 * overlap / total.clamp(min=1e-5)


class InstanceTask(Task):
    """CondInst-style instance segmentation (see the module docstring).

    Metrics (higher-better): `map` and `map50` of the masks (COCO mask mAP@[.50:.95] and
    mAP@.50), `box_map` and `box_map50` of the same detections' boxes, and `ap50/<class>`
    (mask AP@.50 of each class that has ground truth in the evaluation).

    Args:
        name, info, in_channels, stride: as for every task.
        target: key of the instance target in the batch ({"masks", "labels"}).
        hidden, num_convs, output_stride, center_radius, focal_alpha, focal_gamma,
            score_threshold, nms_iou, max_detections, pre_nms_top_k, draw_threshold: as
            for `det` (see `DetectionTask`).
        mask_stride: resolution of the mask maps (the head's stride over a power of two; a
            head finer than this gives its own).
        mask_channels, dynamic_channels: width of the mask maps and of the mask networks.
        coordinate_scale: pixels per unit of the relative coordinates; null = a quarter
            of the image's longer side.
        mask_weight: weight of the dice term in the task's loss.
        max_mask_instances: most positive locations whose masks a training step scores
            (evenly spaced among them); bounds the memory on large images.
        mask_threshold: mask probability above which a pixel belongs to an instance.
    """

    metric_directions = {
        "map": Direction.MAX, "map50": Direction.MAX, "box_map": Direction.MAX,
        "box_map50": Direction.MAX, "ap50": Direction.MAX,
    }  # fmt: skip
    main_metric = "map50"

    def __init__(
        self, name: str, info: DatasetInfo, in_channels: int, stride: int,
        target: str = "inst", hidden: int = 128, num_convs: int = 2,
        output_stride: int | None = 4, mask_stride: int = 2, mask_channels: int = 8,
        dynamic_channels: int = 8, coordinate_scale: float | None = None,
        center_radius: float = 1.5, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
        mask_weight: float = 1.0, max_mask_instances: int = 512, score_threshold: float = 0.05,
        nms_iou: float = 0.6, max_detections: int = 100, pre_nms_top_k: int = 1000,
        mask_threshold: float = 0.5, draw_threshold: float = 0.3,
    ) -> None:  # fmt: skip
        super().__init__(name, target, info)
        num_classes = self.num_classes()
        head = InstanceHead(
            in_channels, num_classes, stride, hidden, num_convs, output_stride, mask_stride,
            mask_channels, dynamic_channels,
        )  # fmt: skip
        self.head = head
        self.stride, self.mask_stride, self.sizes = head.stride, head.mask_stride, head.sizes
        self.coordinate_scale = coordinate_scale or max(info.image_size) / 4
        self.center_radius, self.mask_weight = center_radius, mask_weight
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.max_mask_instances = max_mask_instances
        self.score_threshold, self.nms_iou = score_threshold, nms_iou
        self.max_detections, self.pre_nms_top_k = max_detections, pre_nms_top_k
        self.mask_threshold, self.draw_threshold = mask_threshold, draw_threshold
        names = info.class_names.get(target) or [str(k) for k in range(num_classes)]
        self.metric_directions = {
            key: Direction.MAX for key in ("map", "map50", "box_map", "box_map50")
        }
        self.metric_directions.update({f"ap50/{n}": Direction.MAX for n in names})
        self.average_precision = InstanceAP(names, max_detections)
        self._terms: dict[str, Tensor] = {}

    def _points(self, output: dict[str, Tensor]) -> Tensor:
        height, width = output["logits"].shape[-2:]
        return locations(height, width, self.stride, output["logits"].device)

    def _mask_logits(
        self, output: dict[str, Tensor], images: Tensor, cells: Tensor, points: Tensor
    ) -> Tensor:
        """Mask logits (K, H, W) at image resolution of the instances at feature-map cells
        `cells` (row-major) of `images`."""
        params = output["controller"].float().flatten(2).transpose(1, 2)[images, cells]
        logits = dynamic_mask_logits(
            params, output["mask_features"], images, points[cells], self.mask_stride,
            self.sizes, self.coordinate_scale,
        )  # fmt: skip
        return F.interpolate(logits[:, None], size=self.info.image_size, mode="bilinear")[:, 0]

    def loss(self, output: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
        points = self._points(output)
        masks, labels = target["masks"], target["labels"]
        if labels.shape[1] == 0:  # no slots at all: one padding slot keeps the gathers valid
            masks = masks.new_zeros(len(masks), 1, *masks.shape[2:])
            labels = labels.new_full((len(labels), 1), -1)
        real = (labels >= 0) & masks.flatten(2).any(-1)
        slots = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
        # Assign object *slots* to locations, so that each positive knows its mask too.
        slot, boxes = encode(
            masks_to_boxes(masks), torch.where(real, slots, -1), points, self.stride,
            self.center_radius,
        )  # fmt: skip
        classes = torch.where(slot >= 0, labels.gather(1, slot.clamp(min=0)), -1)
        class_loss, centre_loss, box_loss = fcos_losses(
            points, output, classes, boxes, self.focal_alpha, self.focal_gamma
        )
        mask_loss = self._mask_loss(output, masks, slot, points)
        self._terms = {
            "class": class_loss.detach(), "centerness": centre_loss.detach(),
            "box": box_loss.detach(), "mask": mask_loss.detach(),
        }  # fmt: skip
        return class_loss + centre_loss + box_loss + self.mask_weight * mask_loss

    def _mask_loss(
        self, output: dict[str, Tensor], masks: Tensor, slot: Tensor, points: Tensor
    ) -> Tensor:
        """Mean dice loss of the masks at the positive locations (at most
        `max_mask_instances`, evenly spaced); 0, still tied to every mask parameter, when
        there are none (so data-parallel training finds every parameter used)."""
        images, cells = (slot >= 0).nonzero(as_tuple=True)
        if len(images) > self.max_mask_instances:
            keep = torch.linspace(0, len(images) - 1, self.max_mask_instances, device=slot.device)
            images, cells = images[keep.long()], cells[keep.long()]
        if len(images) == 0:
            return 0.0 * (output["controller"].sum() + output["mask_features"].sum()).float()
        logits = self._mask_logits(output, images, cells, points)
        return dice_loss(logits, masks[images, slot[images, cells]].float()).mean()

    def train_scalars(self) -> dict[str, Tensor]:
        return dict(self._terms)

    def detect(self, output: dict[str, Tensor], score_threshold: float | None = None) -> Detections:
        """Boxes, scores, labels and masks ((n, H, W) bool) per image from the head's output."""
        points = self._points(output)
        detections = decode(
            *flatten_output(output), points, self.info.image_size,
            self.score_threshold if score_threshold is None else score_threshold,
            self.nms_iou, self.max_detections, self.pre_nms_top_k,
        )  # fmt: skip
        sizes = [len(d["scores"]) for d in detections]
        images = torch.arange(len(sizes), device=points.device).repeat_interleave(
            torch.tensor(sizes, device=points.device)
        )
        cells = torch.cat([d["locations"] for d in detections])
        threshold = math.log(self.mask_threshold / (1 - self.mask_threshold))
        # In chunks of about 2M mask-map pixels, so that large images with many detections
        # never hold every instance's network activations at once.
        chunk = max(1, 2**21 // output["mask_features"][0, 0].numel())
        parts = [
            self._mask_logits(output, images[i : i + chunk], cells[i : i + chunk], points)
            for i in range(0, max(len(images), 1), chunk)
        ]
        masks = torch.cat(parts) > threshold
        for detection, image_masks in zip(detections, masks.split(sizes), strict=True):
            detection["masks"] = image_masks
        return detections

    def reset_metrics(self) -> None:
        self.average_precision.reset()

    def update_metrics(self, output: dict[str, Tensor], target: dict[str, Tensor]) -> None:
        self.average_precision.update(self.detect(output), target["masks"], target["labels"])

    def compute_metrics(self) -> dict[str, float]:
        return self.average_precision.compute()

    def pictures(
        self, images: Tensor, output: dict[str, Tensor], target: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Input | ground truth | prediction (score >= draw_threshold), per row: every
        instance in its own colour, its box outlined and labelled with its class (and score)."""
        scale = max(1, 192 // images.shape[-1])  # small images are enlarged so labels fit
        threshold = max(self.score_threshold, self.draw_threshold)
        detections = self.detect(output, threshold)
        real = (target["labels"] >= 0) & target["masks"].flatten(2).any(-1)
        names = self.average_precision.class_names
        truth = draw_instances(
            images, [m[r] for m, r in zip(target["masks"], real, strict=True)],
            [c[r] for c, r in zip(target["labels"], real, strict=True)], scale, names,
        )  # fmt: skip
        predicted = draw_instances(
            images, [d["masks"] for d in detections], [d["labels"] for d in detections], scale,
            names, [d["scores"] for d in detections],
        )  # fmt: skip
        return {
            "truth_vs_prediction": truth_vs_prediction(images, truth, predicted, scale, threshold)
        }

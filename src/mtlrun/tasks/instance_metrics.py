"""COCO-style average precision of instance masks (and of their boxes), written in torch.

`InstanceAP` reproduces pycocotools' `COCOeval` with `iouType="segm"` (and `"bbox"` for the
boxes of the same detections): area range "all", maxDets 100, no crowd objects. Mask IoU is
counted in pixels, as pycocotools' run-length `iou` counts it. Unlike boxes, masks are too
large to keep for a whole evaluation, so each batch's detections are compared with its
ground truth at once and only the (detections x ground truth) IoU matrices are kept; the
greedy COCO matching and the precision table then run at `compute` over all images
(`detection_metrics._greedy_matches` and `precision_table`).

One matching per image covers every class: the IoU of a detection with a ground-truth object
of another class is set to -1, which no threshold accepts, so it equals COCOeval's matching
per image and class (each class's detections still go in descending score order, and take
the last of equally good objects).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from mtlrun.tasks.detection_metrics import (
    _greedy_matches,
    box_iou,
    precision_table,
    rank_within_groups,
    summarize,
)


def mask_iou(detected: Tensor, truth: Tensor) -> Tensor:
    """Pixel IoU (float64) of masks (n, H, W) against masks (m, H, W): (n, m).

    Counts are exact integers in float64; two empty masks have IoU 0, as in pycocotools.
    """
    first, second = detected.flatten(1).double(), truth.flatten(1).double()
    intersection = first @ second.T
    union = first.sum(1)[:, None] + second.sum(1)[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), 0.0)


@dataclass
class ImageMatches:
    """One image's detections, best score first, and their IoU with its ground truth.

    Attributes:
        labels, scores: (n,) of the detections.
        truth_labels: (m,) of the ground-truth objects.
        mask_ious, box_ious: (n, m), -1 where the classes differ.
    """

    labels: Tensor
    scores: Tensor
    truth_labels: Tensor
    mask_ious: Tensor
    box_ious: Tensor


def match_image(
    prediction: dict[str, Tensor], masks: Tensor, labels: Tensor, max_detections: int
) -> ImageMatches:
    """Compare one image's predictions ({"masks", "boxes", "scores", "labels"}) with its real
    ground truth (masks (m, H, W) bool, labels (m,)); keeps the best `max_detections`
    detections of each class (COCOeval's maxDets per image and class)."""
    order = torch.sort(-prediction["scores"].float(), stable=True).indices
    det_labels = prediction["labels"][order]
    by_class = torch.sort(det_labels, stable=True).indices
    rank = torch.empty_like(order)
    rank[by_class] = rank_within_groups(det_labels[by_class])
    order = order[rank < max_detections]
    det_labels, scores = prediction["labels"][order], prediction["scores"][order].float()
    same = det_labels[:, None] == labels[None, :]
    mask_ious = mask_iou(prediction["masks"][order], masks)
    truth_boxes = masks_to_boxes(masks).double()
    box_ious = box_iou(prediction["boxes"][order].double()[:, None], truth_boxes[None, :])
    return ImageMatches(
        det_labels,
        scores,
        labels,
        torch.where(same, mask_ious, -1.0),
        torch.where(same, box_ious, -1.0),
    )


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Boxes (x1, y1, x2, y2) around masks (..., H, W) in pixel edges: a mask covering
    pixel columns 3..5 spans x 3 to 6. An empty mask gives an all-zero box."""
    height, width = masks.shape[-2:]
    columns, rows = masks.any(-2), masks.any(-1)
    x_index = torch.arange(width, device=masks.device)
    y_index = torch.arange(height, device=masks.device)
    x1 = torch.where(columns, x_index, width).amin(-1)
    x2 = torch.where(columns, x_index + 1, 0).amax(-1)
    y1 = torch.where(rows, y_index, height).amin(-1)
    y2 = torch.where(rows, y_index + 1, 0).amax(-1)
    present = columns.any(-1)
    return torch.stack([x1, y1, x2, y2], -1).float() * present[..., None]


def _padded_ious(images: list[ImageMatches], key: str) -> Tensor:
    """The images' IoU matrices in one (images, depth, width) tensor, -1 in the padding."""
    depth = max((len(image.labels) for image in images), default=0)
    width = max((len(image.truth_labels) for image in images), default=0)
    padded = torch.full((len(images), depth, width), -1.0, dtype=torch.float64)
    for index, image in enumerate(images):
        ious = getattr(image, key).cpu()
        padded[index, : ious.shape[0], : ious.shape[1]] = ious
    return padded


def precision_of(images: list[ImageMatches], key: str, num_classes: int) -> Tensor:
    """COCOeval's precision table (IoU thresholds, recall thresholds, classes) from the
    images' `mask_ious` or `box_ious`."""
    matched = _greedy_matches(_padded_ious(images, key))  # (images, T, depth)
    counts = [len(image.labels) for image in images]
    flat = [matched[index, :, :count] for index, count in enumerate(counts)]
    no_labels = torch.zeros(0, dtype=torch.long)
    labels = torch.cat([image.labels.cpu() for image in images] or [no_labels])
    scores = torch.cat([image.scores.cpu() for image in images] or [torch.zeros(0)])
    truths = torch.cat([image.truth_labels.cpu() for image in images] or [no_labels])
    hits = torch.cat(flat, dim=1) if flat else torch.zeros(matched.shape[1], 0, dtype=torch.bool)
    return precision_table(labels, scores, hits, truths, num_classes)


class InstanceAP:
    """Accumulates instance predictions against padded ground truth; computes mask and box AP.

    Args:
        class_names: one name per class, for the `ap50/<name>` keys.
        max_detections: detections kept per image and class (COCO: 100).
    """

    def __init__(self, class_names: list[str], max_detections: int = 100) -> None:
        self.class_names = list(class_names)
        self.max_detections = max_detections
        self.reset()

    def reset(self) -> None:
        self.images: list[ImageMatches] = []

    def update(self, predictions: list[dict[str, Tensor]], masks: Tensor, labels: Tensor) -> None:
        """Add a batch.

        Args:
            predictions: per image {"masks": (n, H, W) bool, "boxes": (n, 4), "scores": (n,),
                "labels": (n,)}.
            masks: ground truth (B, M, H, W) bool, padded.
            labels: ground-truth classes (B, M), -1 = padding (so is an empty mask).
        """
        real = (labels >= 0) & masks.flatten(2).any(-1)
        for prediction, image_masks, image_labels, image_real in zip(
            predictions, masks, labels, real, strict=True
        ):
            self.images.append(
                match_image(
                    prediction,
                    image_masks[image_real],
                    image_labels[image_real],
                    self.max_detections,
                )
            )

    def compute(self) -> dict[str, float]:
        """`map`, `map50`, `ap50/<class>` of the masks; `box_map`, `box_map50` of the boxes."""
        classes = len(self.class_names)
        metrics = summarize(precision_of(self.images, "mask_ious", classes), self.class_names)
        boxes = summarize(precision_of(self.images, "box_ious", classes), self.class_names)
        metrics.update({"box_map": boxes["map"], "box_map50": boxes["map50"]})
        return metrics

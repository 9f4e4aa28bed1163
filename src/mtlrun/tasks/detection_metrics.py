"""COCO-style average precision for box detection, written in torch.

`average_precision` reproduces pycocotools' `COCOeval` (iouType "bbox", area range "all",
maxDets 100, no crowd boxes) to floating-point rounding: greedy matching per image and class
in descending score order, 101-point interpolated precision, and classes without ground
truth left out of the means (Lin et al. 2014, "Microsoft COCO: Common Objects in Context").
The greedy matching runs over all (image, class) groups at once, one detection rank at a
time, so the Python loop is at most `max_detections` long whatever the number of images.
"""

from dataclasses import dataclass

import torch
from torch import Tensor


def _coco_linspace(start: float, stop: float, num: int) -> Tensor:
    """`numpy.linspace(start, stop, num)` bit for bit: i * step + start, with the end exact.

    torch.linspace computes the upper half from the end and can differ in the last bit, which
    moves a recall threshold across a recall value and changes AP by a whole 1/101 step.
    """
    step = (stop - start) / (num - 1)
    values = torch.arange(num, dtype=torch.float64) * step + start
    values[-1] = stop
    return values


IOU_THRESHOLDS = _coco_linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = _coco_linspace(0.0, 1.0, 101)


@dataclass
class Boxes:
    """A flat set of boxes over many images.

    Attributes:
        boxes: (N, 4) float (x1, y1, x2, y2).
        labels: (N,) long class index in 0..num_classes-1.
        images: (N,) long image index.
        scores: (N,) float confidence; None for ground truth.
    """

    boxes: Tensor
    labels: Tensor
    images: Tensor
    scores: Tensor | None = None


_FIELDS = ("boxes", "labels", "images", "scores")  # of `Boxes`, in order


def box_iou(first: Tensor, second: Tensor) -> Tensor:
    """IoU of boxes broadcast against each other (`[..., 4]` each), 0 where disjoint.

    Mirrors pycocotools' `bbIou`: a zero-area overlap counts as no overlap, so two empty
    boxes have IoU 0 rather than 0/0.
    """
    x1, y1, x2, y2 = first.unbind(-1)
    u1, v1, u2, v2 = second.unbind(-1)
    width = torch.minimum(x2, u2) - torch.maximum(x1, u1)
    height = torch.minimum(y2, v2) - torch.maximum(y1, v1)
    overlap = (width > 0) & (height > 0)
    intersection = torch.where(overlap, width * height, 0.0)
    union = (x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1) - intersection
    return torch.where(overlap, intersection / torch.where(overlap, union, 1.0), 0.0)


def rank_within_groups(keys: Tensor) -> Tensor:
    """Position of each element within its run of equal keys (keys must be sorted)."""
    if keys.numel() == 0:
        return keys.clone()
    starts = torch.ones_like(keys, dtype=torch.bool)
    starts[1:] = keys[1:] != keys[:-1]
    positions = torch.arange(keys.numel(), device=keys.device)
    first = torch.cummax(torch.where(starts, positions, 0), dim=0).values
    return positions - first


def _match(
    detections: Boxes, truths: Boxes, num_classes: int, max_detections: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy COCO matching of detections to ground truth, per image and class.

    Returns the kept detections' labels (N,), scores (N,) and whether each is matched at
    each IoU threshold (T, N), in (image, class, score-descending) order.
    """
    # Order detections by (image, class), best score first; stable sorts keep the input
    # order among equal scores, as COCOeval's mergesort does.
    scores = detections.scores
    assert scores is not None, "detections carry scores"
    order = torch.sort(-scores, stable=True).indices
    det_keys = detections.images[order] * num_classes + detections.labels[order]
    regroup = torch.sort(det_keys, stable=True).indices
    order, det_keys = order[regroup], det_keys[regroup]
    det_rank = rank_within_groups(det_keys)
    kept = det_rank < max_detections  # COCOeval keeps the top maxDets per image and class
    order, det_keys, det_rank = order[kept], det_keys[kept], det_rank[kept]

    truth_keys = truths.images * num_classes + truths.labels
    truth_order = torch.sort(truth_keys, stable=True).indices
    truth_keys = truth_keys[truth_order]
    truth_rank = rank_within_groups(truth_keys)

    # Dense (group, rank) layout; IoU -1 marks padding, which no threshold accepts.
    groups, inverse = torch.unique(torch.cat([det_keys, truth_keys]), return_inverse=True)
    det_group, truth_group = inverse[: det_keys.numel()], inverse[det_keys.numel() :]
    num_groups = groups.numel()
    depth = int(det_rank.max()) + 1 if det_rank.numel() else 0
    width = int(truth_rank.max()) + 1 if truth_rank.numel() else 0
    det_boxes = torch.zeros(num_groups, depth, 4, dtype=torch.float64)
    det_boxes[det_group, det_rank] = detections.boxes[order].double()
    truth_boxes = torch.zeros(num_groups, width, 4, dtype=torch.float64)
    truth_boxes[truth_group, truth_rank] = truths.boxes[truth_order].double()
    det_present = torch.zeros(num_groups, depth, dtype=torch.bool)
    det_present[det_group, det_rank] = True
    truth_present = torch.zeros(num_groups, width, dtype=torch.bool)
    truth_present[truth_group, truth_rank] = True
    ious = box_iou(det_boxes[:, :, None], truth_boxes[:, None, :])
    ious = torch.where(det_present[:, :, None] & truth_present[:, None, :], ious, -1.0)

    matched = _greedy_matches(ious)[det_group, :, det_rank].T  # (T, N)
    return detections.labels[order], scores[order], matched


def _greedy_matches(ious: Tensor) -> Tensor:
    """Whether each detection is matched at each IoU threshold, (groups, T, depth), from the
    (groups, depth, width) IoUs of detections (best first) against ground truth: each
    detection in turn takes the best ground-truth box no earlier detection has taken."""
    num_groups, depth, width = ious.shape
    thresholds = IOU_THRESHOLDS.clamp(max=1 - 1e-10)[None, :, None]
    num_thresholds = len(IOU_THRESHOLDS)
    truth_taken = torch.zeros(num_groups, num_thresholds, width, dtype=torch.bool)
    det_matched = torch.zeros(num_groups, num_thresholds, depth, dtype=torch.bool)
    for rank in range(depth if width else 0):
        iou = ious[:, rank, None, :]  # (groups, 1, width)
        candidate = (iou >= thresholds) & ~truth_taken
        scored = torch.where(candidate, iou, -1.0)
        # COCOeval keeps the last of equally good ground-truth boxes: argmax of the flip.
        best = width - 1 - scored.flip(-1).argmax(-1)
        found = candidate.any(-1)
        det_matched[:, :, rank] = found
        truth_taken |= torch.nn.functional.one_hot(best, width).bool() & found[..., None]
    return det_matched


def average_precision(
    detections: Boxes, truths: Boxes, num_classes: int, max_detections: int = 100
) -> Tensor:
    """COCOeval's precision table: (IoU thresholds, recall thresholds, classes).

    Classes without ground truth hold -1 throughout, as in COCOeval, and are left out of
    every mean taken from the table.

    Args:
        detections: predicted boxes with scores.
        truths: ground-truth boxes (none crowd, none ignored).
        num_classes: number of classes.
        max_detections: detections kept per image and class, best score first (COCO: 100).
    """
    detections = Boxes(*(getattr(detections, key).detach().cpu() for key in _FIELDS))
    truths = Boxes(*(getattr(truths, key).detach().cpu() for key in _FIELDS[:3]))
    # Labels outside the classes would alias another image's (image, class) group.
    known = (detections.labels >= 0) & (detections.labels < num_classes)
    detections = Boxes(*(getattr(detections, key)[known] for key in _FIELDS))
    if ((truths.labels < 0) | (truths.labels >= num_classes)).any():
        raise ValueError(f"ground-truth labels must lie in 0..{num_classes - 1}")
    labels, scores, matched = _match(detections, truths, num_classes, max_detections)
    return precision_table(labels, scores, matched, truths.labels, num_classes)


def precision_table(
    labels: Tensor, scores: Tensor, matched: Tensor, truth_labels: Tensor, num_classes: int
) -> Tensor:
    """COCOeval's accumulation: (IoU thresholds, recall thresholds, classes) precision from
    matched detections.

    Args:
        labels, scores: (N,) of the kept detections, in image order (within an image, any).
        matched: (T, N) whether each detection is matched at each IoU threshold.
        truth_labels: (G,) classes of every ground-truth object.
        num_classes: number of classes; those without ground truth hold -1.
    """
    num_truths = torch.bincount(truth_labels, minlength=num_classes)
    precision = torch.full(
        (len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), num_classes), -1.0, dtype=torch.float64
    )
    for label in range(num_classes):
        if num_truths[label] == 0:
            continue
        mine = labels == label
        if not mine.any():
            precision[:, :, label] = 0.0
            continue
        # Concatenated in image order, then a stable sort by score across images.
        by_score = torch.sort(-scores[mine].double(), stable=True).indices
        hits = matched[:, mine][:, by_score]
        true_positives = hits.cumsum(1, dtype=torch.float64)
        false_positives = (~hits).cumsum(1, dtype=torch.float64)
        recall = true_positives / num_truths[label].double()
        eps = torch.finfo(torch.float64).eps  # numpy.spacing(1)
        precise = true_positives / (false_positives + true_positives + eps)
        # Precision envelope: the best precision at any recall at least this high.
        precise = precise.flip(1).cummax(1).values.flip(1)
        # Precision at the first point reaching each recall threshold; 0 where none does.
        thresholds = RECALL_THRESHOLDS.expand(len(IOU_THRESHOLDS), -1).contiguous()
        index = torch.searchsorted(recall.contiguous(), thresholds)  # side="left"
        gathered = precise.gather(1, index.clamp(max=precise.shape[1] - 1))
        precision[:, :, label] = torch.where(index < precise.shape[1], gathered, 0.0)
    return precision


def summarize(precision: Tensor, class_names: list[str]) -> dict[str, float]:
    """`map` (AP@[.50:.95]), `map50` (AP@.50) and `ap50/<class>` for classes with ground truth.

    With no ground truth at all every AP is undefined; `map` and `map50` are then 0.
    """
    present = (precision > -1).all(dim=(0, 1))
    if not present.any():
        return {"map": 0.0, "map50": 0.0}
    kept = precision[:, :, present]
    metrics = {"map": float(kept.mean()), "map50": float(kept[0].mean())}
    for label, name in enumerate(class_names):
        if present[label]:
            metrics[f"ap50/{name}"] = float(precision[0, :, label].mean())
    return metrics


class DetectionAP:
    """Accumulates detections and ground truth over batches; computes COCO-style AP.

    Args:
        class_names: one name per class, for the `ap50/<name>` keys.
        max_detections: detections kept per image and class (COCO: 100).
    """

    def __init__(self, class_names: list[str], max_detections: int = 100) -> None:
        self.class_names = list(class_names)
        self.max_detections = max_detections
        self.reset()

    def reset(self) -> None:
        self.detections: list[Boxes] = []
        self.truths: list[Boxes] = []
        self.num_images = 0

    def update(self, predictions: list[dict[str, Tensor]], boxes: Tensor, labels: Tensor) -> None:
        """Add a batch.

        Args:
            predictions: per image {"boxes": (n, 4), "scores": (n,), "labels": (n,)}.
            boxes: ground truth (B, M, 4) xyxy, padded.
            labels: ground-truth classes (B, M), -1 = padding.
        """
        device = boxes.device
        images = torch.arange(self.num_images, self.num_images + len(labels), device=device)
        counts = torch.tensor([len(p["scores"]) for p in predictions], device=device)
        if predictions:
            self.detections.append(
                Boxes(
                    torch.cat([p["boxes"] for p in predictions]).float(),
                    torch.cat([p["labels"] for p in predictions]),
                    images.repeat_interleave(counts),
                    torch.cat([p["scores"] for p in predictions]).float(),
                )
            )
        real = labels >= 0
        image_of = images[:, None].expand_as(labels)
        self.truths.append(Boxes(boxes[real].float(), labels[real], image_of[real]))
        self.num_images += len(labels)

    def compute(self) -> dict[str, float]:
        no_index = torch.zeros(0, dtype=torch.long)
        empty = Boxes(torch.zeros(0, 4), no_index, no_index, torch.zeros(0))
        detections, truths = self.detections or [empty], self.truths or [empty]
        precision = average_precision(
            Boxes(*(torch.cat([getattr(p, key).cpu() for p in detections]) for key in _FIELDS)),
            Boxes(*(torch.cat([getattr(p, key).cpu() for p in truths]) for key in _FIELDS[:3])),
            len(self.class_names),
            self.max_detections,
        )
        return summarize(precision, self.class_names)

"""Metric accumulators that live on the device and sync the host only when computed.

A metric over nothing (an evaluation whose pixels were all invalid or ignored) is NaN, not
0.0 (which would read as a perfect score for an error), with a warning shown once.
"""

import math
import warnings

import torch
from torch import Tensor

NOTHING_COUNTED = (
    "an evaluation had no valid targets (every pixel invalid or ignored): its metrics are "
    "NaN rather than 0"
)


_warned: list[bool] = []  # whether the warning was given in this process


def nothing_counted() -> float:
    """NaN, with a warning the first time in a process."""
    if not _warned:
        _warned.append(True)
        warnings.warn(NOTHING_COUNTED, RuntimeWarning, stacklevel=3)
    return math.nan


class ConfusionMatrix:
    """Counts of (true class, predicted class); yields accuracy, macro-F1 and mean IoU.

    Labels equal to `ignore_index` (or outside 0..num_classes-1) are left out.
    """

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts: Tensor | None = None

    def reset(self) -> None:
        self.counts = None

    def update(self, predicted: Tensor, target: Tensor) -> None:
        predicted, target = predicted.flatten(), target.flatten()
        keep = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        codes = target[keep] * self.num_classes + predicted[keep]
        counts = torch.bincount(codes, minlength=self.num_classes**2)
        counts = counts.view(self.num_classes, self.num_classes)
        self.counts = counts if self.counts is None else self.counts + counts

    def _matrix(self) -> Tensor:
        if self.counts is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64)
        return self.counts.double().cpu()

    def matrix(self) -> Tensor:
        """(true class, predicted class) counts, float64 on the CPU."""
        return self._matrix()

    def accuracy(self) -> float:
        matrix = self._matrix()
        if matrix.sum() == 0:
            return nothing_counted()
        return float(matrix.diagonal().sum() / matrix.sum())

    def macro_f1(self) -> float:
        """Mean F1 over the classes that occur in the targets or the predictions."""
        matrix = self._matrix()
        true_positive = matrix.diagonal()
        support = matrix.sum(1) + matrix.sum(0)  # 2TP + FP + FN
        present = support > 0
        f1 = 2 * true_positive[present] / support[present]
        return float(f1.mean()) if present.any() else nothing_counted()

    def precision_recall(self) -> tuple[list[float], list[float]]:
        """Per class: precision TP / (TP + FP) and recall TP / (TP + FN); 0 where the
        quotient is undefined (a class never predicted, or never a target), as scikit-learn's
        `zero_division=0`."""
        matrix = self._matrix()
        true_positive = matrix.diagonal()
        predicted, actual = matrix.sum(0), matrix.sum(1)
        precision = torch.where(predicted > 0, true_positive / predicted.clamp(min=1), 0.0)
        recall = torch.where(actual > 0, true_positive / actual.clamp(min=1), 0.0)
        return precision.tolist(), recall.tolist()

    def macro_precision_recall(self) -> tuple[float, float]:
        """Mean precision and recall over the classes that occur in the targets or the
        predictions (like `macro_f1`); NaN when nothing was counted."""
        matrix = self._matrix()
        present = ((matrix.sum(0) + matrix.sum(1)) > 0).tolist()
        precision, recall = self.precision_recall()
        kept = [(p, r) for p, r, keep in zip(precision, recall, present, strict=True) if keep]
        if not kept:
            nan = nothing_counted()
            return nan, nan
        return sum(p for p, _ in kept) / len(kept), sum(r for _, r in kept) / len(kept)

    def mean_iou(self) -> float:
        """Mean IoU over the classes that occur in the targets or the predictions."""
        matrix = self._matrix()
        true_positive = matrix.diagonal()
        union = matrix.sum(1) + matrix.sum(0) - true_positive
        present = union > 0
        iou = true_positive[present] / union[present]
        return float(iou.mean()) if present.any() else nothing_counted()


class Mean:
    """Running mean of a per-sample quantity."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def reset(self) -> None:
        self.total, self.count = None, 0

    def update(self, values: Tensor) -> None:
        values = values.detach().double()
        total = values.sum()
        self.total = total if self.total is None else self.total + total
        self.count += values.numel()

    def compute(self) -> float:
        if self.total is None or not self.count:
            return nothing_counted()
        return float(self.total / self.count)


class Histogram:
    """Counts of values in `bins` equal bins over [low, high] (values outside are clamped to
    the end bins); quantiles come out to within one bin width without keeping the values, so
    a median over millions of pixels costs constant memory and no host sync per batch."""

    def __init__(self, low: float, high: float, bins: int) -> None:
        self.low, self.high, self.bins = low, high, bins
        self.counts: Tensor | None = None

    def reset(self) -> None:
        self.counts = None

    def update(self, values: Tensor, weights: Tensor | None = None) -> None:
        """Count `values`; with `weights` (0 / 1 or integer counts, same shape) each value
        counts that many times, so masked-out values are skipped without indexing (which
        would make the host wait for the device)."""
        values = values.detach().flatten()
        scaled = (values.double() - self.low) / (self.high - self.low)
        index = (scaled * self.bins).long().clamp(0, self.bins - 1)
        counts = self.counts
        if counts is None:
            counts = torch.zeros(self.bins, dtype=torch.long, device=values.device)
        amounts = torch.ones_like(index) if weights is None else weights.flatten().long()
        self.counts = counts.index_add(0, index, amounts)

    def quantile(self, fraction: float) -> float:
        """The value below which `fraction` of the counted values lie, interpolated
        linearly within its bin; NaN when nothing was counted."""
        if self.counts is None:
            return nothing_counted()
        counts = self.counts.double().cpu()
        total = float(counts.sum())
        if total == 0:
            return nothing_counted()
        below = torch.cumsum(counts, 0)
        wanted = fraction * total
        bin_index = int(torch.searchsorted(below, torch.tensor([wanted], dtype=torch.float64)))
        bin_index = min(bin_index, self.bins - 1)
        before = float(below[bin_index - 1]) if bin_index > 0 else 0.0
        inside = (wanted - before) / max(float(counts[bin_index]), 1.0)
        width = (self.high - self.low) / self.bins
        return self.low + (bin_index + inside) * width

"""Property-based tests (hypothesis) of the metric accumulators: invariants that must hold for
any labels, any batching and any class renaming."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlrun.tasks.metrics import ConfusionMatrix, Mean

labels = st.integers(2, 6).flatmap(
    lambda classes: st.tuples(
        st.just(classes),
        st.lists(
            st.tuples(st.integers(-1, classes - 1), st.integers(0, classes - 1)),
            min_size=1,
            max_size=60,
        ),
    )
)


def confusion(classes: int, pairs: list[tuple[int, int]]) -> ConfusionMatrix:
    matrix = ConfusionMatrix(classes, ignore_index=-1)
    target, predicted = (torch.tensor(column) for column in zip(*pairs, strict=True))
    matrix.update(predicted, target)
    return matrix


def brute_force(classes: int, pairs: list[tuple[int, int]]) -> dict[str, float]:
    """Accuracy, mean IoU, macro-F1, macro precision and recall straight from their
    definitions; NaN when every label is ignored (nothing to score)."""
    kept = [(t, p) for t, p in pairs if t >= 0]
    if not kept:
        return dict.fromkeys(("acc", "miou", "f1", "precision", "recall"), math.nan)
    ious, f1s, precisions, recalls = [], [], [], []
    for label in range(classes):
        tp = sum(t == label and p == label for t, p in kept)
        fp = sum(t != label and p == label for t, p in kept)
        fn = sum(t == label and p != label for t, p in kept)
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
            f1s.append(2 * tp / (2 * tp + fp + fn))
            precisions.append(tp / (tp + fp) if tp + fp else 0.0)
            recalls.append(tp / (tp + fn) if tp + fn else 0.0)
    accuracy = sum(t == p for t, p in kept) / len(kept)
    return {
        "acc": accuracy,
        "miou": sum(ious) / len(ious),
        "f1": sum(f1s) / len(f1s),
        "precision": sum(precisions) / len(precisions),
        "recall": sum(recalls) / len(recalls),
    }


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, abs_tol=1e-12)


@settings(max_examples=80, deadline=None)
@given(labels)
def test_confusion_metrics_equal_their_definitions(case: tuple[int, list[tuple[int, int]]]) -> None:
    classes, pairs = case
    matrix = confusion(classes, pairs)
    expected = brute_force(classes, pairs)
    precision, recall = matrix.macro_precision_recall()
    assert same(matrix.accuracy(), expected["acc"])
    assert same(matrix.mean_iou(), expected["miou"])
    assert same(matrix.macro_f1(), expected["f1"])
    assert same(precision, expected["precision"]) and same(recall, expected["recall"])
    for value in (matrix.accuracy(), matrix.mean_iou(), matrix.macro_f1(), precision, recall):
        assert math.isnan(value) == (not any(t >= 0 for t, _ in pairs))
        assert math.isnan(value) or 0.0 <= value <= 1.0


@settings(max_examples=60, deadline=None)
@given(labels, st.integers(1, 7), st.randoms(use_true_random=False))
def test_confusion_metrics_ignore_batching_and_order(
    case: tuple[int, list[tuple[int, int]]], pieces: int, shuffler: object
) -> None:
    """Accumulating in any number of batches, in any order, gives the same counts."""
    classes, pairs = case
    whole = confusion(classes, pairs)
    shuffled = list(pairs)
    shuffler.shuffle(shuffled)  # type: ignore[attr-defined]
    batched = ConfusionMatrix(classes, ignore_index=-1)
    size = max(1, len(shuffled) // pieces)
    for start in range(0, len(shuffled), size):
        target, predicted = zip(*shuffled[start : start + size], strict=True)
        batched.update(torch.tensor(predicted), torch.tensor(target))
    assert torch.equal(batched.counts, whole.counts)


@settings(max_examples=60, deadline=None)
@given(labels, st.permutations(range(6)))
def test_confusion_metrics_do_not_depend_on_class_names(
    case: tuple[int, list[tuple[int, int]]], permutation: list[int]
) -> None:
    """Renaming the classes consistently in targets and predictions changes nothing."""
    classes, pairs = case
    rename = [label for label in permutation if label < classes]
    renamed = [(rename[t] if t >= 0 else t, rename[p]) for t, p in pairs]
    original, other = confusion(classes, pairs), confusion(classes, renamed)
    assert same(original.mean_iou(), other.mean_iou())
    assert same(original.macro_f1(), other.macro_f1())
    assert same(original.accuracy(), other.accuracy())


@settings(max_examples=60, deadline=None)
@given(labels)
def test_perfect_predictions_score_one(case: tuple[int, list[tuple[int, int]]]) -> None:
    classes, pairs = case
    perfect = [(t, t if t >= 0 else p) for t, p in pairs]
    matrix = confusion(classes, perfect)
    if any(t >= 0 for t, _ in pairs):
        assert matrix.accuracy() == matrix.mean_iou() == matrix.macro_f1() == 1.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50),
    st.integers(1, 5),
)
def test_running_mean_equals_the_mean_for_any_batching(values: list[float], pieces: int) -> None:
    mean = Mean()
    size = max(1, len(values) // pieces)
    for start in range(0, len(values), size):
        mean.update(torch.tensor(values[start : start + size], dtype=torch.float64))
    assert math.isclose(mean.compute(), sum(values) / len(values), rel_tol=1e-9, abs_tol=1e-6)

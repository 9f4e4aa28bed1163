"""The `det` task: head shapes, box encoding, COCO-style AP against pycocotools, a smoke run."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mtlrun.data import DatasetInfo
from mtlrun.data.shapes import ShapesData
from mtlrun.engine import fit
from mtlrun.errors import UserError
from mtlrun.models.backbones import ConvNet, ResNet18
from mtlrun.tasks.detection import (
    DetectionTask,
    box_distances,
    centerness_target,
    decode,
    encode,
    locations,
)
from mtlrun.tasks.detection_metrics import Boxes, DetectionAP, average_precision, summarize

CLASSES = ["circle", "square", "triangle"]
INFO = DatasetInfo(
    name="tiny",
    image_size=(32, 32),
    targets=frozenset({"det"}),
    num_classes={"det": len(CLASSES)},
    class_names={"det": CLASSES},
)


@pytest.mark.parametrize(
    ("backbone_type", "output_stride", "side"),
    [(ConvNet, 4, 8), (ResNet18, 4, 8), (ResNet18, None, 4)],
    ids=["cnn", "resnet18", "resnet18-native-stride"],
)
def test_head_output_shapes(
    backbone_type: type[nn.Module], output_stride: int | None, side: int
) -> None:
    backbone = backbone_type()
    task = DetectionTask(
        "det", INFO, backbone.out_channels, backbone.stride, output_stride=output_stride
    )
    model = nn.Sequential(backbone, task.head).to(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    output = model(images)
    assert output["logits"].shape == (2, len(CLASSES), side, side)
    assert output["distances"].shape == (2, 4, side, side)
    assert output["centerness"].shape == (2, 1, side, side)
    assert (output["distances"] > 0).all()
    assert task.stride * side == 32


def _as_predictions(labels: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor, classes: int):
    """Encoded targets dressed up as confident head outputs (B, L, ...)."""
    positive = labels >= 0
    one_hot = torch.nn.functional.one_hot(labels.clamp(min=0), classes).bool() & positive[..., None]
    logits = torch.where(one_hot, 20.0, -20.0)
    distances = torch.where(positive[..., None], box_distances(points, boxes), 1.0)
    centre = centerness_target(distances).clamp(1e-4, 1 - 1e-4)
    return logits, distances, torch.where(positive, torch.logit(centre), -20.0)


@pytest.mark.parametrize("stride", [4, 8])
def test_encode_decode_round_trip(stride: int) -> None:
    boxes = torch.tensor(
        [[[2.0, 3.0, 14.0, 12.0], [17.0, 16.0, 30.0, 31.0], [0.0, 0.0, 0.0, 0.0]],
         [[5.0, 18.0, 27.0, 30.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]
    )  # fmt: skip
    labels = torch.tensor([[0, 2, -1], [1, -1, -1]])
    points = locations(32 // stride, 32 // stride, stride, torch.device("cpu"))
    assigned, assigned_boxes = encode(boxes, labels, points, stride, center_radius=1.5)
    assert ((assigned >= 0).sum(1) > 0).all()
    predictions = _as_predictions(assigned, assigned_boxes, points, len(CLASSES))
    detections = decode(*predictions, points, (32, 32), 0.05, 0.6, 100)
    for image, found in enumerate(detections):
        real = labels[image] >= 0
        order = torch.argsort(found["labels"])
        torch.testing.assert_close(found["boxes"][order], boxes[image][real])
        assert found["labels"][order].tolist() == labels[image][real].tolist()


def test_encode_decode_round_trip_on_shapes() -> None:
    """Every box with a location of its own comes back; nothing else does."""
    data = ShapesData(val_size=32, batch_size=32, max_objects=3)
    target = next(data.val_batches())["targets"]["det"]
    points = locations(8, 8, 4, torch.device("cpu"))
    assigned, assigned_boxes = encode(target["boxes"], target["labels"], points, 4, 1.5)
    predictions = _as_predictions(assigned, assigned_boxes, points, data.info.num_classes["det"])
    # NMS IoU 0.99: only the copies of one box (IoU 1) merge, never two real objects.
    detections = decode(*predictions, points, (32, 32), 0.05, 0.99, 100)
    for image, found in enumerate(detections):
        expected = {
            (tuple(box.tolist()), int(label))
            for box, label in zip(assigned_boxes[image], assigned[image], strict=True)
            if label >= 0
        }
        got = {
            (tuple(box.round().tolist()), int(label))
            for box, label in zip(found["boxes"], found["labels"], strict=True)
        }
        assert got == expected
        torch.testing.assert_close(found["boxes"], found["boxes"].round())


def test_loss_is_finite_and_trains_the_head() -> None:
    data = ShapesData(train_size=32, val_size=8, batch_size=8)
    target = next(data.train_batches(0))["targets"]["det"]
    task = DetectionTask("det", data.info, in_channels=16, stride=4, hidden=32)
    features = torch.randn(8, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the engine calls it with amp on
        loss = task.loss(task.head(features), target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert task.head.class_logits.weight.grad.abs().sum() > 0
    assert task.head.box_regression.weight.grad.abs().sum() > 0


def test_no_boxes_at_all() -> None:
    """An image set without objects gives a finite loss and no crash in metrics."""
    task = DetectionTask("det", INFO, 128, 4)
    output = task.head(torch.randn(2, 128, 8, 8))
    target = {"boxes": torch.zeros(2, 0, 4), "labels": torch.zeros(2, 0, dtype=torch.long)}
    assert torch.isfinite(task.loss(output, target))
    task.reset_metrics()
    task.update_metrics(output, target)
    assert task.compute_metrics() == {"map": 0.0, "map50": 0.0}


# --- COCO-style AP against pycocotools ---------------------------------------------------


def _random_boxes(generator: torch.Generator, count: int, side: float = 64.0) -> torch.Tensor:
    corner = torch.rand(count, 2, generator=generator) * side * 0.8
    size = torch.rand(count, 2, generator=generator) * side * 0.4 + 1
    return torch.cat([corner, corner + size], dim=1)


def _random_case(seed: int, num_images: int = 12, num_classes: int = 4) -> tuple[Boxes, Boxes]:
    """Ground truth with 0..5 boxes per image (every 5th image none; the last class never
    has any) and detections that are partly jittered ground truth, partly noise (every 4th
    image none; one image with more than 100 of one class)."""
    generator = torch.Generator().manual_seed(seed)
    truth_parts: list[tuple[torch.Tensor, ...]] = []
    detection_parts: list[tuple[torch.Tensor, ...]] = []
    for image in range(num_images):
        count = int(torch.randint(0, 6, (1,), generator=generator)) if image % 5 else 0
        boxes = _random_boxes(generator, count)
        labels = torch.randint(0, num_classes - 1, (count,), generator=generator)
        truth_parts.append((boxes, labels, torch.full((count,), image)))
        found = int(torch.randint(0, 10, (1,), generator=generator)) if image % 4 else 0
        if image == 1:
            found = 130
        near, near_labels = _random_boxes(generator, found), torch.zeros(found, dtype=torch.long)
        if count:
            source = torch.randint(0, count, (found,), generator=generator)
            near = boxes[source] + torch.randn(found, 4, generator=generator) * 3
            near_labels = labels[source]
        noisy = torch.rand(found, generator=generator) < 0.4
        detected = torch.where(noisy[:, None], _random_boxes(generator, found), near)
        corner = detected[:, :2]
        detected = torch.cat([corner, torch.maximum(detected[:, 2:], corner + 0.5)], 1)
        other = torch.randint(0, num_classes, (found,), generator=generator)
        relabel = torch.rand(found, generator=generator) < 0.3
        detected_labels = torch.where(relabel, other, near_labels)
        scores = torch.rand(found, generator=generator)
        detection_parts.append((detected, detected_labels, torch.full((found,), image), scores))
    truths = Boxes(*(torch.cat(column) for column in zip(*truth_parts, strict=True)))
    detections = Boxes(*(torch.cat(column) for column in zip(*detection_parts, strict=True)))
    return detections, truths


def _pycocotools(detections: Boxes, truths: Boxes, num_images: int, num_classes: int):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box: torch.Tensor) -> list[float]:
        x1, y1, x2, y2 = box.double().tolist()
        return [x1, y1, x2 - x1, y2 - y1]

    annotations = []
    for index, (box, label, image) in enumerate(
        zip(truths.boxes, truths.labels, truths.images, strict=True)
    ):
        bbox = xywh(box)
        annotations.append({
            "id": index + 1,  # COCOeval reads id 0 as "unmatched"
            "image_id": int(image), "category_id": int(label) + 1, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": 0,
        })  # fmt: skip
    results = [
        {"image_id": int(image), "category_id": int(label) + 1, "bbox": xywh(box),
         "score": float(score)}
        for box, label, image, score in zip(
            detections.boxes, detections.labels, detections.images, detections.scores, strict=True
        )
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        ground_truth = COCO()
        ground_truth.dataset = {
            "images": [{"id": image} for image in range(num_images)],
            "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)],
            "annotations": annotations,
        }
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


@pytest.mark.parametrize("seed", range(6))
def test_average_precision_matches_pycocotools(seed: int) -> None:
    num_images, num_classes = 12, 4
    detections, truths = _random_case(seed, num_images, num_classes)
    if seed % 2:  # integer boxes: ties in IoU, as detections on pixel grids give
        detections.boxes, truths.boxes = detections.boxes.round(), truths.boxes.round()
        detections.scores = (detections.scores * 4).round() / 4  # and ties in score
    reference = _pycocotools(detections, truths, num_images, num_classes)
    precision = average_precision(detections, truths, num_classes)
    names = [f"class{k}" for k in range(num_classes)]
    metrics = summarize(precision, names)
    assert metrics["map"] == pytest.approx(reference.stats[0], abs=1e-3)
    assert metrics["map50"] == pytest.approx(reference.stats[1], abs=1e-3)
    table = reference.eval["precision"][0, :, :, 0, -1]  # IoU .5, area all, maxDets 100
    for label, name in enumerate(names):
        if (table[:, label] > -1).all():
            assert metrics[f"ap50/{name}"] == pytest.approx(table[:, label].mean(), abs=1e-3)
        else:
            assert f"ap50/{name}" not in metrics  # no ground truth: left out, as COCOeval does
    whole_table = reference.eval["precision"][..., 0, -1]
    np.testing.assert_allclose(precision.numpy(), whole_table, atol=1e-9)


def test_accumulator_over_padded_batches() -> None:
    """Perfect detections give AP 1; a missed object and a false positive lower it."""
    boxes = torch.tensor(
        [[[1.0, 1.0, 9.0, 9.0], [0, 0, 0, 0]], [[4.0, 4.0, 20.0, 12.0], [10, 10, 30, 30]]]
    )
    labels = torch.tensor([[0, -1], [1, 2]])
    metric = DetectionAP(CLASSES)
    perfect = [
        {"boxes": boxes[i][labels[i] >= 0], "scores": torch.ones(int((labels[i] >= 0).sum())),
         "labels": labels[i][labels[i] >= 0]}
        for i in range(2)
    ]  # fmt: skip
    metric.update(perfect[:1], boxes[:1], labels[:1])
    metric.update(perfect[1:], boxes[1:], labels[1:])
    expected = {"map", "map50", "ap50/circle", "ap50/square", "ap50/triangle"}
    assert metric.compute() == pytest.approx(dict.fromkeys(expected, 1.0))
    metric.reset()
    flawed = [perfect[0], {key: value[:1] for key, value in perfect[1].items()}]
    flawed[0] = {
        "boxes": torch.cat([perfect[0]["boxes"], torch.tensor([[20.0, 20, 30, 30]])]),
        "scores": torch.tensor([0.5, 0.9]),
        "labels": torch.tensor([0, 0]),
    }
    metric.update(flawed, boxes, labels)
    result = metric.compute()
    # circle: a false positive ranked above the hit: precision 1/2 at every recall.
    assert result["ap50/circle"] == pytest.approx(0.5)
    assert result["ap50/square"] == pytest.approx(1.0) and result["ap50/triangle"] == 0.0
    assert result["map50"] == pytest.approx(0.5)


# --- wiring ------------------------------------------------------------------------------


def test_det_on_dataset_without_boxes_is_one_clear_line() -> None:
    info = DatasetInfo(name="flowers", image_size=(32, 32), targets=frozenset({"cls"}))
    with pytest.raises(UserError) as error:
        DetectionTask("det", info, 128, 4)
    message = str(error.value)
    assert "\n" not in message
    assert "'det'" in message and "'flowers'" in message


def test_pictures() -> None:
    data = ShapesData(val_size=4, batch_size=4)
    batch = next(data.val_batches())
    task = DetectionTask("det", data.info, 128, 4)
    output = task.head(torch.randn(4, 128, 8, 8))
    pictures = task.pictures(batch["image"], output, batch["targets"]["det"])
    picture = pictures["truth_vs_prediction"]
    assert picture.shape[0] == 3 and picture.shape[1] > 4 * 128 and picture.shape[2] > 3 * 128
    assert picture.min() >= 0 and picture.max() <= 1


@pytest.mark.slow  # a training run of all five tasks
def test_smoke_run_with_all_five_tasks(build_tiny_run, tmp_path: Path) -> None:
    run = build_tiny_run(tmp_path, "tasks=[cls,det,seg,depth,gen]", "experiment=smoke")
    final = fit(run)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["step"] == final["step"] > 0
    for key in ("val/det/map", "val/det/map50", "val/det/loss", "val/depth/abs_err",
                "val/depth/rel_err", "val/depth/loss"):  # fmt: skip
        assert np.isfinite(written[key]), key
    assert 0.0 <= written["val/det/map"] <= written["val/det/map50"] <= 1.0
    assert (tmp_path / "checkpoints" / "last.pt").is_file()

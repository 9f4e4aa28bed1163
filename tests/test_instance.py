"""The `inst` task: head shapes on every backbone, the loss, mask and box AP against
pycocotools (random and hand-made cases), pictures, and a run beside every other task."""

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
from mtlrun.models.backbones import ConvNet, ResNet
from mtlrun.tasks.instance import InstanceTask
from mtlrun.tasks.instance_metrics import InstanceAP, masks_to_boxes, precision_of

CLASSES = ["circle", "square", "triangle"]
INFO = DatasetInfo(
    name="tiny",
    image_size=(32, 32),
    targets=frozenset({"inst"}),
    num_classes={"inst": len(CLASSES)},
    class_names={"inst": CLASSES},
)


@pytest.mark.parametrize(
    ("backbone", "output_stride", "side"),
    [
        (lambda: ConvNet(), 4, 8),
        (lambda: ResNet(18, small_input=True), 4, 8),
        (lambda: ResNet(18, small_input=True, neck="fpn", neck_channels=32), 4, 32),
        (lambda: ResNet(18, small_input=True), None, 4),
    ],
    ids=["cnn", "resnet18", "resnet18-fpn", "resnet18-native-stride"],
)
def test_head_output_shapes(backbone, output_stride: int | None, side: int) -> None:
    network = backbone()
    task = InstanceTask(
        "inst", INFO, network.out_channels, network.stride, output_stride=output_stride,
        hidden=32,
    )  # fmt: skip
    model = nn.Sequential(network, task.head).to(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    output = model(images)
    assert output["logits"].shape == (2, len(CLASSES), side, side)
    assert output["controller"].shape == (2, 8 * 11 + 8 * 9 + 9, side, side)
    mask_side = 32 // task.head.mask_stride
    assert output["mask_features"].shape == (2, 8, mask_side, mask_side)
    detections = task.detect({key: value.detach() for key, value in output.items()})
    for detection in detections:
        assert detection["masks"].shape == (len(detection["scores"]), 32, 32)
        assert detection["masks"].dtype == torch.bool


def test_bad_mask_stride_is_one_clear_line() -> None:
    with pytest.raises(UserError, match="mask_stride=3"):
        InstanceTask("inst", INFO, 16, 4, mask_stride=3)


def test_loss_trains_the_head_and_logs_its_terms() -> None:
    torch.manual_seed(0)
    data = ShapesData(train_size=16, val_size=4, batch_size=16)
    target = next(data.train_batches(0))["targets"]["inst"]
    task = InstanceTask("inst", data.info, in_channels=16, stride=4, hidden=32)
    features = torch.randn(16, 16, 8, 8)
    optimizer = torch.optim.Adam(task.head.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = task.loss(task.head(features), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.6 * losses[0]
    terms = task.train_scalars()
    assert set(terms) == {"class", "centerness", "box", "mask"}
    assert float(sum(terms.values())) == pytest.approx(losses[-1], rel=1e-4)


def test_no_objects_still_reaches_every_parameter() -> None:
    """An all-padding batch: a finite loss whose gradient reaches every head parameter (so
    data-parallel training never finds one unused)."""
    task = InstanceTask("inst", INFO, in_channels=16, stride=4, hidden=32)
    target = {
        "masks": torch.zeros(2, 3, 32, 32, dtype=torch.bool),
        "labels": torch.full((2, 3), -1),
    }
    loss = task.loss(task.head(torch.randn(2, 16, 8, 8)), target)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in task.head.parameters())
    empty = {
        "masks": torch.zeros(2, 0, 32, 32, dtype=torch.bool),
        "labels": torch.zeros(2, 0).long(),
    }
    assert torch.isfinite(task.loss(task.head(torch.randn(2, 16, 8, 8)), empty))


def test_no_detections_give_empty_stacks_and_many_come_in_chunks() -> None:
    task = InstanceTask("inst", INFO, in_channels=16, stride=4, hidden=16)
    with torch.no_grad():
        output = task.head(torch.randn(3, 16, 8, 8))
    assert [d["masks"].shape for d in task.detect(output, 0.999)] == [(0, 32, 32)] * 3
    everything = task.detect(output, 0.0)
    chunked = InstanceTask("inst", INFO, in_channels=16, stride=4, hidden=16)
    chunked.head.load_state_dict(task.head.state_dict())
    output["mask_features"] = output["mask_features"].repeat_interleave(64, -1)  # many pixels
    assert (
        sum(len(d["scores"]) for d in everything) > 2**21 // output["mask_features"][0, 0].numel()
    )
    again = chunked.detect(output, 0.0)
    assert [d["masks"].shape[0] for d in again] == [len(d["scores"]) for d in everything]


def test_masks_to_boxes_spans_pixel_edges() -> None:
    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 3:6] = True
    assert masks_to_boxes(masks).tolist() == [[3.0, 1.0, 6.0, 3.0], [0.0, 0.0, 0.0, 0.0]]


# --- mask and box AP against pycocotools ---------------------------------------------------

SIDE = 24


def _blob(generator: torch.Generator) -> torch.Tensor:
    """A random rectangle with a few pixels flipped: a (SIDE, SIDE) bool mask."""
    x, y = torch.randint(0, SIDE - 4, (2,), generator=generator).tolist()
    width, height = torch.randint(2, 12, (2,), generator=generator).tolist()
    mask = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    mask[y : y + height, x : x + width] = True
    flips = torch.rand(SIDE, SIDE, generator=generator) < 0.03
    mask ^= flips
    if not mask.any():
        mask[y, x] = True
    return mask


def _jitter(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
    moved = mask.roll(shifts=shift, dims=(0, 1))
    return moved ^ (torch.rand(SIDE, SIDE, generator=generator) < 0.05)


def _random_case(seed: int, num_images: int = 10, num_classes: int = 4):
    """Per image: ground truth (masks, labels) with 0..5 objects (every 5th image none; the
    last class never has any) and predictions, partly jittered ground truth, partly noise
    (every 4th image none; image 1 has more than 100 of one class), with ties in score."""
    generator = torch.Generator().manual_seed(seed)
    truths, predictions = [], []
    for image in range(num_images):
        count = int(torch.randint(0, 6, (1,), generator=generator)) if image % 5 else 0
        masks = torch.stack([_blob(generator) for _ in range(count)]) if count else None
        labels = torch.randint(0, num_classes - 1, (count,), generator=generator)
        truths.append((masks, labels))
        found = int(torch.randint(0, 10, (1,), generator=generator)) if image % 4 else 0
        found = 110 if image == 1 else found
        detected, detected_labels = [], []
        for _ in range(found):
            if count and float(torch.rand(1, generator=generator)) < 0.6:
                source = int(torch.randint(0, count, (1,), generator=generator))
                detected.append(_jitter(masks[source], generator))
                detected_labels.append(int(labels[source]))
            else:
                detected.append(_blob(generator))
                detected_labels.append(
                    int(torch.randint(0, num_classes, (1,), generator=generator))
                )
        if image == 1:
            detected_labels = [0] * found
        det_masks = torch.stack(detected) if found else torch.zeros(0, SIDE, SIDE, dtype=torch.bool)
        boxes = masks_to_boxes(det_masks) + torch.randn(found, 4, generator=generator).abs() * 0.5
        scores = (torch.rand(found, generator=generator) * 8).round() / 8  # ties
        predictions.append(
            {"masks": det_masks, "boxes": boxes, "scores": scores,
             "labels": torch.tensor(detected_labels, dtype=torch.long)}
        )  # fmt: skip
    return truths, predictions


def _padded(truths, slots: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.zeros(len(truths), slots, SIDE, SIDE, dtype=torch.bool)
    labels = torch.full((len(truths), slots), -1)
    for image, (image_masks, image_labels) in enumerate(truths):
        if image_masks is not None:
            masks[image, : len(image_masks)] = image_masks
            labels[image, : len(image_labels)] = image_labels
    return masks, labels


def _pycocotools(truths, predictions, num_classes: int, iou_type: str):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(mask: torch.Tensor) -> dict:
        encoded = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
        encoded["counts"] = encoded["counts"].decode()
        return encoded

    def xywh(box: torch.Tensor) -> list[float]:
        x1, y1, x2, y2 = box.double().tolist()
        return [x1, y1, x2 - x1, y2 - y1]

    annotations = []
    for image, (masks, labels) in enumerate(truths):
        for mask, label in zip(masks if masks is not None else [], labels, strict=True):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image, "category_id": int(label) + 1,
                "segmentation": rle(mask), "area": float(mask.sum()),
                "bbox": xywh(masks_to_boxes(mask)), "iscrowd": 0,
            })  # fmt: skip
    results = []
    for image, prediction in enumerate(predictions):
        for mask, box, label, score in zip(
            prediction["masks"],
            prediction["boxes"],
            prediction["labels"],
            prediction["scores"],
            strict=True,
        ):
            found = {"image_id": image, "category_id": int(label) + 1, "score": float(score)}
            found.update({"segmentation": rle(mask)} if iou_type == "segm" else {"bbox": xywh(box)})
            results.append(found)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        ground_truth = COCO()
        ground_truth.dataset = {
            "images": [
                {"id": image, "height": SIDE, "width": SIDE} for image in range(len(truths))
            ],
            "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)],
            "annotations": annotations,
        }
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def _ours(truths, predictions, num_classes: int, batch: int = 3) -> InstanceAP:
    metric = InstanceAP([f"class{k}" for k in range(num_classes)])
    masks, labels = _padded(truths)
    for begin in range(0, len(truths), batch):  # over several batches
        end = begin + batch
        metric.update(predictions[begin:end], masks[begin:end], labels[begin:end])
    return metric


@pytest.mark.parametrize("seed", range(5))
def test_mask_and_box_ap_match_pycocotools(seed: int) -> None:
    num_classes = 4
    truths, predictions = _random_case(seed, num_classes=num_classes)
    metric = _ours(truths, predictions, num_classes)
    metrics = metric.compute()
    segm = _pycocotools(truths, predictions, num_classes, "segm")
    bbox = _pycocotools(truths, predictions, num_classes, "bbox")
    assert metrics["map"] == pytest.approx(segm.stats[0], abs=1e-3)
    assert metrics["map50"] == pytest.approx(segm.stats[1], abs=1e-3)
    assert metrics["box_map"] == pytest.approx(bbox.stats[0], abs=1e-3)
    assert metrics["box_map50"] == pytest.approx(bbox.stats[1], abs=1e-3)
    table = segm.eval["precision"][0, :, :, 0, -1]
    for label in range(num_classes):
        key = f"ap50/class{label}"
        if (table[:, label] > -1).all():
            assert metrics[key] == pytest.approx(table[:, label].mean(), abs=1e-3)
        else:
            assert key not in metrics  # no ground truth: left out, as COCOeval does
    ours = precision_of(metric.images, "mask_ious", num_classes).numpy()
    np.testing.assert_allclose(ours, segm.eval["precision"][..., 0, -1], atol=1e-9)
    ours = precision_of(metric.images, "box_ious", num_classes).numpy()
    np.testing.assert_allclose(ours, bbox.eval["precision"][..., 0, -1], atol=1e-9)


def _prediction(masks: list[torch.Tensor], labels: list[int], scores: list[float]) -> dict:
    stacked = torch.stack(masks) if masks else torch.zeros(0, SIDE, SIDE, dtype=torch.bool)
    return {
        "masks": stacked, "boxes": masks_to_boxes(stacked),
        "labels": torch.tensor(labels, dtype=torch.long), "scores": torch.tensor(scores),
    }  # fmt: skip


def test_crowded_duplicates_match_pycocotools() -> None:
    """Three touching objects of one class, each found three times over (duplicates a little
    worse each time), and one duplicate of the wrong class."""
    generator = torch.Generator().manual_seed(1)
    objects = []
    for column in range(3):
        mask = torch.zeros(SIDE, SIDE, dtype=torch.bool)
        mask[4:16, column * 7 : column * 7 + 7] = True
        objects.append(mask)
    truths = [(torch.stack(objects), torch.tensor([1, 1, 1]))]
    found, labels, scores = [], [], []
    for index, mask in enumerate(objects):
        for copy in range(3):
            found.append(_jitter(mask, generator) if copy else mask)
            labels.append(1)
            scores.append(0.9 - 0.1 * copy - 0.01 * index)
    found.append(objects[0])
    labels.append(0)
    scores.append(0.95)
    predictions = [_prediction(found, labels, scores)]
    metrics = _ours(truths, predictions, 2).compute()
    segm = _pycocotools(truths, predictions, 2, "segm")
    bbox = _pycocotools(truths, predictions, 2, "bbox")
    assert metrics["map"] == pytest.approx(segm.stats[0], abs=1e-3)
    assert metrics["map50"] == pytest.approx(segm.stats[1], abs=1e-3) == 1.0
    assert metrics["box_map"] == pytest.approx(bbox.stats[0], abs=1e-3)
    assert "ap50/class0" not in metrics  # no ground truth of class 0


def test_no_predictions_and_no_ground_truth() -> None:
    truths, _ = _random_case(0, num_images=4, num_classes=3)
    silent = [_prediction([], [], []) for _ in truths]
    metrics = _ours(truths, silent, 3).compute()
    assert metrics["map"] == metrics["map50"] == metrics["box_map"] == 0.0
    present = {int(label) for _, labels in truths for label in labels}
    assert {key for key in metrics if key.startswith("ap50/")} == {
        f"ap50/class{k}" for k in present
    }
    # No ground truth at all: every AP undefined (COCOeval's -1), reported as 0.
    nothing = [(None, torch.zeros(0, dtype=torch.long))] * 3
    found = [_prediction([_blob(torch.Generator().manual_seed(k))], [0], [0.5]) for k in range(3)]
    metric = _ours(nothing, found, 3)
    assert metric.compute() == {"map": 0.0, "map50": 0.0, "box_map": 0.0, "box_map50": 0.0}
    segm = _pycocotools(nothing, found, 3, "segm")
    table = precision_of(metric.images, "mask_ious", 3).numpy()
    np.testing.assert_allclose(table, segm.eval["precision"][..., 0, -1])
    empty = _ours([], [], 3).compute()
    assert empty["map"] == 0.0


def test_perfect_predictions_score_one() -> None:
    data = ShapesData(val_size=8, batch_size=8)
    target = next(data.val_batches())["targets"]["inst"]
    metric = InstanceAP(list(data.info.class_names["inst"]))
    predictions = []
    for masks, labels in zip(target["masks"], target["labels"], strict=True):
        real = labels >= 0
        predictions.append(
            _prediction(list(masks[real]), labels[real].tolist(), [1.0] * int(real.sum()))
        )
    metric.update(predictions, target["masks"], target["labels"])
    result = metric.compute()
    assert result["map"] == result["map50"] == result["box_map"] == pytest.approx(1.0)


# --- data, pictures, wiring -------------------------------------------------------------------


def test_shapes_instance_masks_are_the_visible_pixels() -> None:
    data = ShapesData(val_size=16, batch_size=16, max_objects=4)
    targets = next(data.val_batches())["targets"]
    masks, labels = targets["inst"]["masks"], targets["inst"]["labels"]
    assert masks.dtype == torch.bool and masks.shape[:2] == labels.shape
    assert torch.equal(labels, targets["det"]["labels"])
    real = labels >= 0
    assert bool(masks[real].flatten(1).any(1).all()) and not masks[~real].any()
    assert torch.equal(masks_to_boxes(masks), targets["det"]["boxes"])
    assert int(masks.sum(1).max()) <= 1  # no pixel belongs to two objects
    # Painting each mask with its class gives the semantic map.
    painted = (masks * (labels[..., None, None] + 1).clamp(min=0)).sum(1)
    assert torch.equal(painted, targets["seg"])


def test_pictures_have_a_tile_per_column() -> None:
    data = ShapesData(val_size=4, batch_size=4)
    batch = next(data.val_batches())
    task = InstanceTask("inst", data.info, 128, 4)
    with torch.no_grad():
        output = task.head(torch.randn(4, 128, 8, 8))
    picture = task.pictures(batch["image"], output, batch["targets"]["inst"])["truth_vs_prediction"]
    assert picture.shape[0] == 3 and picture.shape[1] > 4 * 128 and picture.shape[2] > 3 * 128
    assert picture.min() >= 0 and picture.max() <= 1


def test_an_empty_predicted_mask_is_left_out_of_the_picture() -> None:
    from mtlrun.tasks.pictures import draw_instances

    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[1, 2:5, 2:6] = True
    drawn = draw_instances(
        torch.rand(1, 3, 8, 8), [masks], [torch.tensor([0, 1])], 24, CLASSES,
        [torch.tensor([0.9, 0.5])],
    )  # fmt: skip
    assert drawn.shape == (1, 3, 192, 192)


def test_tags_stay_inside_the_picture_and_apart() -> None:
    """Crowded duplicates: each tag lies inside the picture, and none covers another."""
    from mtlrun.tasks.pictures import _overlap, _tag_places

    boxes = [[150, 2, 190, 40]] * 4 + [[0, 0, 30, 30]]
    places = _tag_places(boxes, [(60, 14)] * 5, 192, 192)
    for left, top, right, bottom in places:
        assert 0 <= left < right <= 192 and 0 <= top < bottom <= 192
    assert not any(_overlap(a, b) for i, a in enumerate(places) for b in places[i + 1 :])


@pytest.mark.slow  # a training run of five tasks
def test_inst_trains_and_reports_beside_every_task(build_tiny_run, tmp_path: Path) -> None:
    run = build_tiny_run(tmp_path, "tasks=[cls,det,seg,inst,gen]", "experiment=smoke")
    final = fit(run)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["step"] == final["step"] > 0
    for task in ("cls", "det", "seg", "inst", "gen"):
        assert np.isfinite(written[f"val/{task}/loss"]), task
    for key in ("map", "map50", "box_map", "box_map50"):
        assert 0.0 <= written[f"val/inst/{key}"] <= 1.0, key
    assert written["val/inst/map"] <= written["val/inst/map50"]


# --- every weighting, sharing scheme, AMP and exact resume ------------------------------------

SMALL = ("backbone.channels=[8,16]", "tasks.inst.hidden=16", "tasks.seg.hidden=16")


def _weightings() -> list[str]:
    from mtlrun.cli import config_dir

    return sorted(path.stem for path in (config_dir() / "weighting").glob("*.yaml"))


def _state(run) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in run.model.state_dict().items()}


@pytest.mark.slow  # one tiny run per weighting
@pytest.mark.parametrize("weighting", _weightings())
def test_every_weighting_trains_inst_beside_seg(
    weighting: str, build_tiny_run, tmp_path: Path
) -> None:
    """`inst`'s loss is one scalar of several terms: every weighting takes it as one task
    (three tasks: krum and trimmed_mean need at least three)."""
    run = build_tiny_run(tmp_path, "tasks=[inst,seg,cls]", f"weighting={weighting}", *SMALL)
    before = _state(run)
    metrics = fit(run)
    assert np.isfinite(metrics["val/inst/loss"]) and 0.0 <= metrics["val/inst/map50"] <= 1.0
    after = _state(run)
    assert any(
        not torch.equal(before[key], after[key])
        for key in before
        if ".head" in key or "inst" in key
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting",
    ["model.sharing=soft", "model.sharing=cross_stitch", "trainer.amp=true", "backbone=resnet18"],
)
def test_inst_trains_under_every_sharing_scheme_and_amp(
    setting: str, build_tiny_run, tmp_path: Path
) -> None:
    run = build_tiny_run(tmp_path, "tasks=[inst,cls]", setting, "tasks.inst.hidden=16")
    metrics = fit(run)
    assert np.isfinite(metrics["val/inst/loss"]) and 0.0 <= metrics["val/inst/map"] <= 1.0


@pytest.mark.slow  # three tiny runs
def test_resume_continues_inst_exactly_like_a_straight_run(build_tiny_run, tmp_path: Path) -> None:
    chosen = ("tasks=[inst,seg]", *SMALL)
    straight = build_tiny_run(tmp_path / "straight", *chosen, "trainer.epochs=2")
    straight_metrics = fit(straight)
    first = build_tiny_run(tmp_path / "first", *chosen, "trainer.epochs=1")
    fit(first)
    resumed = build_tiny_run(
        tmp_path / "resumed", *chosen, "trainer.epochs=2", f"resume={first.output_dir}"
    )
    resumed_metrics = fit(resumed)
    expected, got = _state(straight), _state(resumed)
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    timeless = {key for key in straight_metrics if "wall" not in key}
    assert {k: resumed_metrics[k] for k in timeless} == {k: straight_metrics[k] for k in timeless}

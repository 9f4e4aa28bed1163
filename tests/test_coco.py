"""`dataset=coco`: a COCO-format detection dataset read with pycocotools. Boxes come out in
the batch contract (xyxy pixels, padded with label -1), category ids map in increasing order
to classes 0..n-1, crowd and empty boxes are left out, a broken layout is one line, and a
detection run learns the boxes of drawn shapes."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import compose_config
from learnable_fakes import write_learnable_coco
from mtlrun.build import build
from mtlrun.data.coco import CocoData
from mtlrun.engine import fit
from mtlrun.errors import UserError
from mtlrun.tasks.detection_metrics import DetectionAP
from processes import Finished, assert_one_line_error


def open_coco(root: Path, **settings: object) -> CocoData:
    arguments: dict[str, object] = {"image_size": 64, "num_workers": 0, "batch_size": 2}
    return CocoData(str(root), **{**arguments, **settings})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable_coco(tmp_path_factory.mktemp("coco"), train=6, val=4)


def test_boxes_and_contiguous_classes_come_from_the_json(small: Path) -> None:
    data = open_coco(small, image_size=[48, 96], instance_masks=True)
    # ids 3, 7, 12 (listed 12, 3, 7) become classes 0, 1, 2 in increasing id order
    assert data.info.num_classes == {"det": 3, "inst": 3}
    names = ["circle", "square", "triangle"]
    assert data.info.class_names == {"det": names, "inst": names}
    document = json.loads((small / "annotations" / "instances_val2017.json").read_text())
    index = {3: 0, 7: 1, 12: 2}
    images = {image["id"]: image for image in document["images"]}
    batches = list(data.val_batches())
    boxes = torch.cat([batch["targets"]["det"]["boxes"] for batch in batches])
    labels = torch.cat([batch["targets"]["det"]["labels"] for batch in batches])
    assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
    for number, image in enumerate(sorted(images)):
        wanted = [
            a for a in document["annotations"]
            if a["image_id"] == image and not a["iscrowd"] and a["bbox"][2] > 0
        ]  # fmt: skip
        real = labels[number] >= 0
        assert labels[number][real].tolist() == [index[a["category_id"]] for a in wanted]
        assert bool((boxes[number][~real] == 0).all())  # padding: all-zero boxes
        scale = torch.tensor([96 / images[image]["width"], 48 / images[image]["height"]] * 2)
        for box, annotation in zip(boxes[number][real], wanted, strict=True):
            x, y, w, h = annotation["bbox"]
            assert torch.allclose(box, torch.tensor([x, y, x + w, y + h]) * scale, atol=1e-4)


def test_instance_masks_are_the_decoded_segmentations_in_the_boxes_slots(small: Path) -> None:
    from pycocotools.coco import COCO

    data = open_coco(small, image_size=[48, 96], instance_masks=True)
    coco = COCO(str(small / "annotations" / "instances_val2017.json"))
    batch = next(iter(data.val_batches()))
    inst, det = batch["targets"]["inst"], batch["targets"]["det"]
    assert inst["masks"].dtype == torch.bool and inst["masks"].shape[-2:] == (48, 96)
    assert torch.equal(inst["labels"], det["labels"])
    for number, image_id in enumerate(sorted(coco.getImgIds())[: len(det["labels"])]):
        kept = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"] and a["bbox"][2] > 0]
        for slot, annotation in enumerate(kept):
            decoded = torch.from_numpy(coco.annToMask(annotation)).float()
            resized = torch.nn.functional.interpolate(decoded[None, None], size=(48, 96))[0, 0]
            mask = inst["masks"][number, slot]
            overlap = (mask & resized.bool()).sum() / (mask | resized.bool()).sum()
            assert overlap > 0.9  # the same mask, resized by nearest neighbours both ways
            # ... and inside its own box
            x0, y0, x1, y1 = det["boxes"][number, slot].tolist()
            assert y1 >= y0
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert xs.min() >= x0 - 1 and xs.max() <= x1 + 1
            assert ys.min() >= y0 - 1 and ys.max() <= y1 + 1
        assert not inst["masks"][number, len(kept) :].any()  # padding: empty masks


def test_masks_are_opt_in_and_need_segmentations(small: Path, tmp_path: Path) -> None:
    data = open_coco(small)  # the default: a detection run decodes no mask
    assert data.info.targets == frozenset({"det"})
    assert "inst" not in next(iter(data.val_batches()))["targets"]
    root = write_learnable_coco(tmp_path / "coco", train=3, val=2)
    for split in ("train2017", "val2017"):
        path = root / "annotations" / f"instances_{split}.json"
        document = json.loads(path.read_text())
        for annotation in document["annotations"]:
            annotation["segmentation"] = []
        path.write_text(json.dumps(document))
    with pytest.raises(UserError, match="has no segmentations") as raised:
        open_coco(root, instance_masks=True)
    assert "\n" not in str(raised.value)


def test_crowd_and_empty_boxes_are_left_out(small: Path) -> None:
    document = json.loads((small / "annotations" / "instances_train2017.json").read_text())
    first = [a for a in document["annotations"] if a["image_id"] == 1]
    data = open_coco(small)
    boxes, labels = data.train.samples.table.objects[1]  # type: ignore[attr-defined]
    assert len(first) == len(labels) + 2 == len(boxes) + 2


def test_a_broken_layout_is_one_line(small: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"instances_nope\.json not found"):
        open_coco(small, val_split="nope")
    with pytest.raises(UserError, match="image_size must be set"):
        open_coco(small, image_size=None)
    broken = write_learnable_coco(tmp_path / "broken", train=3, val=2)
    (broken / "val2017" / "000000000002.jpg").unlink()
    with pytest.raises(
        UserError, match=r"1 image\(s\) listed in instances_val2017.json are missing"
    ):
        open_coco(broken)
    path = broken / "annotations" / "instances_val2017.json"
    document = json.loads(path.read_text())
    document["categories"].append({"id": 99, "name": "star"})
    path.write_text(json.dumps(document))
    (broken / "val2017" / "000000000002.jpg").touch()
    with pytest.raises(UserError, match=r"category ids \[99\] that the training annotations"):
        open_coco(broken)


def mean_box_chance(data: CocoData) -> float:
    """mAP@.5 on the validation split of a detector that ignores the image: one box per class
    at the mean training box, every score 1."""
    batches = list(data.train_batches(0))
    boxes = torch.cat([b["targets"]["det"]["boxes"] for b in batches])
    labels = torch.cat([b["targets"]["det"]["labels"] for b in batches])
    mean = boxes[labels >= 0].mean(0)
    metric = DetectionAP(list(data.info.class_names["det"]))
    for batch in data.val_batches():
        guess = {
            "boxes": mean.expand(3, 4),
            "scores": torch.ones(3),
            "labels": torch.arange(3),
        }
        target = batch["targets"]["det"]
        metric.update([guess] * len(target["labels"]), target["boxes"], target["labels"])
    return metric.compute()["map50"]


@pytest.mark.slow
def test_a_detection_run_learns_the_boxes_of_drawn_shapes(tmp_path: Path) -> None:
    """96 pictures of 1-3 shapes at 64x64, 10 epochs of batch 8 with the default cnn backbone
    and det head, ~25 s. Chance (one mean box per class, whatever the image): mAP@.5 ~0.001;
    measured after training: 0.92."""
    root = write_learnable_coco(tmp_path / "coco")
    config = compose_config(
        "dataset=coco", "tasks=[det]", f"dataset.root={root}", "dataset.num_workers=0",
        "dataset.image_size=64", "trainer.epochs=10", "trainer.batch_size=8",
        "trainer.device=cpu", "trainer.progress=none", "trainer.threads=1", tiny=False,
    )  # fmt: skip
    run = build(config, tmp_path / "run")
    assert isinstance(run.data, CocoData)
    chance = mean_box_chance(run.data)
    metrics = fit(run)
    assert chance < 0.2, chance
    assert metrics["val/det/map50"] >= max(0.6, chance + 0.4), (metrics, chance)


COMMAND = [
    "dataset=coco", "tasks=[det]", "dataset.num_workers=0", "dataset.image_size=32",
    "trainer.epochs=1", "trainer.batch_size=2", "trainer.device=cpu", "trainer.progress=none",
    "trainer.threads=1",
]  # fmt: skip


def test_the_command_line_trains_on_a_coco_folder(
    call_main: Callable[[list[str]], Finished], small: Path
) -> None:
    """What the README shows: `mtlrun dataset=coco dataset.root=<folder> 'tasks=[det]'`."""
    result = call_main([f"dataset.root={small}", *COMMAND])
    assert result.returncode == 0, result.output[-3000:]
    metrics = json.loads(next(result.cwd.rglob("metrics.json")).read_text())
    assert "val/det/map50" in metrics and "val/det/ap50/circle" in json.dumps(metrics)


def test_an_instance_run_trains_on_a_coco_folder_with_masks(
    call_main: Callable[[list[str]], Finished], small: Path
) -> None:
    """`mtlrun dataset=coco dataset.instance_masks=true 'tasks=[inst]'`."""
    command = [item for item in COMMAND if item != "tasks=[det]"]
    arguments = [f"dataset.root={small}", "dataset.instance_masks=true", "tasks=[inst]"]
    result = call_main([*arguments, *command])
    assert result.returncode == 0, result.output[-3000:]
    metrics = json.loads(next(result.cwd.rglob("metrics.json")).read_text())
    assert "val/inst/map50" in metrics and "val/inst/box_map50" in metrics


def test_a_missing_coco_folder_is_one_line(call_main: Callable[[list[str]], Finished]) -> None:
    result = call_main(["dataset.root=nowhere", *COMMAND])
    assert_one_line_error(
        result, ["dataset 'coco' not found", "instances_{split}.json", "dataset.root="]
    )

"""`dataset=folder`'s depth, attribute and box columns: depth from 16-bit PNGs (millimetres)
or .npy arrays divided by `depth_scale`, 0/1 attribute columns as one LongTensor[A], boxes
from a COCO-format JSON (pycocotools) matched to the manifest's images, and each mistake one
line; a run trains depth, attributes and detection together from the command line."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BuildRun
from learnable_fakes import COCO_CATEGORIES, shapes_picture
from mtlrun.data.folder import FolderData
from mtlrun.errors import UserError

SIZE = 32


def write_targets_folder(root: Path, count: int = 10) -> Path:
    """root/images/{i}.jpg (32 x 32, 1-2 drawn shapes), root/depth/{i}.png (16-bit, mm) and
    root/depth/{i}.npy (metres) with the same depth, root/boxes.json (COCO format, file names
    without the folder) and root/manifest.csv: image, depth, depth_npy, bright, big, split;
    `bright` is 1 when the image is brighter than average, `big` when a shape is wider than
    10 px (both functions of the pixels)."""
    generator = np.random.default_rng(20)
    for folder in ("images", "depth"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    lines = ["image,depth,depth_npy,bright,big,split"]
    images, annotations = [], []
    for index in range(count):
        picture, objects = shapes_picture(generator, (SIZE, SIZE), 1 + index % 2)
        picture.save(root / "images" / f"{index}.jpg", quality=95)
        millimetres = generator.integers(500, 9000, (SIZE, SIZE)).astype(np.uint16)
        millimetres[0] = 0  # invalid
        Image.fromarray(millimetres).save(root / "depth" / f"{index}.png")
        np.save(root / "depth" / f"{index}.npy", millimetres.astype(np.float32) / 1000)
        bright = int(np.asarray(picture).mean() > 110)
        big = int(max(box[2] for _, box, _ in objects) > 10)
        split = "val" if index < 3 else "train"
        lines.append(
            f"images/{index}.jpg,depth/{index}.png,depth/{index}.npy,{bright},{big},{split}"
        )
        images.append(
            {"id": 100 + index, "file_name": f"{index}.jpg", "width": SIZE, "height": SIZE}
        )
        for category, box, _ in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": 100 + index, "category_id": category,
                "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
            })  # fmt: skip
    document = {"images": images, "annotations": annotations, "categories": list(COCO_CATEGORIES)}
    (root / "boxes.json").write_text(json.dumps(document))
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def open_folder(root: Path, **settings: Any) -> FolderData:
    arguments = {
        "image_size": SIZE, "num_workers": 0, "batch_size": 3, "split_column": "split",
        "classes": {}, **settings,
    }  # fmt: skip
    return FolderData(str(root), **arguments)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_targets_folder(tmp_path_factory.mktemp("folder"))


def first_val(data: FolderData) -> dict[str, Any]:
    return next(iter(data.val_batches()))["targets"]


def test_depth_from_16_bit_pngs_and_from_npy_arrays(folder: Path) -> None:
    from_png = first_val(open_folder(folder, depth={"depth": "depth"}))["depth"]
    from_npy = first_val(open_folder(folder, depth={"depth": "depth_npy"}, depth_scale=1.0))[
        "depth"
    ]
    stored = [
        np.asarray(Image.open(folder / "depth" / f"{i}.png")).astype(np.float32) / 1000
        for i in range(3)
    ]
    assert from_png.shape == (3, 1, SIZE, SIZE) and from_png.dtype == torch.float32
    assert torch.allclose(from_png[:, 0], torch.from_numpy(np.stack(stored)))
    assert torch.allclose(from_png, from_npy)
    assert bool((from_png[:, :, 0] == 0).all())  # invalid stays 0


def test_attribute_columns_are_one_long_tensor(folder: Path) -> None:
    data = open_folder(folder, attributes={"attr": ["bright", "big"]})
    assert data.info.num_classes == {"attr": 2}
    assert data.info.class_names == {"attr": ["bright", "big"]}
    rows = (folder / "manifest.csv").read_text().splitlines()[1:4]
    wanted = [[int(row.split(",")[3]), int(row.split(",")[4])] for row in rows]
    attributes = first_val(data)["attr"]
    assert attributes.dtype == torch.int64 and attributes.tolist() == wanted


def test_boxes_come_from_the_coco_json_by_file_name(folder: Path) -> None:
    data = open_folder(folder, boxes={"det": "boxes.json"}, image_size=64)
    assert data.info.class_names == {"det": ["circle", "square", "triangle"]}
    target = first_val(data)["det"]
    document = json.loads((folder / "boxes.json").read_text())
    for number in range(3):
        wanted = [a for a in document["annotations"] if a["image_id"] == 100 + number]
        real = target["labels"][number] >= 0
        assert int(real.sum()) == len(wanted)
        x, y, w, h = wanted[0]["bbox"]
        expected = torch.tensor([x, y, x + w, y + h]) * 2  # 32 -> 64 px
        assert torch.allclose(target["boxes"][number][0], expected)


def break_file(folder: Path, tmp_path: Path, change: str) -> Path:
    copy = write_targets_folder(tmp_path / "copy")
    if change == "attribute":
        path = copy / "manifest.csv"
        path.write_text(path.read_text().replace(",0,", ",2,", 1))
    elif change == "boxes":
        document = json.loads((copy / "boxes.json").read_text())
        document["images"] = document["images"][1:]
        (copy / "boxes.json").write_text(json.dumps(document))
    elif change == "rgb depth":
        Image.new("RGB", (SIZE, SIZE)).save(copy / "depth" / "1.png")
    elif change == "small depth":
        Image.fromarray(np.ones((8, 8), dtype=np.uint16)).save(copy / "depth" / "0.png")
    return copy


@pytest.mark.parametrize(
    ("change", "settings", "said"),
    [
        ("attribute", {"attributes": {"attr": ["bright", "big"]}}, "attributes are 0 or 1"),
        ("boxes", {"boxes": {"det": "boxes.json"}}, "images/0.jpg of the manifest is not in"),
        ("rgb depth", {"depth": {"depth": "depth"}}, "depth/1.png is a RGB image"),
        ("small depth", {"depth": {"depth": "depth"}}, "is 8x8 but its image"),
        ("none", {"boxes": {"det": "nope.json"}}, "dataset.boxes.det"),
        ("none", {"attributes": {"attr": ["bright", "nope"]}}, "column 'nope'"),
        ("none", {"depth": {"depth": "depth"}, "depth_scale": 0}, "depth_scale must be > 0"),
    ],
)
def test_bad_depth_attributes_and_boxes_are_one_line(
    folder: Path, tmp_path: Path, change: str, settings: dict[str, Any], said: str
) -> None:
    root = break_file(folder, tmp_path, change) if change != "none" else folder
    with pytest.raises(UserError, match=said):
        data = open_folder(root, **settings)
        for _ in data.train_batches(0):  # a bad file late in a split shows when read
            pass
        for _ in data.val_batches():
            pass


def test_depth_attributes_and_boxes_train_from_the_command_line(
    build_tiny_run: BuildRun, folder: Path, tmp_path: Path
) -> None:
    from mtlrun.engine import fit

    run = build_tiny_run(
        tmp_path / "run",
        "dataset=folder",
        f"dataset.root={folder}",
        "dataset.num_workers=0",
        "dataset.split_column=split",
        "dataset.depth={depth: depth}",
        "dataset.attributes={attr: [bright, big]}",
        "dataset.boxes={det: boxes.json}",
        "tasks=[depth,attr,det]",
        "trainer.batch_size=2",
    )
    metrics = fit(run)
    for key in ("val/depth/abs_err", "val/attr/acc", "val/det/map50"):
        assert np.isfinite(metrics[key]), metrics

"""`dataset=folder`: your own images and a manifest. Classes and their names come from the
data, masks are read as class indices with an ignore value, the split is a column or a seeded
fraction, and a manifest that names missing files or columns is one line."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import BuildRun
from fakes import write_folder
from mtlrun.data.folder import FolderData
from mtlrun.errors import UserError


def open_folder(root: Path, **settings: Any) -> FolderData:
    arguments = {"image_size": 16, "num_workers": 0, "batch_size": 2, **settings}
    return FolderData(str(root), **arguments)


def test_classes_masks_and_info_come_from_the_data(tmp_path: Path) -> None:
    data = open_folder(write_folder(tmp_path), classes={"cls": "label"}, masks={"seg": "mask"})
    assert data.info.num_classes == {"cls": 2, "seg": 2}
    assert data.info.class_names["cls"] == ["cat", "dog"]
    assert data.info.image_size == (16, 16)
    assert (data.train_count, data.val_count) == (8, 2)
    batch = next(iter(data.val_batches()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["image"].dtype == torch.float32
    seg = batch["targets"]["seg"]
    assert seg.shape == (2, 16, 16) and seg.dtype == torch.int64
    assert set(seg.unique().tolist()) == {-1, 0, 1}  # 255 became -1 (ignored)
    names = [int(label) for b in data.val_batches() for label in b["targets"]["cls"]]
    assert names and set(names) <= {0, 1}


def test_the_seeded_split_is_fixed_and_disjoint(tmp_path: Path) -> None:
    root = write_folder(tmp_path)

    def rows(seed: int) -> tuple[list[str], list[str]]:
        data = open_folder(root, classes={"cls": "label"}, seed=seed)
        return [r["image"] for r in data.train.samples.rows], [  # type: ignore[attr-defined]
            r["image"]
            for r in data.val.samples.rows  # type: ignore[attr-defined]
        ]

    train, val = rows(0)
    assert rows(0) == (train, val) and not set(train) & set(val) and len(train + val) == 10
    assert rows(1) != (train, val)


def test_json_lines_with_a_split_column_and_integer_labels(tmp_path: Path) -> None:
    root = write_folder(tmp_path)
    lines = [
        json.dumps(
            {"path": f"images/{i}.png", "digit": i % 3 * 2, "part": "val" if i < 3 else "train"}
        )
        for i in range(10)
    ]
    (root / "list.jsonl").write_text("\n".join(lines))
    data = open_folder(
        root, manifest="list.jsonl", image_column="path", classes={"digit": "digit"},
        split_column="part",
    )  # fmt: skip
    assert (data.train_count, data.val_count) == (7, 3)
    assert data.info.num_classes == {"digit": 5}  # indices 0, 2, 4: the largest + 1
    labels = [int(x) for b in data.val_batches() for x in b["targets"]["digit"]]
    assert labels == [0, 2, 4]


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        (
            {"classes": {"cls": "species"}},
            ["dataset.classes.cls", "'species'", "image, label, mask"],
        ),
        ({"classes": {"cls": "label"}, "manifest": "nope.csv"}, ["dataset.manifest", "nope.csv"]),
        ({"classes": {"cls": "label"}, "split_column": "label"}, ["split_column", "train and val"]),
        ({"classes": {"cls": "label"}, "image_size": None}, ["dataset.image_size must be set"]),
        ({"classes": {}}, ["name at least one target"]),
    ],
)
def test_settings_the_manifest_cannot_meet_are_one_line(
    tmp_path: Path, settings: dict[str, Any], said: list[str]
) -> None:
    with pytest.raises(UserError) as caught:
        open_folder(write_folder(tmp_path), **settings)
    assert all(part in str(caught.value) for part in said), str(caught.value)


def test_a_manifest_naming_missing_files_is_one_line(tmp_path: Path) -> None:
    root = write_folder(tmp_path)
    (root / "images" / "3.png").unlink()
    with pytest.raises(
        UserError, match=r"1 file\(s\) the manifest names are missing.*images/3\.png"
    ):
        open_folder(root, classes={"cls": "label"})


def test_folder_trains_cls_and_seg_from_the_command_line_config(
    build_tiny_run: BuildRun, tmp_path: Path
) -> None:
    from mtlrun.engine import fit

    root = write_folder(tmp_path / "data")
    run = build_tiny_run(
        tmp_path / "run",
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.num_workers=0",
        "dataset.masks={seg: mask}",
        "tasks=[cls,seg]",
        "trainer.batch_size=2",
    )
    metrics = fit(run)
    assert "val/cls/acc" in metrics and "val/seg/miou" in metrics

"""The built-in `shapes` dataset: determinism, the batch contract, and targets that agree
with what is visible in the image.

Objects are told apart by their depth: every object sits at its own distance (2..8), drawn
flat, and the background wall is farther (8..10), so the pixels of one depth value below 8
are exactly the visible pixels of one object. The checks below use that, not the generator's
internals, so two objects of the same class never make them ambiguous.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from mtlrun.data.shapes import SHAPE_NAMES, ShapesData
from mtlrun.errors import UserError

ComposeConfig = Callable[..., DictConfig]

NEAREST_WALL = 8.0  # the wall's depth is above this everywhere; objects are nearer


def make_data(**settings: Any) -> ShapesData:
    """A small `ShapesData`; `settings` override the defaults."""
    arguments = {"image_size": 32, "train_size": 64, "val_size": 32, "batch_size": 16}
    return ShapesData(**{**arguments, **settings})


def sample(batch: dict[str, Any], position: int) -> list[Tensor]:
    """Every tensor of one sample of a batch, in a fixed order."""
    targets = batch["targets"]
    return [
        batch["image"][position],
        targets["cls"][position],
        targets["seg"][position],
        targets["depth"][position],
        targets["det"]["boxes"][position],
        targets["det"]["labels"][position],
        targets["gen"][position],
    ]


def assert_same_sample(first: list[Tensor], second: list[Tensor]) -> None:
    for one, other in zip(first, second, strict=True):
        assert torch.equal(one, other)


def match_matrix(first: Tensor, second: Tensor) -> Tensor:
    """[i, j] is True where image i of `first` equals image j of `second` exactly."""
    return (first[:, None] == second[None, :]).flatten(2).all(dim=2)


def collect(batches: Any) -> Tensor:
    return torch.cat([batch["image"] for batch in batches])


# --- determinism ------------------------------------------------------------------------


def test_same_index_gives_same_sample_in_any_batch() -> None:
    data = make_data()
    first = data.generate("train", torch.tensor([3, 10, 7]))
    second = data.generate("train", torch.tensor([7, 1, 3, 12]))
    assert_same_sample(sample(first, 0), sample(second, 2))  # index 3
    assert_same_sample(sample(first, 2), sample(second, 0))  # index 7


def test_samples_do_not_depend_on_batch_size_or_shuffle_seed() -> None:
    indices = torch.arange(8)
    one = make_data(batch_size=4, shuffle_seed=0).generate("val", indices)
    other = make_data(batch_size=32, shuffle_seed=99).generate("val", indices)
    for position in range(len(indices)):
        assert_same_sample(sample(one, position), sample(other, position))


def test_different_seed_train_val_and_index_give_different_images() -> None:
    indices = torch.arange(16)
    train = make_data(seed=0).generate("train", indices)["image"]
    other_seed = make_data(seed=1).generate("train", indices)["image"]
    val = make_data(seed=0).generate("val", indices)["image"]
    assert not match_matrix(train, other_seed).diagonal().any()
    assert not match_matrix(train, val).diagonal().any()
    assert match_matrix(train, train).sum() == len(indices)  # no two indices look the same


def test_train_order_depends_only_on_seed_and_epoch() -> None:
    data, twin = make_data(shuffle_seed=5), make_data(shuffle_seed=5)
    torch.manual_seed(1)
    epoch_zero = collect(data.train_batches(0))
    collect(data.train_batches(1))  # iterating another epoch first leaves no trace
    torch.manual_seed(2)  # nor does the global random state
    assert torch.equal(collect(twin.train_batches(0)), epoch_zero)
    assert torch.equal(collect(data.train_batches(0)), epoch_zero)


def test_train_batches_leave_global_random_state_alone() -> None:
    data = make_data()
    state = torch.get_rng_state()
    collect(data.train_batches(0))
    assert torch.equal(torch.get_rng_state(), state)


def test_each_epoch_is_a_new_permutation_of_the_same_images() -> None:
    data = make_data()
    epoch_zero, epoch_one = collect(data.train_batches(0)), collect(data.train_batches(1))
    other_seed = collect(make_data(shuffle_seed=1).train_batches(0))
    for shuffled in (epoch_one, other_seed):
        matches = match_matrix(epoch_zero, shuffled)
        assert torch.equal(matches.sum(0), torch.ones(len(epoch_zero), dtype=torch.long))
        assert torch.equal(matches.sum(1), torch.ones(len(epoch_zero), dtype=torch.long))
        assert not torch.equal(epoch_zero, shuffled)


def test_train_batches_are_full_and_start_skips_batches() -> None:
    data = make_data(train_size=70, batch_size=16)
    batches = list(data.train_batches(3))
    assert len(batches) == data.num_train_batches() == 70 // 16
    assert all(len(batch["image"]) == 16 for batch in batches)
    resumed = list(data.train_batches(3, start=2))
    assert torch.equal(collect(resumed), collect(batches[2:]))


def test_val_batches_cover_the_split_once_in_order() -> None:
    data = make_data(val_size=40, batch_size=16)
    batches = list(data.val_batches())
    assert [len(batch["image"]) for batch in batches] == [16, 16, 8]
    assert torch.equal(collect(batches), data.generate("val", torch.arange(40))["image"])


# --- the batch contract -------------------------------------------------------------------


def test_batch_contract_shapes_and_dtypes(compose_tiny: ComposeConfig) -> None:
    """The dataset as the config builds it yields the documented batch contract."""
    cfg = compose_tiny()
    data = instantiate(cfg.dataset)(batch_size=8, shuffle_seed=0, device="cpu")
    batch = next(iter(data.train_batches(0)))
    size, slots = cfg.dataset.image_size, cfg.dataset.max_objects
    classes = len(cfg.dataset.shapes)
    image, targets = batch["image"], batch["targets"]
    assert set(targets) == set(data.info.targets) == {"cls", "seg", "det", "inst", "depth", "gen"}
    assert image.dtype == torch.float32 and image.shape == (8, 3, size, size)
    assert image.min() >= 0 and image.max() <= 1
    assert targets["cls"].dtype == torch.long and targets["cls"].shape == (8,)
    assert targets["seg"].dtype == torch.long and targets["seg"].shape == (8, size, size)
    assert targets["depth"].dtype == torch.float32 and targets["depth"].shape == (8, 1, size, size)
    boxes, labels = targets["det"]["boxes"], targets["det"]["labels"]
    assert boxes.dtype == torch.float32 and boxes.shape == (8, slots, 4)
    assert labels.dtype == torch.long and labels.shape == (8, slots)
    masks = targets["inst"]["masks"]
    assert masks.dtype == torch.bool and masks.shape == (8, slots, size, size)
    assert torch.equal(targets["inst"]["labels"], labels)
    assert torch.equal(targets["gen"], image)
    assert targets["cls"].min() >= 0 and targets["cls"].max() < classes
    assert targets["seg"].min() >= 0 and targets["seg"].max() <= classes
    assert labels.min() >= -1 and labels.max() < classes
    assert data.info.num_classes == {
        "cls": classes,
        "seg": classes + 1,
        "det": classes,
        "inst": classes,
    }
    assert data.info.image_size == (size, size)


# --- targets agree with what is visible -----------------------------------------------------


@dataclass
class VisibleObject:
    """One object as the targets show it: its pixels, class and depth."""

    mask: Tensor  # (H, W) bool
    label: int  # shape class, 0-based
    depth: float

    def box(self) -> list[float]:
        rows, cols = self.mask.nonzero(as_tuple=True)
        return [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]


def visible_objects(seg: Tensor, depth: Tensor, image: Tensor) -> list[VisibleObject]:
    """Split an image's object pixels by depth; check each part is one flat-coloured class."""
    objects = []
    for value in depth[depth < NEAREST_WALL].unique():
        mask = depth == value
        labels = seg[mask].unique()
        assert len(labels) == 1, f"pixels at depth {value} carry classes {labels.tolist()}"
        colours = image[:, mask].unique(dim=1)
        assert colours.shape[1] == 1, f"object at depth {value} is not one flat colour"
        objects.append(VisibleObject(mask, int(labels) - 1, float(value)))
    return objects


SETTINGS = [
    {"image_size": 32},
    {"image_size": 64, "max_objects": 6, "shapes": list(SHAPE_NAMES), "seed": 3},
]


@pytest.fixture(scope="module", params=SETTINGS, ids=["default", "crowded-64px"])
def crowded_batch(request: pytest.FixtureRequest) -> tuple[ShapesData, dict[str, Any]]:
    data = make_data(**request.param, val_size=48)
    return data, data.generate("val", torch.arange(48))


def test_background_is_exactly_where_no_object_is(crowded_batch) -> None:
    _, batch = crowded_batch
    seg, depth = batch["targets"]["seg"], batch["targets"]["depth"][:, 0]
    assert torch.equal(seg == 0, depth >= NEAREST_WALL)
    assert (seg == 0).any() and (seg > 0).any()


def test_wall_recedes_upwards_and_objects_are_nearer(crowded_batch) -> None:
    data, batch = crowded_batch
    seg, depth = batch["targets"]["seg"], batch["targets"]["depth"][:, 0]
    background = seg == 0
    wall = torch.full((data.image_size,), float("nan"))
    for row in range(data.image_size):
        values = depth[:, row][background[:, row]].unique()
        assert len(values) == 1, f"row {row}: the wall has depths {values.tolist()}"
        wall[row] = values
    assert (wall[:-1] > wall[1:]).all(), "the wall is not farther towards the top"
    nearer = depth < wall[None, :, None]
    assert nearer[~background].all()


def test_targets_agree_with_visible_objects(crowded_batch) -> None:
    """Boxes are the bounding boxes of the visible objects (one each, with their class),
    then padding; cls is the class of the largest visible object."""
    data, batch = crowded_batch
    targets = batch["targets"]
    for position in range(len(batch["image"])):
        objects = visible_objects(
            targets["seg"][position], targets["depth"][position, 0], batch["image"][position]
        )
        labels = targets["det"]["labels"][position]
        boxes = targets["det"]["boxes"][position]
        real = labels >= 0
        count = int(real.sum())
        assert 1 <= len(objects) == count <= data.max_objects
        assert real[:count].all(), "padding comes before a real box"
        assert (boxes[~real] == 0).all()
        expected = sorted((obj.label, obj.box()) for obj in objects)
        pairs = zip(labels[real], boxes[real], strict=True)
        actual = sorted((int(label), box.tolist()) for label, box in pairs)
        assert actual == expected, f"sample {position}"
        largest = max(obj.mask.sum().item() for obj in objects)
        largest_classes = {obj.label for obj in objects if obj.mask.sum().item() == largest}
        assert int(targets["cls"][position]) in largest_classes


def test_every_object_pixel_lies_in_a_box_of_its_class(crowded_batch) -> None:
    """The box check restated without depth: box edges touch pixels of the box's class, and
    every labelled pixel is inside a box of its class."""
    data, batch = crowded_batch
    seg = batch["targets"]["seg"]
    det = batch["targets"]["det"]
    for position in range(len(seg)):
        covered = torch.zeros_like(seg[position], dtype=torch.bool)
        for box, label in zip(det["boxes"][position], det["labels"][position], strict=True):
            if label < 0:
                continue
            x1, y1, x2, y2 = (int(v) for v in box)
            assert 0 <= x1 < x2 <= data.image_size and 0 <= y1 < y2 <= data.image_size
            region = seg[position, y1:y2, x1:x2] == label + 1
            edges = (region[0], region[-1], region[:, 0], region[:, -1])
            assert all(edge.any() for edge in edges), f"sample {position}: box {box.tolist()}"
            inside = torch.zeros_like(covered)
            inside[y1:y2, x1:x2] = True
            covered |= inside & (seg[position] == label + 1)
        assert torch.equal(covered, seg[position] > 0), f"sample {position}"


# --- bad settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"shapes": ["circle", "blob"]}, "blob"),
        ({"shapes": []}, "shapes"),
        ({"train_size": 8, "batch_size": 16}, "train_size"),
        ({"val_size": 0}, "val_size"),
        ({"image_size": 4}, "image_size"),
        ({"min_size": 0.4, "max_size": 0.2}, "min_size"),
        ({"max_objects": 0}, "max_objects"),
    ],
)
def test_bad_settings_raise_user_error(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(UserError, match=named):
        make_data(**settings)


def test_bad_dataset_setting_from_config_is_a_user_error(
    compose_tiny: ComposeConfig, build_tiny_run: Callable[..., Any], tmp_path: Path
) -> None:
    too_few = compose_tiny().trainer.batch_size - 1
    with pytest.raises(UserError, match="train_size"):
        build_tiny_run(tmp_path, f"dataset.train_size={too_few}")

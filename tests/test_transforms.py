"""Joint augmentation: one random draw moves the image and every target together, and
values change where geometry demands (depth / zoom, disparity x zoom, normal x on a flip)."""

import pytest
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from mtlrun.data.transforms import (
    DepthMap,
    DisparityMap,
    FaceLandmarks,
    JointAugmentation,
    NormalMap,
    resize,
    square_or_pair,
)
from mtlrun.errors import UserError

SIZE = (24, 32)


def quadrant_labels() -> Tensor:
    """A (24, 32) class map of four blocks, classes 0..3."""
    labels = torch.zeros(SIZE, dtype=torch.long)
    labels[:, 16:] += 1
    labels[12:] += 2
    return labels


def dense_sample() -> dict:
    """Image, labels, depth and disparity that all encode the same four blocks: block k has
    class k, depth k + 1, disparity 1 / (k + 1), and image brightness (k + 1) / 5."""
    labels = quadrant_labels()
    value = (labels + 1).float()
    normals = torch.zeros(3, *SIZE)
    normals[0], normals[2] = 0.6, 0.8
    return {
        "image": tv_tensors.Image((value / 5).expand(3, -1, -1).clone()),
        "targets": {
            "seg": tv_tensors.Mask(labels),
            "depth": DepthMap(value[None]),
            "disparity": DisparityMap(1 / value[None]),
            "normal": NormalMap(normals),
            "cls": 2,
        },
    }


def augmented(sample: dict, seed: int, **settings: object) -> dict:
    torch.manual_seed(seed)
    return JointAugmentation(**settings)(sample)


def test_flip_mirrors_every_map_and_negates_the_normals_x() -> None:
    sample = dense_sample()
    sample["targets"]["normal"] = NormalMap(
        torch.nn.functional.normalize(torch.randn(3, *SIZE), dim=0)
    )
    flipped = augmented(sample, 0, scales=None, hflip=1.0)
    targets, before = flipped["targets"], sample["targets"]
    assert torch.equal(flipped["image"], sample["image"].flip(-1))
    assert torch.equal(targets["seg"], before["seg"].flip(-1))
    assert torch.equal(targets["depth"], before["depth"].flip(-1))
    mirrored = before["normal"].flip(-1)
    assert torch.equal(targets["normal"][0], -mirrored[0])
    assert torch.equal(targets["normal"][1:], mirrored[1:])
    assert targets["cls"] == 2


def test_zoom_divides_depth_and_multiplies_disparity_by_the_scale() -> None:
    """Every pixel keeps its block (labels and maps are resampled alike), and the block's
    depth is divided by the zoom, its disparity multiplied."""
    for seed in range(5):
        zoomed = augmented(dense_sample(), seed, scales=[1.5], hflip=0.0)["targets"]
        block_value = (zoomed["seg"] + 1).float()[None]
        assert torch.allclose(zoomed["depth"], block_value / 1.5)
        assert torch.allclose(zoomed["disparity"], 1.5 / block_value)


def test_zoom_keeps_image_and_labels_aligned() -> None:
    """Inside the blocks (away from edges, where bilinear and nearest sampling differ) the
    image's brightness still names the pixel's class."""
    for seed in range(5):
        zoomed = augmented(dense_sample(), seed, scales=[1.2, 1.5], hflip=0.5)
        labels = zoomed["targets"]["seg"].float()[None, None]
        highest = torch.nn.functional.max_pool2d(labels, 5, stride=1, padding=2)
        lowest = -torch.nn.functional.max_pool2d(-labels, 5, stride=1, padding=2)
        inside = (highest == lowest)[0, 0]
        brightness = zoomed["image"][0][inside]
        assert inside.sum() > 100
        assert torch.allclose(brightness, (labels[0, 0][inside] + 1) / 5, atol=1e-5)


def test_zoom_never_moves_a_normal_and_scale_one_changes_nothing() -> None:
    sample = dense_sample()
    zoomed = augmented(sample, 3, scales=[1.5], hflip=0.0)["targets"]
    assert torch.equal(zoomed["normal"], sample["targets"]["normal"])
    same = augmented(sample, 3, scales=[1.0], hflip=0.0)
    assert torch.equal(same["targets"]["depth"], sample["targets"]["depth"])
    assert torch.equal(same["image"], sample["image"])


def bright_box(image: Tensor) -> list[int]:
    """(x1, y1, x2, y2) around the pixels brighter than 0.5."""
    rows, columns = torch.nonzero(image[0] > 0.5, as_tuple=True)
    return [int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1]


@pytest.mark.parametrize("seed", range(8))
def test_boxes_stay_on_the_object(seed: int) -> None:
    image = torch.zeros(3, 48, 64)
    image[:, 20:36, 24:44] = 1.0  # the object: rows 20..35, columns 24..43
    sample = {
        "image": tv_tensors.Image(image),
        "targets": {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor([[24.0, 20.0, 44.0, 36.0]]), format="XYXY", canvas_size=(48, 64)
            )
        },
    }
    moved = augmented(sample, seed, scales=[1.0, 1.2, 1.5], hflip=0.5)
    box = moved["targets"]["boxes"][0]
    clamped = box.clamp(min=0).minimum(torch.tensor([64.0, 48.0, 64.0, 48.0]))
    assert torch.allclose(clamped, torch.tensor(bright_box(moved["image"])).float(), atol=1.0)


@pytest.mark.parametrize("seed", range(8))
def test_instance_masks_move_with_the_image(seed: int) -> None:
    """Two objects (one partly hidden by the other) as a (M, H, W) bool `Mask` with labels:
    after zoom-crop and flip each mask still covers its object's pixels and only those, the
    labels are unchanged, and the masks still agree with the semantic map."""
    image = torch.zeros(3, 48, 64)
    masks = torch.zeros(3, 48, 64, dtype=torch.bool)  # the third slot is padding
    masks[0, 8:30, 6:30] = True
    masks[1, 20:40, 24:50] = True
    masks[0] &= ~masks[1]  # object 1 is in front
    image[0][masks[0]], image[1][masks[1]] = 1.0, 1.0
    seg = (masks * torch.tensor([1, 2, 3])[:, None, None]).sum(0)
    labels = torch.tensor([3, 1, -1])
    sample = {
        "image": tv_tensors.Image(image),
        "targets": {
            "inst": {"masks": tv_tensors.Mask(masks), "labels": labels},
            "seg": tv_tensors.Mask(seg),
        },
    }
    moved = augmented(sample, seed, scales=[1.0, 1.2, 1.5], hflip=0.5)
    moved_masks = moved["targets"]["inst"]["masks"]
    assert moved_masks.dtype == torch.bool and moved_masks.shape == (3, 48, 64)
    assert torch.equal(moved["targets"]["inst"]["labels"], labels)
    assert not moved_masks[2].any()
    painted = (moved_masks * torch.tensor([1, 2, 3])[:, None, None]).sum(0)
    assert torch.equal(painted, moved["targets"]["seg"])
    for channel in range(2):
        colour = moved["image"][channel] > 0.5
        mask = moved_masks[channel]
        # Nearest (masks) and bilinear (image) sampling may differ by a pixel at the edges.
        union = (colour | mask).sum()
        assert union > 0 and (colour & mask).sum() / union > 0.85


def test_colour_jitter_changes_the_image_only() -> None:
    sample = dense_sample()
    jittered = augmented(sample, 0, scales=None, hflip=0.0, brightness=0.5, contrast=0.5)
    assert not torch.equal(jittered["image"], sample["image"])
    for name, target in sample["targets"].items():
        assert torch.equal(torch.as_tensor(jittered["targets"][name]), torch.as_tensor(target))


def test_flip_swaps_left_and_right_landmarks() -> None:
    """After a flip the left eye is where the mirrored right eye was, and vice versa."""
    points = torch.tensor([[10.0, 12.0], [22.0, 11.0], [16.0, 16.0], [11.0, 20.0], [21.0, 21.0]])
    sample = {
        "image": tv_tensors.Image(torch.rand(3, *SIZE)),
        "targets": {"landmarks": FaceLandmarks(points, canvas_size=SIZE)},
    }
    flipped = augmented(sample, 0, scales=None, hflip=1.0)["targets"]["landmarks"]
    mirrored = F.horizontal_flip(tv_tensors.KeyPoints(points, canvas_size=SIZE))
    assert torch.equal(flipped, mirrored[[1, 0, 2, 4, 3]])
    assert flipped[0, 0] < flipped[1, 0]  # the left eye is still left of the right eye


def test_the_same_seed_gives_the_same_augmentation() -> None:
    sample = dense_sample()
    settings = {"scales": [1.0, 1.2, 1.5], "hflip": 0.5, "brightness": 0.3}
    first, again = augmented(sample, 7, **settings), augmented(sample, 7, **settings)
    assert torch.equal(first["image"], again["image"])
    assert torch.equal(first["targets"]["depth"], again["targets"]["depth"])
    draws = {bytes(augmented(sample, seed, **settings)["image"].numpy()) for seed in range(6)}
    assert len(draws) > 1


def test_resizing_keeps_invalid_pixels_unblended() -> None:
    depth = torch.full((1, *SIZE), 3.0)
    depth[..., :5] = 0.0
    small = resize(
        {"image": tv_tensors.Image(torch.rand(3, *SIZE)), "depth": DepthMap(depth)}, (12, 16)
    )
    assert small["image"].shape == (3, 12, 16)
    assert set(small["depth"].unique().tolist()) == {0.0, 3.0}


@pytest.mark.parametrize(
    "settings",
    [{"scales": [0.5, 1.0]}, {"hflip": 1.5}, {"brightness": -1.0}],
    ids=["zoom-out", "probability", "jitter"],
)
def test_bad_settings_are_user_errors(settings: dict) -> None:
    with pytest.raises(UserError, match=r"dataset\.augment"):
        JointAugmentation(**settings)


def test_image_size_accepts_a_side_or_a_pair() -> None:
    assert square_or_pair(32, "key") == (32, 32)
    assert square_or_pair([24, 40], "key") == (24, 40)
    assert square_or_pair(None, "key") is None
    with pytest.raises(UserError, match=r"dataset\.image_size"):
        square_or_pair([1, 2, 3], "dataset.image_size")

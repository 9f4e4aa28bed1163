"""Joint augmentation: one random draw moves an image and all its targets together.

Built on `torchvision.transforms.v2`, which transforms every leaf of a sample by its type:
`tv_tensors.Image` is interpolated bilinearly, `tv_tensors.Mask` (class maps, and the
(M, H, W) bool stacks of instance masks, whose labels pass through) by nearest neighbour,
`BoundingBoxes` and `KeyPoints` by their coordinates, and plain tensors or numbers (class
labels) pass through. Dense regression targets get their own types here, so a
transform can also change their *values* where geometry demands it:

    DepthMap      depth, 0 = invalid; divided by s when the image is zoomed in s times
    DisparityMap  disparity (inverse depth), 0 = invalid; multiplied by s on a zoom
    NormalMap     unit surface normals (x, y, z), all-zero = invalid; x negated by a
                  horizontal flip
    FaceLandmarks facial key points whose left and right members swap names on a flip

All of them are resized by nearest neighbour, like masks, so an invalid pixel never blends
into a valid one.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mtlrun.errors import UserError

Sample = dict[str, Any]


class DepthMap(tv_tensors.Mask):
    """Per-pixel depth (1, H, W); 0 marks an invalid pixel."""


class DisparityMap(tv_tensors.Mask):
    """Per-pixel disparity (1, H, W), proportional to inverse depth; 0 marks an invalid pixel."""


class NormalMap(tv_tensors.Mask):
    """Per-pixel unit surface normals (3, H, W), channel 0 the horizontal (x) component; an
    all-zero vector marks an invalid pixel."""


class FaceLandmarks(tv_tensors.KeyPoints):
    """Facial key points (K, 2) in pixels (x, y), in the order of `FACE_POINTS`."""


# CelebA's five aligned landmarks; after a horizontal flip the left eye is where the right
# eye was, so the two members of each pair swap places in the list.
FACE_POINTS = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
_MIRRORED_FACE_POINTS = [1, 0, 2, 4, 3]


@F.register_kernel(F.horizontal_flip, NormalMap)
def _flip_normals(normals: NormalMap) -> NormalMap:
    """Mirror the map and negate the x component: a surface facing right faces left."""
    flipped = normals.as_subclass(Tensor).flip(-1)
    sign = torch.tensor([-1.0, 1.0, 1.0], dtype=flipped.dtype, device=flipped.device)
    return tv_tensors.wrap(flipped * sign[:, None, None], like=normals)


@F.register_kernel(F.horizontal_flip, FaceLandmarks)
def _flip_landmarks(points: FaceLandmarks) -> FaceLandmarks:
    mirrored = F.horizontal_flip_keypoints(points.as_subclass(Tensor), points.canvas_size)
    return tv_tensors.wrap(mirrored[..., _MIRRORED_FACE_POINTS, :], like=points)


class RandomScaleCrop(v2.Transform):
    """Zoom in by a factor s drawn uniformly from `scales`: crop a random window of
    (H/s, W/s) pixels and resize it back to (H, W).

    A scene seen s times larger is, to a pinhole camera, s times nearer, so depth is divided
    by s and disparity multiplied by s. This is the augmentation of the NYUv2 multi-task
    protocol (scales 1, 1.2, 1.5 with depth / s; from the MTAN code of Liu, Johns & Davison,
    "End-to-End Multi-Task Learning with Attention", CVPR 2019, used by Nash-MTL and FAMO);
    Eigen, Puhrsch & Fergus, "Depth Map Prediction from a Single Image", NeurIPS 2014,
    introduced the depth / s rule.
    """

    def __init__(self, scales: Sequence[float] = (1.0, 1.2, 1.5)) -> None:
        super().__init__()
        if not scales or min(scales) < 1.0:
            raise UserError(
                f"dataset.augment.scales must list zoom factors >= 1 (e.g. [1.0, 1.2, 1.5]), "
                f"got {list(scales)}"
            )
        self.scales = [float(scale) for scale in scales]

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        crop_height, crop_width = int(height / scale), int(width / scale)
        top = int(torch.randint(height - crop_height + 1, ()))
        left = int(torch.randint(width - crop_width + 1, ()))
        return {
            "box": (top, left, crop_height, crop_width),
            "size": [height, width],
            "scale": scale,
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        zoomed = self._call_kernel(F.resized_crop, inpt, *params["box"], size=params["size"])
        # Arithmetic on a tv_tensor gives a plain tensor; wrap it back, or later transforms
        # would take it for a label and pass it through untouched.
        if isinstance(inpt, DepthMap):
            return tv_tensors.wrap(zoomed / params["scale"], like=inpt)
        if isinstance(inpt, DisparityMap):
            return tv_tensors.wrap(zoomed * params["scale"], like=inpt)
        return zoomed


class JointAugmentation:
    """The training-time augmentation of a dataset, applied to whole samples.

    In order: random scale-crop (`scales`; null or [] = off), horizontal flip with
    probability `hflip`, then colour jitter of the image only (`brightness`, `contrast`,
    `saturation`, `hue` as in `torchvision.transforms.v2.ColorJitter`; 0 = off).
    """

    def __init__(
        self,
        scales: Sequence[float] | None = (1.0, 1.2, 1.5),
        hflip: float = 0.5,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
    ) -> None:
        if not 0.0 <= hflip <= 1.0:
            raise UserError(f"dataset.augment.hflip is a probability in [0, 1], got {hflip}")
        steps: list[v2.Transform] = []
        if scales:
            steps.append(RandomScaleCrop(scales))
        if hflip > 0:
            steps.append(v2.RandomHorizontalFlip(hflip))
        if brightness or contrast or saturation or hue:
            try:
                steps.append(v2.ColorJitter(brightness, contrast, saturation, hue))
            except (TypeError, ValueError) as error:
                raise UserError(f"dataset.augment colour jitter: {error}") from error
        self.steps = steps
        self.pipeline = v2.Compose(steps) if steps else None

    def __call__(self, sample: Sample) -> Sample:
        return self.pipeline(sample) if self.pipeline is not None else sample


def resize(sample: Sample, size: tuple[int, int]) -> Sample:
    """Every image and target of `sample` at (height, width) = `size`; images bilinear with
    antialiasing, maps by nearest neighbour, coordinates scaled."""
    return v2.Resize(list(size), antialias=True)(sample)


def square_or_pair(size: int | Sequence[int] | None, key: str) -> tuple[int, int] | None:
    """`size` as (height, width): an int is a square side, null keeps the native size."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or min(pair) < 8:
        raise UserError(f"{key} must be null, a side >= 8 or [height, width], got {size}")
    return int(pair[0]), int(pair[1])

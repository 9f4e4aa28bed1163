"""`shapes`: the built-in procedural dataset (no files, no download).

Each image holds 1..N objects of K shape classes with random colours, sizes and positions
in front of a noisy, shaded background. Objects sit at random depths and nearer ones hide
farther ones, so every target is derived from what is visible:

    cls    class of the object with the largest visible area
    seg    per-pixel class (0 = background, k + 1 = shape k)
    det    boxes around the visible pixels of each object, padded with label -1
    inst   each object's visible pixels as a mask, in the order of `det`'s boxes, padded
           with label -1 and an empty mask
    depth  per-pixel distance (objects 2..8, background 8..10 receding upwards)
    gen    the image itself

Generation is vectorised over a batch and runs on the training device. A sample is a pure
function of (seed, split, index): random numbers come from a counter-based integer hash
rather than a stateful generator, so the same index gives the same image in any batch.
"""

from collections.abc import Iterator

import torch
from torch import Tensor

from mtlrun.data.base import Batch, DatasetInfo, shard
from mtlrun.errors import UserError

SHAPE_NAMES = ("circle", "square", "triangle", "diamond", "cross", "ring")
_MASK32 = 0xFFFFFFFF
_NOISE_BANK = 64  # distinct background noise textures
_TEMPLATE = 64  # resolution of the shape templates objects are sampled from
_SPLITS = {"train": 0, "val": 1}


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (the 'lowbias32' mixer) on int64 tensors holding 32-bit values."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    # The product can pass 2**63; int64 multiplication wraps, and the low 32 bits stay exact.
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _shape_masks(kinds: list[str], dx: Tensor, dy: Tensor) -> Tensor:
    """Masks of each named shape at offsets (dx, dy) in units of the object's radius."""
    ax, ay = dx.abs(), dy.abs()
    radius2 = dx * dx + dy * dy
    formulas = {
        "circle": lambda: radius2 <= 1.0,
        "square": lambda: torch.maximum(ax, ay) <= 0.8,
        "triangle": lambda: (dy <= 0.7) & (ax <= 0.9 * (dy + 0.9) / 1.6),
        "diamond": lambda: ax + ay <= 1.0,
        "cross": lambda: ((ax <= 0.3) & (ay <= 0.9)) | ((ay <= 0.3) & (ax <= 0.9)),
        "ring": lambda: (radius2 <= 1.0) & (radius2 >= 0.36),
    }
    return torch.stack([formulas[kind]() for kind in kinds])


def _templates(kinds: list[str]) -> Tensor:
    """Shape masks on a [-1, 1]^2 grid with a one-pixel empty border, shape (K, T+2, T+2).

    Objects are drawn by looking their pixels up here: one integer gather per pixel instead
    of evaluating every shape's formula for every object.
    """
    coords = (torch.arange(_TEMPLATE, dtype=torch.float32) + 0.5) / _TEMPLATE * 2 - 1
    masks = _shape_masks(kinds, coords[None, :], coords[:, None])
    return torch.nn.functional.pad(masks, (1, 1, 1, 1))


def _shape_names(shapes: list[str] | tuple[str, ...]) -> list[str]:
    """The shape classes as a list; each must be one of SHAPE_NAMES, and there must be some."""
    shapes = list(shapes)
    unknown = [name for name in shapes if name not in SHAPE_NAMES]
    if unknown or not shapes:
        raise UserError(
            f"dataset.shapes has unknown or no shape names {unknown}; "
            f"choose from {list(SHAPE_NAMES)}"
        )
    return shapes


def _noise_bank(seed: int, image_size: int, noise: float) -> Tensor:
    """The background noise textures, (_NOISE_BANK, 3, side, side) with std `noise`.

    They come from an ordinary generator on the CPU, so they are the same on every device;
    images pick one by hash and shift it.
    """
    cpu_generator = torch.Generator().manual_seed(seed)
    bank = torch.randn(_NOISE_BANK, 3, image_size, image_size, generator=cpu_generator)
    return bank * noise


def _info(image_size: int, shapes: list[str]) -> DatasetInfo:
    """The dataset's targets and class names: one class per shape (plus background in seg)."""
    num_classes = len(shapes)
    return DatasetInfo(
        name="shapes",
        image_size=(image_size, image_size),
        targets=frozenset({"cls", "seg", "det", "inst", "depth", "gen"}),
        num_classes={
            "cls": num_classes,
            "seg": num_classes + 1,
            "det": num_classes,
            "inst": num_classes,
        },
        class_names={
            "cls": shapes,
            "seg": ["background", *shapes],
            "det": shapes,
            "inst": shapes,
        },
    )


class ShapesData:
    """Procedural multi-task images, bound to a batch size, a shuffle seed and a device.

    Args:
        image_size: side of the square images in pixels.
        train_size: number of training images (indices 0..train_size-1).
        val_size: number of validation images.
        max_objects: objects per image are drawn uniformly from 1..max_objects.
        shapes: names of the shape classes, from SHAPE_NAMES.
        min_size: smallest object radius as a fraction of the image side.
        max_size: largest object radius as a fraction of the image side.
        noise: standard deviation of the background's per-pixel noise.
        seed: the data's seed; the images do not depend on the training seed.
        batch_size: images per (global) batch (runtime argument).
        shuffle_seed: seed of the training order, mixed with the epoch (runtime argument).
        device: where batches are generated (runtime argument).
        rank, world_size: this process's share of each training batch under data-parallel
            training: the `rank`-th of `world_size` equal slices (runtime arguments).
    """

    def __init__(
        self,
        image_size: int = 32,
        train_size: int = 12000,
        val_size: int = 2000,
        max_objects: int = 3,
        shapes: list[str] | tuple[str, ...] = SHAPE_NAMES[:5],
        min_size: float = 0.16,
        max_size: float = 0.32,
        noise: float = 0.04,
        seed: int = 0,
        *,
        batch_size: int = 64,
        shuffle_seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        shapes = _shape_names(shapes)
        if image_size < 8 or max_objects < 1 or not 0 < min_size <= max_size:
            raise UserError(
                "dataset needs image_size >= 8, max_objects >= 1 and 0 < min_size <= max_size; "
                f"got image_size={image_size}, max_objects={max_objects}, "
                f"min_size={min_size}, max_size={max_size}"
            )
        if train_size < batch_size or val_size < 1:
            raise UserError(
                f"dataset.train_size ({train_size}) must be at least trainer.batch_size "
                f"({batch_size}) and dataset.val_size ({val_size}) at least 1"
            )
        self.image_size = image_size
        self.train_size = train_size
        self.val_size = val_size
        self.max_objects = max_objects
        self.shapes = shapes
        self.min_size = min_size
        self.max_size = max_size
        self.seed = seed
        self.batch_size = batch_size
        self.share = slice(*shard(batch_size, rank, world_size))
        self.shuffle_seed = shuffle_seed
        self.device = torch.device(device)
        self._noise_bank = _noise_bank(seed, image_size, noise).to(self.device)
        self._templates = _templates(shapes).flatten().to(self.device)
        self.info = _info(image_size, shapes)

    def num_train_batches(self) -> int:
        return self.train_size // self.batch_size

    def train_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Shuffled full batches of the training split, from batch `start` on."""
        generator = torch.Generator().manual_seed(self.shuffle_seed * 1_000_003 + epoch)
        order = torch.randperm(self.train_size, generator=generator).to(self.device)
        for batch_index in range(start, self.num_train_batches()):
            begin = batch_index * self.batch_size
            yield self.generate("train", order[begin : begin + self.batch_size][self.share])

    def val_batches(self) -> Iterator[Batch]:
        for begin in range(0, self.val_size, self.batch_size):
            end = min(begin + self.batch_size, self.val_size)
            yield self.generate("val", torch.arange(begin, end, device=self.device))

    def _uniform(self, split: str, indices: Tensor, count: int) -> Tensor:
        """Numbers in [0, 1), shape (B, count), fixed by (seed, split, index, position)."""
        base = (self.seed * 2 + _SPLITS[split]) * 0x9E3779B9
        keys = _hash32(_hash32(indices.long() + base) + 0x632BE5AB * (self.seed + 1))
        positions = _hash32(torch.arange(count, device=indices.device) + 0x5BD1E995)
        bits = _hash32(_hash32(keys[:, None] ^ positions[None, :]) + 0x68E31DA4)
        return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))

    def generate(self, split: str, indices: Tensor) -> Batch:
        """The samples at `indices` of `split` ("train" or "val"), as one batch."""
        size, slots = self.image_size, self.max_objects
        indices = indices.to(self.device)
        batch = indices.numel()
        # Per image: 1 object count, 8 numbers per object slot, 8 for the background.
        numbers = self._uniform(split, indices, 1 + 8 * slots + 8)
        count = 1 + (numbers[:, 0] * slots).long().clamp(max=slots - 1)
        objects = numbers[:, 1 : 1 + 8 * slots].view(batch, slots, 8)
        background = numbers[:, 1 + 8 * slots :]

        kind = (objects[..., 0] * len(self.shapes)).long().clamp(max=len(self.shapes) - 1)
        radius = (self.min_size + (self.max_size - self.min_size) * objects[..., 3]) * size
        centre_x = (0.15 + 0.7 * objects[..., 1]) * size
        centre_y = (0.15 + 0.7 * objects[..., 2]) * size
        distance = 2.0 + 6.0 * objects[..., 4]
        active = torch.arange(slots, device=self.device)[None, :] < count[:, None]

        masks = self._object_masks(kind, centre_x, centre_y, radius) & active[..., None, None]

        # The nearest object covering a pixel is the one that is seen there.
        stacked = torch.where(masks, distance[..., None, None], torch.inf)
        nearest, owner = stacked.min(dim=1)  # (B, H, W)
        covered = torch.isfinite(nearest)
        rows = torch.arange(size, device=self.device, dtype=torch.float32)
        wall = 10.0 - 2.0 * rows[:, None] / size  # background recedes towards the top
        depth = torch.where(covered, nearest, wall.expand(batch, size, size))
        seg = torch.where(covered, kind.gather(1, owner.flatten(1)).view_as(owner) + 1, 0)

        image = self._paint(background, objects, owner, covered, batch)
        visible = owner[:, None] == torch.arange(slots, device=self.device)[None, :, None, None]
        visible = visible & covered[:, None]
        area = visible.sum(dim=(2, 3))
        label = kind.gather(1, area.argmax(dim=1, keepdim=True)).squeeze(1)
        boxes, labels, order = self._boxes(visible, area, kind)
        masks = visible.gather(1, order[..., None, None].expand_as(visible))
        return {
            "image": image,
            "targets": {
                "cls": label,
                "seg": seg,
                "det": {"boxes": boxes, "labels": labels},
                "inst": {"masks": masks, "labels": labels},
                "depth": depth.unsqueeze(1),
                "gen": image,
            },
        }

    def _object_masks(
        self, kind: Tensor, centre_x: Tensor, centre_y: Tensor, radius: Tensor
    ) -> Tensor:
        """Per-object masks (B, N, H, W), sampled from the shape templates."""
        side = _TEMPLATE + 2
        pixels = torch.arange(self.image_size, device=self.device, dtype=torch.float32) + 0.5
        scale = (_TEMPLATE / 2) / radius[..., None]
        # Template coordinates; 0 and side-1 are the empty border, so clamping there
        # turns everything outside the object's square into "not inside".
        cols = ((pixels - centre_x[..., None]) * scale + (_TEMPLATE / 2 + 1)).clamp(0, side - 1)
        rows = ((pixels - centre_y[..., None]) * scale + (_TEMPLATE / 2 + 1)).clamp(0, side - 1)
        offset = kind * (side * side)
        index = (offset[..., None] + rows.long() * side)[..., :, None] + cols.long()[..., None, :]
        return self._templates[index]

    def _paint(
        self, background: Tensor, objects: Tensor, owner: Tensor, covered: Tensor, batch: int
    ) -> Tensor:
        """Colour the image: shaded noisy background, flat-coloured objects on top."""
        size = self.image_size
        base = 0.15 + 0.5 * background[:, 0:3]  # (B, 3)
        slope_x = (background[:, 3] - 0.5) * 0.6
        slope_y = (background[:, 4] - 0.5) * 0.6
        ramp = torch.linspace(-0.5, 0.5, size, device=self.device)
        shade = (
            slope_x[:, None, None] * ramp[None, None, :]
            + slope_y[:, None, None] * ramp[None, :, None]
        )
        pick = (background[:, 5] * _NOISE_BANK).long().clamp(max=_NOISE_BANK - 1)
        texture = self._noise_bank[pick]
        canvas = base[:, :, None, None] + shade[:, None] + texture
        # Object colours are kept 0.3..0.7 away from the background's base colour (mod 1)
        # in every channel, so no object is invisible, while colour never reveals the class.
        colours = torch.remainder(base[:, :, None] + 0.3 + 0.4 * objects[..., 5:8].mT, 1.0)
        painted = colours.gather(2, owner.view(batch, 1, -1).expand(-1, 3, -1))
        painted = painted.view(batch, 3, size, size)
        return torch.where(covered[:, None], painted, canvas).clamp(0.0, 1.0)

    def _boxes(self, visible: Tensor, area: Tensor, kind: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Boxes around each object's visible pixels; hidden objects become padding. Also
        returns the slot order of the boxes (real objects first), to order the masks."""
        size = self.image_size
        coords = torch.arange(size, device=self.device)
        columns = visible.any(dim=2)  # (B, N, W)
        rows = visible.any(dim=3)  # (B, N, H)
        x1 = torch.where(columns, coords, size).amin(-1)
        x2 = torch.where(columns, coords + 1, 0).amax(-1)
        y1 = torch.where(rows, coords, size).amin(-1)
        y2 = torch.where(rows, coords + 1, 0).amax(-1)
        present = area > 0
        boxes = torch.stack([x1, y1, x2, y2], dim=-1).float() * present[..., None]
        labels = torch.where(present, kind, -1)
        # Real objects first, padding last, in slot order otherwise.
        order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)
        return boxes.gather(1, order[..., None].expand(-1, -1, 4)), labels.gather(1, order), order

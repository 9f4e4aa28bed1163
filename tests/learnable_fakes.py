"""Fakes with learnable structure, in the real datasets' on-disk formats.

`tests/fakes.py` writes random pixels: enough to test that a loader reads a format, not that
a protocol learns from it. The writers here draw scenes, faces and pets whose targets are
functions of the pixels, so a protocol that learns must beat the chance level a test states:

- NYUv2 / Cityscapes: rooms and streets rendered from a label map; each class has its own
  colour, shaded by distance (far is darker), so depth (or disparity) is a function of
  brightness and the normals a function of the class (floor up, ceiling down, the rest
  facing the camera).
- CelebA: faces whose 40 attributes are read off 8 drawn features (glasses, hat, beard,
  dark hair, pale skin, an open mouth, lipstick, bangs), and whose 5 landmarks are where
  the eyes, nose and mouth corners are drawn.
- Oxford-IIIT Pet: animals whose breed is their coat (a colour and a pattern), whose
  species is their ears, and whose trimap is the drawn animal (border: the band around it).

Every writer is seeded: the same call writes the same files.
"""

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fakes import CELEBA_ATTRIBUTES, _save_arrays, _write_lines

Generator = np.random.Generator

# --------------------------------------------------------------------------- scenes


def _shade(colours: np.ndarray, labels: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Pixels of a scene: each class's colour, darker with distance (1 near, ~0.3 at 8 m),
    plus a little noise; unlabelled pixels (-1) are grey."""
    base = np.where(labels[..., None] >= 0, colours[labels.clip(0)], 0.5)
    light = np.clip(1.15 - 0.11 * distance, 0.25, 1.0)[..., None]
    noise = np.random.default_rng(int(labels.sum()) % 2**32).normal(0, 0.02, base.shape)
    return np.clip(base * light + noise, 0, 1).astype(np.float32)


# NYUv2's 13 classes, by index (mtlrun.data.nyuv2.CLASS_NAMES): a colour each.
NYU_COLOURS = np.array(
    [
        [0.9, 0.2, 0.2], [0.2, 0.2, 0.9], [0.95, 0.95, 0.95], [0.9, 0.6, 0.1],
        [0.55, 0.35, 0.15], [0.5, 0.1, 0.6], [0.1, 0.8, 0.8], [0.9, 0.9, 0.1],
        [0.2, 0.7, 0.2], [0.6, 0.6, 0.3], [0.1, 0.1, 0.1], [0.75, 0.7, 0.6],
        [0.5, 0.8, 1.0],
    ]
)  # fmt: skip
FLOOR, CEILING, WALL = 4, 2, 11
ROOM_OBJECTS = (0, 3, 8, 9, 10)  # bed, chair, sofa, table, tv: stand on the floor
WALL_OBJECTS = (7, 12)  # picture, window: on the wall


def room(generator: Generator, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """A room: ceiling, a back wall at 2.5..6 m, a floor coming nearer towards the bottom,
    one thing on the wall and one or two standing on the floor (nearer than the wall)."""
    height, width = size
    rows = np.arange(height)[:, None] * np.ones((1, width))
    ceiling_line = int(height * generator.uniform(0.1, 0.22))
    floor_line = int(height * generator.uniform(0.55, 0.7))
    wall = generator.uniform(2.5, 6.0)
    labels = np.full(size, WALL)
    depth = np.full(size, wall)
    labels[:ceiling_line], labels[floor_line:] = CEILING, FLOOR
    # The floor nears from the wall's distance to 40% of it at the bottom row, the ceiling to 60%.
    below = (rows - floor_line) / max(height - floor_line, 1)
    depth = np.where(labels == FLOOR, wall * (1 - 0.6 * below), depth)
    above = (ceiling_line - rows) / max(ceiling_line, 1)
    depth = np.where(labels == CEILING, wall * (1 - 0.4 * above), depth)
    top, left = (
        generator.integers(ceiling_line + 2, floor_line - 6),
        generator.integers(0, width - 8),
    )
    tall, wide = generator.integers(4, max(5, (floor_line - top) // 2 + 2)), width // 5
    labels[top : top + tall, left : left + wide] = generator.choice(WALL_OBJECTS)
    for _ in range(generator.integers(1, 3)):
        wide, tall = (
            int(width * generator.uniform(0.2, 0.4)),
            int(height * generator.uniform(0.2, 0.4)),
        )
        left = generator.integers(0, width - wide)
        bottom = generator.integers(floor_line + 2, height + 1)
        labels[max(bottom - tall, 0) : bottom, left : left + wide] = generator.choice(ROOM_OBJECTS)
        depth[max(bottom - tall, 0) : bottom, left : left + wide] = wall * generator.uniform(
            0.4, 0.8
        )
    normal = np.zeros((*size, 3))
    normal[..., 2] = 1.0  # walls and things face the camera
    normal[labels == FLOOR] = (0.0, 1.0, 0.0)
    normal[labels == CEILING] = (0.0, -1.0, 0.0)
    return {"labels": labels, "depth": depth, "normal": normal}


def write_learnable_nyuv2(
    root: Path, train: int = 48, val: int = 16, size: tuple[int, int] = (48, 64)
) -> Path:
    """NYUv2's layout ({train,val}/{image,label,depth,normal}/{i}.npy, float32) with rooms
    (see `room`): labels -1 on a 1-pixel frame, depth 0 (invalid) in the first column, normals
    all-zero (invalid) in the last row, as the real files have such pixels."""
    generator = np.random.default_rng(10)
    for split, count in (("train", train), ("val", val)):
        for index in range(count):
            scene = room(generator, size)
            labels = scene["labels"].copy()
            labels[[0, -1]], labels[:, [0, -1]] = -1, -1
            depth = scene["depth"][..., None].copy()
            depth[:, 0] = 0.0
            normal = scene["normal"].copy()
            normal[-1] = 0.0
            image = _shade(NYU_COLOURS, scene["labels"], scene["depth"])
            _save_arrays(root, split, index, {
                "image": image, "label": labels.astype(np.float32),
                "depth": depth.astype(np.float32), "normal": normal.astype(np.float32),
            })  # fmt: skip
    return root


# Cityscapes' 7 categories, by index: flat, construction, object, nature, sky, human, vehicle.
CITY_COLOURS = np.array(
    [
        [0.5, 0.25, 0.5], [0.6, 0.6, 0.6], [0.9, 0.8, 0.1], [0.2, 0.6, 0.1],
        [0.3, 0.5, 0.9], [0.9, 0.1, 0.2], [0.1, 0.1, 0.6],
    ]
)  # fmt: skip
# The 19-class id each category is drawn as (road, building, pole, vegetation, sky, person, car).
CATEGORY_TO_CLASS = np.array([0, 2, 5, 8, 10, 11, 13])
SKY = 4


def street(generator: Generator, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """A street: sky, buildings and trees along a horizon, a road nearing towards the
    bottom, cars and people on it, poles; distance in metres (sky: infinitely far)."""
    height, width = size
    rows = np.arange(height)[:, None] * np.ones((1, width))
    horizon = int(height * generator.uniform(0.4, 0.55))
    labels = np.full(size, SKY)
    depth = np.full(size, np.inf)
    labels[horizon:] = 0
    depth = np.where(rows >= horizon, 60.0 / np.maximum(1 + rows - horizon, 1), depth)
    left = 0
    while left < width:  # buildings and trees, side by side along the horizon
        wide = int(generator.integers(width // 8, width // 3))
        top = int(horizon - generator.integers(height // 6, horizon))
        kind, distance = generator.choice([1, 1, 3]), generator.uniform(20, 50)
        labels[top:horizon, left : left + wide], depth[top:horizon, left : left + wide] = (
            kind,
            distance,
        )
        left += wide + int(generator.integers(0, width // 10))
    for kind, shape in ((6, (0.15, 0.3)), (6, (0.12, 0.25)), (5, (0.25, 0.06)), (2, (0.5, 0.03))):
        row = int(generator.integers(horizon + 2, height))
        tall, wide = max(int(height * shape[0]), 2), max(int(width * shape[1]), 2)
        left = int(generator.integers(0, width - wide))
        labels[max(row - tall, 0) : row, left : left + wide] = kind
        depth[max(row - tall, 0) : row, left : left + wide] = 60.0 / (1 + row - horizon)
    return {"labels": labels, "depth": depth}


def write_learnable_cityscapes(
    root: Path, train: int = 48, val: int = 16, size: tuple[int, int] = (32, 64)
) -> Path:
    """Cityscapes' layout ({train,val}/{image,label_7,label_19,depth}/{i}.npy) with streets
    (see `street`): disparity = 16 / distance, 0 (invalid) for the sky as in the real
    files; labels -1 on the bottom row (the ego car's bonnet is ignored there)."""
    generator = np.random.default_rng(11)
    for split, count in (("train", train), ("val", val)):
        for index in range(count):
            scene = street(generator, size)
            labels = scene["labels"].copy()
            labels[-1] = -1
            disparity = np.where(np.isfinite(scene["depth"]), 16.0 / scene["depth"], 0.0)
            shade_distance = np.where(np.isfinite(scene["depth"]), scene["depth"] / 8, 8.0)
            image = _shade(CITY_COLOURS, scene["labels"], shade_distance)
            fine = np.where(labels >= 0, CATEGORY_TO_CLASS[labels.clip(0)], -1)
            _save_arrays(root, split, index, {
                "image": image, "label_7": labels.astype(np.float32),
                "label_19": fine.astype(np.float32),
                "depth": disparity[..., None].astype(np.float32),
            })  # fmt: skip
    return root


# --------------------------------------------------------------------------- faces

FACE_FEATURES = ("glasses", "hat", "beard", "dark_hair", "pale", "mouth_open", "lipstick", "bangs")
# Attributes drawn as a feature of their own meaning; the others read a feature too (see
# `attribute_features`), so every attribute is a function of the pixels.
NAMED_FEATURES = {
    "Eyeglasses": ("glasses", False), "Wearing_Hat": ("hat", False),
    "Goatee": ("beard", False), "Male": ("beard", False), "Mustache": ("beard", False),
    "No_Beard": ("beard", True), "Black_Hair": ("dark_hair", False),
    "Blond_Hair": ("dark_hair", True), "Pale_Skin": ("pale", False),
    "Mouth_Slightly_Open": ("mouth_open", False), "Smiling": ("mouth_open", False),
    "Wearing_Lipstick": ("lipstick", False), "Heavy_Makeup": ("lipstick", False),
    "Bangs": ("bangs", False),
}  # fmt: skip


def attribute_features() -> list[tuple[str, bool]]:
    """For each of CelebA's 40 attributes, in file order: the drawn feature it reads and
    whether it is that feature's negation."""
    return [
        NAMED_FEATURES.get(name, (FACE_FEATURES[index % 8], bool(index // 8 % 2)))
        for index, name in enumerate(CELEBA_ATTRIBUTES)
    ]


def face(generator: Generator, features: dict[str, bool]) -> tuple[Image.Image, list[int]]:
    """A 178 x 218 face with the given features, and its 5 landmarks (left eye, right eye,
    nose, left and right mouth corner; x, y in pixels) where they are drawn."""
    picture = Image.new("RGB", (178, 218), tuple(int(v) for v in generator.integers(40, 200, 3)))
    draw = ImageDraw.Draw(picture)
    cx, cy = 89 + int(generator.integers(-12, 13)), 115 + int(generator.integers(-10, 11))
    half_width, half_height = int(generator.integers(42, 54)), int(generator.integers(58, 70))
    hair = (20, 15, 10) if features["dark_hair"] else (235, 200, 60)
    draw.ellipse((cx - half_width - 8, cy - half_height - 12, cx + half_width + 8, cy + 10), hair)
    skin = (245, 225, 215) if features["pale"] else (170, 110, 70)
    draw.ellipse((cx - half_width, cy - half_height, cx + half_width, cy + half_height), skin)
    if features["bangs"]:
        draw.rectangle(
            (cx - half_width + 6, cy - half_height + 4, cx + half_width - 6, cy - 38), hair
        )
    if features["hat"]:
        draw.rectangle(
            (
                cx - half_width - 14,
                cy - half_height - 30,
                cx + half_width + 14,
                cy - half_height + 8,
            ),
            (30, 60, 220),
        )
    eye_y, eye_dx = cy - 22, int(generator.integers(18, 26))
    for x in (cx - eye_dx, cx + eye_dx):
        draw.ellipse((x - 6, eye_y - 5, x + 6, eye_y + 5), (10, 10, 40))
        if features["glasses"]:
            draw.ellipse((x - 15, eye_y - 13, x + 15, eye_y + 13), outline=(0, 0, 0), width=5)
    nose = (cx + int(generator.integers(-4, 5)), cy + 6)
    draw.polygon(
        [(nose[0], nose[1] - 16), (nose[0] - 7, nose[1]), (nose[0] + 7, nose[1])], (120, 60, 40)
    )
    mouth_y, mouth_dx = cy + 34, int(generator.integers(24, 31))
    if features["beard"]:
        draw.ellipse((cx - 30, mouth_y - 4, cx + 30, cy + half_height), (60, 40, 20))
    lips = (230, 10, 40) if features["lipstick"] else (100, 50, 40)
    tall = 13 if features["mouth_open"] else 6
    draw.ellipse(
        (cx - mouth_dx, mouth_y - tall, cx + mouth_dx, mouth_y + tall),
        (255, 255, 255) if features["mouth_open"] else lips,
        outline=lips,
        width=7,
    )
    points = [
        cx - eye_dx,
        eye_y,
        cx + eye_dx,
        eye_y,
        *nose,
        cx - mouth_dx,
        mouth_y,
        cx + mouth_dx,
        mouth_y,
    ]
    return picture, points


def write_learnable_celeba(root: Path, train: int = 192, valid: int = 64, test: int = 8) -> Path:
    """root/celeba/ as torchvision reads it (see `fakes.write_celeba`), with `face`s whose
    features are drawn independently, each present with probability 1/2."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(12)
    readers = attribute_features()
    partition = [0] * train + [1] * valid + [2] * test
    attributes, landmarks, splits, identities, boxes = [], [], [], [], []
    for index, split in enumerate(partition):
        name = f"{index + 1:06d}.jpg"
        features = {feature: bool(generator.integers(2)) for feature in FACE_FEATURES}
        picture, points = face(generator, features)
        picture.save(folder / "img_align_celeba" / name, quality=95)
        values = [1 if features[feature] != negated else -1 for feature, negated in readers]
        attributes.append(f"{name} " + " ".join(f"{value:2d}" for value in values))
        landmarks.append(f"{name} " + " ".join(f"{value:4d}" for value in points))
        splits.append(f"{name} {split}")
        identities.append(f"{name} {index + 1}")
        boxes.append(f"{name}    95  71 226 313")
    count = str(len(partition))
    _write_lines(
        folder / "list_attr_celeba.txt", [count, " ".join(CELEBA_ATTRIBUTES) + " ", *attributes]
    )
    header = " ".join(
        f"{p}_{a}" for p in ("lefteye", "righteye", "nose", "leftmouth", "rightmouth") for a in "xy"
    )
    _write_lines(folder / "list_landmarks_align_celeba.txt", [count, header, *landmarks])
    _write_lines(folder / "list_eval_partition.txt", splits)
    _write_lines(folder / "identity_CelebA.txt", identities)
    _write_lines(folder / "list_bbox_celeba.txt", [count, "image_id x_1 y_1 width height", *boxes])
    return root


# --------------------------------------------------------------------------- pets

# (name, id in the real lists (1..37), species 1 cat / 2 dog, coat colour, coat pattern)
PET_BREEDS = (
    ("Abyssinian", 1, 1, (200, 120, 50), "plain"),
    ("american_bulldog", 2, 2, (240, 240, 230), "patch"),
    ("beagle", 5, 2, (150, 90, 30), "stripes"),
    ("Bengal", 6, 1, (230, 170, 60), "spots"),
)


def pet(generator: Generator, breed: int, size: tuple[int, int]) -> tuple[Image.Image, np.ndarray]:
    """A photograph of an animal of `breed` (its coat) on a noisy background, and the pet's
    mask: a body, a head and ears (pointed for cats, hanging for dogs)."""
    width, height = size
    _, _, species, colour, pattern = PET_BREEDS[breed]
    background = generator.integers(0, 256, 3)
    noise = generator.normal(0, 25, (height, width, 3))
    pixels = np.clip(background * 0.6 + 40 + noise, 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels)
    mask = Image.new("L", size, 0)
    cx, cy = width * generator.uniform(0.4, 0.6), height * generator.uniform(0.45, 0.6)
    scale = min(width, height) * generator.uniform(0.28, 0.36)
    head = (cx - 0.55 * scale, cy - 1.3 * scale, cx + 0.55 * scale, cy - 0.2 * scale)
    body = (cx - scale, cy - 0.4 * scale, cx + scale, cy + 0.9 * scale)
    if species == 1:  # pointed ears above the head
        ears = [
            [
                (head[0], head[1] + 8),
                (head[0] + 0.2 * scale, head[1] - 0.5 * scale),
                (head[0] + 0.45 * scale, head[1] + 4),
            ],
            [
                (head[2], head[1] + 8),
                (head[2] - 0.2 * scale, head[1] - 0.5 * scale),
                (head[2] - 0.45 * scale, head[1] + 4),
            ],
        ]
    else:  # ears hanging beside the head
        ears = [
            [
                (head[0] + 4, head[1] + 4),
                (head[0] - 0.3 * scale, head[1] + 0.8 * scale),
                (head[0] + 0.15 * scale, head[1] + 0.7 * scale),
            ],
            [
                (head[2] - 4, head[1] + 4),
                (head[2] + 0.3 * scale, head[1] + 0.8 * scale),
                (head[2] - 0.15 * scale, head[1] + 0.7 * scale),
            ],
        ]
    for draw, fill in ((ImageDraw.Draw(mask), 255), (ImageDraw.Draw(picture), colour)):
        draw.ellipse(body, fill)
        draw.ellipse(head, fill)
        for ear in ears:
            draw.polygon(ear, fill)
    coat = _coat(pattern, size, scale)
    pixels = np.asarray(picture).copy()
    inside = (np.asarray(mask) > 0) & coat
    pixels[inside] = (40, 25, 15) if pattern != "patch" else (90, 60, 30)
    return Image.fromarray(pixels), np.asarray(mask) > 0


def _coat(pattern: str, size: tuple[int, int], scale: float) -> np.ndarray:
    """Where a coat's second colour goes, over the whole picture (the mask cuts it out)."""
    width, height = size
    rows, columns = np.mgrid[:height, :width]
    period = max(int(scale / 3), 4)
    if pattern == "stripes":
        return (columns // (period // 2 + 1)) % 2 == 0
    if pattern == "spots":
        return ((rows % period) - period / 2) ** 2 + ((columns % period) - period / 2) ** 2 < (
            period / 4
        ) ** 2 * 2
    if pattern == "patch":
        return columns > width * 0.55
    return np.zeros((height, width), dtype=bool)


def write_learnable_pets(root: Path, trainval: int = 96, test: int = 32) -> Path:
    """root/oxford-iiit-pet/ as torchvision reads it (see `fakes.write_oxford_pets`): `pet`
    photographs of 4 breeds in turn, of varied sizes, as JPEGs, and trimaps that hold 1 on
    the pet, 3 on a band 2 pixels wide each side of its outline, 2 elsewhere."""
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "annotations" / "trimaps").mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(13)
    lists: dict[str, list[str]] = {"trainval": [], "test": []}
    number = 0
    for split, count in (("trainval", trainval), ("test", test)):
        for _ in range(count):
            breed = number % len(PET_BREEDS)
            name, class_id, species = PET_BREEDS[breed][:3]
            size = (int(generator.integers(80, 121)), int(generator.integers(80, 121)))
            picture, mask = pet(generator, breed, size)
            picture.save(base / "images" / f"{name}_{number + 1}.jpg", quality=92)
            outline = Image.fromarray((mask * 255).astype(np.uint8))
            grown = np.asarray(outline.filter(ImageFilter.MaxFilter(5))) > 0
            shrunk = np.asarray(outline.filter(ImageFilter.MinFilter(5))) > 0
            trimap = np.where(shrunk, 1, np.where(grown, 3, 2)).astype(np.uint8)
            Image.fromarray(trimap).save(
                base / "annotations" / "trimaps" / f"{name}_{number + 1}.png"
            )
            lists[split].append(f"{name}_{number + 1} {class_id} {species} {number + 1}")
            number += 1
    for split, lines in lists.items():
        _write_lines(base / "annotations" / f"{split}.txt", lines)
    return root


# --------------------------------------------------------------------------- COCO

# COCO-format categories, listed out of order with non-contiguous ids as real exports have
# them; each is drawn in its own colour.
COCO_CATEGORIES = (
    {"id": 12, "name": "triangle", "supercategory": "shape"},
    {"id": 3, "name": "circle", "supercategory": "shape"},
    {"id": 7, "name": "square", "supercategory": "shape"},
)
SHAPE_COLOURS = {3: (230, 40, 40), 7: (40, 200, 40), 12: (50, 80, 240)}


def shapes_picture(
    generator: Generator, size: tuple[int, int], count: int
) -> tuple[Image.Image, list[tuple[int, list[float], list[float]]]]:
    """A noisy picture of (width, height) `size` with `count` shapes, and each shape's
    (category id, [x, y, width, height]) box around its drawn pixels and its outline as a
    COCO polygon [x1, y1, x2, y2, ...] (a 24-gon for the discs)."""
    width, height = size
    noise = generator.normal(110, 30, (height, width, 3))
    picture = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    objects = []
    for _ in range(count):
        category = int(generator.choice(list(SHAPE_COLOURS)))
        side = int(generator.integers(min(size) // 5, min(size) // 2.5))
        x, y = int(generator.integers(0, width - side)), int(generator.integers(0, height - side))
        box = (x, y, x + side - 1, y + side - 1)
        if category == 3:
            draw.ellipse(box, SHAPE_COLOURS[category])
            angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            centre, radius = x + side / 2, side / 2
            corners = [
                (centre + radius * np.cos(a), y + radius + radius * np.sin(a)) for a in angles
            ]
        elif category == 7:
            draw.rectangle(box, SHAPE_COLOURS[category])
            corners = [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]
        else:
            corners = [(x, y + side - 1), (x + side - 1, y + side - 1), (x + side // 2, y)]
            draw.polygon(corners, SHAPE_COLOURS[category])
        outline = [float(value) for corner in corners for value in corner]
        objects.append((category, [float(x), float(y), float(side), float(side)], outline))
    return picture, objects


def write_learnable_coco(
    root: Path, train: int = 96, val: int = 32, splits: tuple[str, str] = ("train2017", "val2017")
) -> Path:
    """COCO's layout: {root}/annotations/instances_{split}.json and {root}/{split}/*.jpg,
    pictures of 48..80 px with 1-3 `shapes_picture` shapes each. The first image of each split
    also carries a crowd annotation and a box without area, which a reader must leave out."""
    generator = np.random.default_rng(14)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in zip(splits, (train, val), strict=True):
        (root / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            size = (int(generator.integers(48, 81)), int(generator.integers(48, 81)))
            picture, objects = shapes_picture(generator, size, int(generator.integers(1, 4)))
            name = f"{index + 1:012d}.jpg"
            picture.save(root / split / name, quality=92)
            images.append({"id": index + 1, "file_name": name, "width": size[0], "height": size[1]})
            if index == 0:
                objects += [(3, [0.0, 0.0, 10.0, 10.0], [], 1), (7, [5.0, 5.0, 0.0, 4.0], [], 0)]  # type: ignore[list-item]
            for category, box, outline, *crowd in objects:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": index + 1, "category_id": category,
                    "bbox": box, "area": box[2] * box[3], "iscrowd": crowd[0] if crowd else 0,
                    "segmentation": [outline] if outline else [],
                })  # fmt: skip
        document = {
            "images": images,
            "annotations": annotations,
            "categories": list(COCO_CATEGORIES),
        }
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
    return root

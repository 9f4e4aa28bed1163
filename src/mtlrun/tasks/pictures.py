"""Helpers that turn predictions into images for TensorBoard."""

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.utils import make_grid

# Distinct colours for class maps; class 0 (background) stays dark.
_PALETTE = torch.tensor(
    [
        [0.0, 0.0, 0.0], [0.9, 0.1, 0.1], [0.1, 0.7, 0.1], [0.1, 0.3, 0.9], [0.95, 0.8, 0.1],
        [0.8, 0.2, 0.8], [0.1, 0.8, 0.8], [1.0, 0.5, 0.0], [0.5, 0.3, 0.1], [0.6, 0.6, 0.6],
        [0.5, 0.0, 0.3], [0.0, 0.4, 0.4], [0.4, 0.5, 0.0], [0.3, 0.0, 0.6], [1.0, 0.6, 0.7],
    ]
)  # fmt: skip


def colourise(labels: Tensor) -> Tensor:
    """Class map (B, H, W) -> colours (B, 3, H, W); negative (ignored) labels are white."""
    palette = _PALETTE.to(labels.device)
    colours = palette[labels.clamp(min=0) % len(palette)].permute(0, 3, 1, 2)
    return torch.where((labels < 0)[:, None], 1.0, colours)


def overlay(images: Tensor, labels: Tensor, alpha: float = 0.6) -> Tensor:
    """Blend a colourised class map over the images."""
    return (1 - alpha) * images + alpha * colourise(labels)


def side_by_side(*columns: Tensor) -> Tensor:
    """One grid row per sample, one column per given batch: (3, H', W') in [0, 1]."""
    stacked = torch.stack([column.float().clamp(0, 1).cpu() for column in columns], dim=1)
    return make_grid(stacked.flatten(0, 1), nrow=len(columns), padding=1, pad_value=1.0)


# A turbo-like ramp (after Mikhailov 2019, "Turbo, An Improved Rainbow Colormap"), as
# evenly spaced anchors blended linearly: dark blue (low) through green to dark red (high).
_RAMP = torch.tensor(
    [
        [0.19, 0.07, 0.23], [0.27, 0.45, 0.95], [0.10, 0.80, 0.85], [0.35, 0.98, 0.45],
        [0.75, 0.95, 0.20], [0.98, 0.65, 0.15], [0.85, 0.25, 0.05], [0.48, 0.02, 0.01],
    ]
)  # fmt: skip


def colour_map(values: Tensor, low: float | Tensor, high: float | Tensor) -> Tensor:
    """Scalar maps (B, 1, H, W) -> colours (B, 3, H, W) on a turbo-like ramp over [low, high]."""
    ramp = _RAMP.to(values.device)
    scaled = ((values[:, 0].float() - low) / max(float(high - low), 1e-12)).clamp(0, 1)
    position = scaled * (len(ramp) - 1)
    lower = position.floor().long().clamp(max=len(ramp) - 2)
    fraction = (position - lower)[..., None]
    colours = ramp[lower] * (1 - fraction) + ramp[lower + 1] * fraction
    return colours.permute(0, 3, 1, 2)


def box_colour(label: int) -> tuple[int, int, int]:
    """Palette entry 0 is the dark background colour of class maps; box classes start at 1."""
    red, green, blue = (int(255 * c) for c in _PALETTE[(label + 1) % len(_PALETTE)].tolist())
    return red, green, blue


def ink(background: tuple[int, int, int]) -> str:
    """Black or white, whichever reads better on `background`."""
    red, green, blue = background
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else "white"


def draw_boxes(
    images: Tensor,
    boxes: list[Tensor],
    labels: list[Tensor],
    scale: int = 1,
    names: list[str] | None = None,
    scores: list[Tensor] | None = None,
) -> Tensor:
    """Each image with its boxes (xyxy pixels) drawn in the colour of their class, labelled
    with the class name (from `names`) and the score (from `scores`) when given.

    Images are enlarged `scale` times (nearest) first, so that on small images the lines
    (scale / 2 wide) are thinner than an image pixel and leave the object visible.
    Returns (B, 3, H * scale, W * scale) in [0, 1], on the CPU.
    """
    from torchvision.utils import draw_bounding_boxes

    drawn = []
    for index, (image, image_boxes, image_labels) in enumerate(
        zip(images, boxes, labels, strict=True)
    ):
        large = image[None].float().cpu().repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        canvas = (large[0].clamp(0, 1) * 255).round().to(torch.uint8)
        if len(image_boxes):
            classes = image_labels.tolist()
            texts = None
            if names is not None:
                values = None if scores is None else scores[index].tolist()
                texts = tag_texts(classes, names, values)
            canvas = draw_bounding_boxes(
                canvas, image_boxes.float().cpu() * scale, labels=texts,
                colors=[box_colour(label) for label in classes], width=max(1, scale // 2),
                label_colors=[ink(box_colour(label)) for label in classes], fill_labels=True,
            )  # fmt: skip
        drawn.append(canvas.float() / 255)
    return torch.stack(drawn)


def tag_texts(classes: list[int], names: list[str] | None, scores: list[float] | None) -> list[str]:
    """Each box's or instance's tag: its class name (the number where `names` has none),
    then its score to two decimals when `scores` are given."""
    texts = [names[c] if names and 0 <= c < len(names) else str(c) for c in classes]
    if scores is None:
        return texts
    return [f"{text} {score:.2f}" for text, score in zip(texts, scores, strict=True)]


def truth_vs_prediction(
    images: Tensor, truth: Tensor, predicted: Tensor, scale: int, threshold: float
) -> Tensor:
    """Input (enlarged `scale` times, as `truth` and `predicted` were drawn) | truth |
    prediction columns under their titles, the last naming the score `threshold`."""
    large = images.float().cpu().repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    titles = ["input", "truth", f"prediction >= {threshold:g}"]
    return titled(side_by_side(large, truth, predicted), titles, large.shape[-1])


def instance_colour(index: int) -> tuple[int, int, int]:
    """The colour of an image's `index`-th instance: the class palette without its dark
    background entry, in turn (instances are told apart by colour, not classes)."""
    colour = _PALETTE[1 + index % (len(_PALETTE) - 1)]
    red, green, blue = (int(255 * c) for c in colour.tolist())
    return red, green, blue


def draw_instances(
    images: Tensor,
    masks: list[Tensor],
    labels: list[Tensor],
    scale: int = 1,
    names: list[str] | None = None,
    scores: list[Tensor] | None = None,
) -> Tensor:
    """Each image enlarged `scale` times with its instance masks ((n, H, W) bool, best
    first) filled, each in its own colour (`instance_colour`), outlined by its box and
    labelled with its class name (and score) in a tag of its colour that stays inside the
    picture. The best instance is drawn last, on top; empty masks (nothing to show) are
    left out. Returns (B, 3, H * scale, W * scale) in [0, 1], on the CPU."""
    drawn = []
    for index, (image, image_masks) in enumerate(zip(images, masks, strict=True)):
        canvas = image.float().cpu().repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        shown = image_masks.flatten(1).any(1).cpu()
        big = image_masks.cpu()[shown].repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        colours = [instance_colour(k) for k in range(len(big))]
        for mask, colour in zip(big.flip(0), colours[::-1], strict=True):
            paint = torch.tensor(colour, dtype=torch.float32)[:, None, None] / 255
            canvas = torch.where(mask, 0.4 * canvas + 0.6 * paint, canvas)
        classes = labels[index].cpu()[shown].tolist()
        values = None if scores is None else scores[index].cpu()[shown].tolist()
        texts = tag_texts(classes, names, values)
        drawn.append(_tagged_boxes(canvas.clamp(0, 1), big, texts, colours))
    return torch.stack(drawn)


def _tagged_boxes(
    canvas: Tensor, masks: Tensor, texts: list[str], colours: list[tuple[int, int, int]]
) -> Tensor:
    """The boxes around `masks`, each with its text in a tag (see `_tag_places`); drawn in
    reverse order, so that the first is on top."""
    from PIL import ImageDraw

    from mtlrun.tasks.instance_metrics import masks_to_boxes

    picture = to_pil(canvas)
    draw = ImageDraw.Draw(picture)
    font = label_font()
    boxes = [[int(v) for v in box] for box in masks_to_boxes(masks).tolist()]
    sizes = [(int(font.getlength(text)) + 4, TEXT + 3) for text in texts]
    places = _tag_places(boxes, sizes, picture.width, picture.height)
    for box, text, colour, tag in reversed(list(zip(boxes, texts, colours, places, strict=True))):
        x1, y1, x2, y2 = box
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=colour)
        draw.rectangle(tag, fill=colour)
        middle = (tag[1] + tag[3]) // 2
        draw.text((tag[0] + 2, middle), text, fill=ink(colour), font=font, anchor="lm")
    return from_pil(picture)


def _tag_places(
    boxes: list[list[int]], sizes: list[tuple[int, int]], width: int, height: int
) -> list[tuple[int, int, int, int]]:
    """Where each box's tag goes, first box first: above the box (inside its top when there
    is no room above), shifted left where it would leave the picture, and moved down past
    the tags of earlier (better) boxes it would cover."""
    placed: list[tuple[int, int, int, int]] = []
    for (x1, y1, _, _), (tag_width, tag_height) in zip(boxes, sizes, strict=True):
        left = max(0, min(x1, width - tag_width))
        top = y1 - tag_height if y1 >= tag_height else y1
        for _ in range(len(placed)):
            hit = [
                p for p in placed if _overlap(p, (left, top, left + tag_width, top + tag_height))
            ]
            if not hit or max(p[3] for p in hit) + tag_height >= height:
                break
            top = max(p[3] for p in hit) + 1
        placed.append((left, top, left + tag_width, top + tag_height))
    return placed


def _overlap(first: tuple[int, int, int, int], second: tuple[int, int, int, int]) -> bool:
    return (
        first[0] < second[2]
        and second[0] < first[2]
        and first[1] < second[3]
        and second[1] < first[3]
    )


# --- labels: titles, legends, colour bars and tables drawn into the pictures ---------------

TILE = 96  # pictures' tiles are enlarged (nearest) to at least this many pixels, for labels
TEXT = 11  # label font size, pixels


def label_font(size: int = TEXT) -> Any:
    """Pillow's built-in font at `size` pixels (no font file needed), for every label."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def to_pil(picture: Tensor) -> Any:
    """(3, H, W) in [0, 1] -> a PIL RGB image."""
    from PIL import Image

    array = (picture.float().clamp(0, 1).cpu() * 255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy(), "RGB")


def from_pil(image: Any) -> Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def enlarged(images: Tensor, tile: int = TILE) -> Tensor:
    """Images enlarged by the whole factor (nearest: pixels stay sharp) that makes them at
    least `tile` pixels wide."""
    factor = max(1, -(-tile // images.shape[-1]))
    return images.float().cpu().repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def text_band(width: int, texts: list[str], positions: list[int], height: int = 16) -> Tensor:
    """A white band `width` wide with each text centred on its x position."""
    from PIL import Image, ImageDraw

    band = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(band)
    font = label_font()
    for text, x in zip(texts, positions, strict=True):
        draw.text((x, height // 2), text, fill="black", font=font, anchor="mm")
    return from_pil(band)


def stack(*parts: Tensor) -> Tensor:
    """Pictures one above the other, each padded with white to the widest."""
    width = max(part.shape[-1] for part in parts)
    padded = [
        torch.nn.functional.pad(part, (0, width - part.shape[-1]), value=1.0) for part in parts
    ]
    return torch.cat(padded, dim=1)


def titled_columns(titles: list[str], *columns: Tensor) -> Tensor:
    """`side_by_side` of the columns (enlarged to tiles of at least `TILE` pixels) under a
    row of `titles`, one per column."""
    big = [enlarged(column) for column in columns]
    return titled(side_by_side(*big), titles, big[0].shape[-1])


def titled(grid: Tensor, titles: list[str], tile: int) -> Tensor:
    """A grid of `tile`-wide columns (make_grid's padding of 1) under their `titles`."""
    step = tile + 1
    centres = [1 + step * k + step // 2 for k in range(len(titles))]
    return stack(text_band(grid.shape[-1], titles, centres), grid)


def legend(names: list[str], colours: list[tuple[float, float, float]], width: int) -> Tensor:
    """Coloured squares with their class names, wrapped into rows `width` pixels wide."""
    from PIL import Image, ImageDraw

    font, box, gap, row_height = label_font(), 10, 10, 16
    widths = [box + 4 + int(font.getlength(name)) + gap for name in names]
    rows, x = 1, 4
    for item in widths:
        if x + item > width and x > 4:
            rows, x = rows + 1, 4
        x += item
    image = Image.new("RGB", (width, rows * row_height + 4), "white")
    draw = ImageDraw.Draw(image)
    x, y = 4, 3
    for name, colour, item in zip(names, colours, widths, strict=True):
        if x + item > width and x > 4:
            x, y = 4, y + row_height
        fill = tuple(int(255 * c) for c in colour)
        draw.rectangle((x, y + 2, x + box, y + 2 + box), fill=fill, outline="black")
        draw.text((x + box + 4, y + 7), name, fill="black", font=font, anchor="lm")
        x += item
    return from_pil(image)


def class_legend(names: list[str], width: int, ignored: bool = False) -> Tensor:
    """The legend of `colourise`'s class colours (class k has palette entry k; ignored
    pixels white)."""
    colours = [_rgb(_PALETTE[k % len(_PALETTE)]) for k in range(len(names))]
    extra = [("ignored", (1.0, 1.0, 1.0))] if ignored else []
    return legend(names + [n for n, _ in extra], colours + [c for _, c in extra], width)


def box_legend(names: list[str], width: int) -> Tensor:
    """The legend of `draw_boxes`'s class colours."""
    colours = [tuple(c / 255 for c in box_colour(k)) for k in range(len(names))]
    return legend(names, colours, width)  # type: ignore[arg-type]


def _rgb(colour: Tensor) -> tuple[float, float, float]:
    red, green, blue = colour.tolist()
    return red, green, blue


def colour_bar(low: float, high: float, width: int, label: str) -> Tensor:
    """`colour_map`'s ramp from `low` to `high`, with the two values and what they measure."""
    from PIL import ImageDraw

    bar_width = max(width - 140, 60)
    ramp = torch.linspace(0, 1, bar_width)[None, None, None].expand(1, 1, 10, bar_width)
    strip = colour_map(ramp, 0.0, 1.0)[0]
    canvas = to_pil(torch.ones(3, 26, width))
    canvas.paste(to_pil(strip), (70, 3))
    draw = ImageDraw.Draw(canvas)
    font = label_font()
    draw.text((66, 8), f"{low:.3g}", fill="black", font=font, anchor="rm")
    draw.text((74 + bar_width, 8), f"{high:.3g}", fill="black", font=font, anchor="lm")
    draw.text((70 + bar_width // 2, 20), label, fill="black", font=font, anchor="mm")
    return from_pil(canvas)


def fitted(text: str, width: int, font: Any) -> str:
    """`text`, shortened (ending in '.') until it is at most `width` pixels long."""
    while len(text) > 1 and font.getlength(text) > width:
        text = text[:-2] + "."
    return text


def confusion_picture(matrix: Tensor, names: list[str]) -> Tensor:
    """A confusion matrix: rows the true classes, columns the predicted ones; each cell
    shaded by its share of its row and labelled with its count."""
    from PIL import Image, ImageDraw

    font = label_font()
    count = len(names)
    cell = max(28, min(56, 560 // max(count, 1)))
    margin = 12 + max(int(font.getlength(name)) for name in names) if names else 20
    top = 34
    size = (margin + cell * count + 8, top + cell * count + 8)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    shares = matrix / matrix.sum(1, keepdim=True).clamp(min=1)
    for row in range(count):
        for column in range(count):
            share = float(shares[row, column])
            x, y = margin + column * cell, top + row * cell
            shade = int(255 * (1 - 0.85 * share))
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(shade, shade, 255))
            ink = "white" if share > 0.5 else "black"
            value = f"{int(matrix[row, column])}"
            draw.text((x + cell // 2, y + cell // 2), value, fill=ink, font=font, anchor="mm")
        draw.text((margin - 6, top + row * cell + cell // 2), names[row], "black", font, "rm")
    for column in range(count):  # predicted class names above the columns
        name = fitted(names[column], cell - 2, font)
        draw.text((margin + column * cell + cell // 2, top - 6), name, "black", font, "ms")
    draw.text((2, 2), "rows: true class, columns: predicted", fill="black", font=font)
    return from_pil(image)

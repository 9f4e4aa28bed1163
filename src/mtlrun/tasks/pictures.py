"""Helpers that turn predictions into images for TensorBoard."""

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


def draw_boxes(images: Tensor, boxes: list[Tensor], labels: list[Tensor], scale: int = 1) -> Tensor:
    """Each image with its boxes (xyxy pixels) drawn in the colour of their class.

    Images are enlarged `scale` times (nearest) first, so that on small images the lines
    (scale / 2 wide) are thinner than an image pixel and leave the object visible.
    Returns (B, 3, H * scale, W * scale) in [0, 1], on the CPU.
    """
    from torchvision.utils import draw_bounding_boxes

    drawn = []
    for image, image_boxes, image_labels in zip(images, boxes, labels, strict=True):
        large = image[None].float().cpu().repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        canvas = (large[0].clamp(0, 1) * 255).round().to(torch.uint8)
        if len(image_boxes):
            # Palette entry 0 is the dark background colour of class maps; classes start at 1.
            colours = [
                tuple(int(255 * c) for c in _PALETTE[(label + 1) % len(_PALETTE)].tolist())
                for label in image_labels.tolist()
            ]
            canvas = draw_bounding_boxes(
                canvas, image_boxes.float().cpu() * scale, colors=colours, width=max(1, scale // 2)
            )
        drawn.append(canvas.float() / 255)
    return torch.stack(drawn)

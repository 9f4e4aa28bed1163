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

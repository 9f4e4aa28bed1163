"""The measured task-relation matrix: cosine similarity of the tasks' gradients on the
shared parameters, and the fraction of task pairs in conflict.

Two tasks conflict at a step when their gradients on the shared parameters point in
opposing directions, cos(g_i, g_j) < 0 (the definition of Yu et al., "Gradient Surgery for
Multi-Task Learning", NeurIPS 2020). Measuring costs one extra backward pass per task, at
the measured steps only.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from mtlrun.weighting.base import parameter_gradients

CELL = 44  # heatmap cell side, pixels
POSITIVE = (0.80, 0.15, 0.12)  # colour of cosine +1 (aligned); 0 is white
NEGATIVE = (0.13, 0.33, 0.80)  # colour of cosine -1 (opposed)


@dataclass
class TaskRelations:
    """The gradient-cosine matrix of one step.

    Attributes:
        task_names: the tasks, in the order of the matrix's rows and columns.
        cosine: [T, T] cosine similarities (float64, CPU); a task whose gradient is zero
            has cosine 0 with every task, itself included.
        step: the training step it was measured at.
    """

    task_names: list[str]
    cosine: Tensor
    step: int

    @property
    def conflict_fraction(self) -> float:
        """The fraction of task pairs i < j with negative cosine (0 with one task)."""
        count = len(self.task_names)
        if count < 2:
            return 0.0
        upper = self.cosine[tuple(torch.triu_indices(count, count, 1))]
        return float((upper < 0).double().mean())

    def scalars(self) -> dict[str, float]:
        """TensorBoard scalars: every pair's cosine and the conflict fraction."""
        names = self.task_names
        scalars = {
            f"relations/cosine/{names[i]}/{names[j]}": float(self.cosine[i, j])
            for i in range(len(names))
            for j in range(i + 1, len(names))
        }
        scalars["relations/conflict_fraction"] = self.conflict_fraction
        return scalars

    def to_json(self) -> dict[str, object]:
        """What `relations.json` holds: rows of the matrix in the order of `tasks`."""
        return {
            "step": self.step,
            "tasks": self.task_names,
            "cosine": [[round(value, 6) for value in row] for row in self.cosine.tolist()],
            "conflict_fraction": self.conflict_fraction,
        }

    def heatmap(self) -> Tensor:
        """The matrix as a (3, H, W) image in [0, 1] with task names on both axes."""
        return heatmap(self.cosine, self.task_names)


def measure_relations(
    losses: dict[str, Tensor], shared_parameters: Sequence[Tensor], step: int
) -> TaskRelations:
    """Per-task gradients on the shared parameters and their cosine matrix.

    Call it before the weighting's backward pass: the graph is retained for that pass, the
    shared parameters' `.grad` is left unset, and the task-specific parameters' `.grad`
    (which accumulate here) must be zeroed before the step's own backward (the engine's
    `zero_grad` does).
    """
    size = sum(parameter.numel() for parameter in shared_parameters)
    grads = parameter_gradients(list(losses.values()), shared_parameters, size, retain_graph=True)
    return TaskRelations(list(losses), cosine_matrix(grads).cpu(), step)


def cosine_matrix(grads: Tensor) -> Tensor:
    """[T, T] cosine similarities of the rows of a [T, P] matrix, in float64."""
    rows = grads.double()
    norms = rows.norm(dim=1)
    return (rows @ rows.T) / (norms[:, None] * norms[None, :]).clamp_min(1e-300)


def cell_colour(value: float) -> tuple[int, int, int]:
    """White at 0, blending to `POSITIVE` at +1 and to `NEGATIVE` at -1."""
    target = POSITIVE if value >= 0 else NEGATIVE
    amount = min(abs(value), 1.0)
    red, green, blue = (round(255 * (1 - amount + amount * channel)) for channel in target)
    return red, green, blue


def heatmap(matrix: Tensor, names: list[str]) -> Tensor:
    """A labelled heatmap of a [T, T] matrix with values in [-1, 1]: task names left of the
    rows and above the columns, each cell coloured by `cell_colour` and showing its value.
    Returns (3, H, W) floats in [0, 1]."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = (
        int(max(draw.textbbox((0, 0), name, font=default_font())[2] for name in names)) + 8
    )
    count = len(names)
    width, height = label_width + count * CELL + 4, 20 + count * CELL + 4
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for i, name in enumerate(names):
        top, left = 20 + i * CELL, label_width + i * CELL
        write(draw, (4, top + CELL // 2), name, "black", centre_x=False)
        write(draw, (left + CELL // 2, 10), name[:7], "black")
        for j in range(count):
            value = float(matrix[i, j])
            x = label_width + j * CELL
            draw.rectangle((x, top, x + CELL - 1, top + CELL - 1), fill=cell_colour(value))
            ink = "white" if abs(value) > 0.6 else "black"
            write(draw, (x + CELL // 2, top + CELL // 2), f"{value:+.2f}", ink)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(height, width, 3).permute(2, 0, 1).float() / 255


def write(
    draw: ImageDraw.ImageDraw, at: tuple[int, int], text: str, ink: str, centre_x: bool = True
) -> None:
    """Text centred vertically on `at` (and horizontally, if `centre_x`), placed from its
    measured box, so that bitmap fonts (which take no anchors) work too."""
    font = default_font()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = at[0] - (left + right) // 2 if centre_x else at[0] - left
    draw.text((x, at[1] - (top + bottom) // 2), text, fill=ink, font=font)


@cache
def default_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font (no font file needed)."""
    return ImageFont.load_default()

"""Pictures carry their own labels: column titles, class legends, colour bars, class names
and scores on boxes, and a confusion matrix with its counts."""

import torch

from mtlrun.data.shapes import ShapesData
from mtlrun.tasks.pictures import (
    class_legend,
    colourise,
    confusion_picture,
    draw_boxes,
    legend,
    text_band,
    titled_columns,
)


def ink(picture: torch.Tensor) -> torch.Tensor:
    """Where a picture is not white (text, colours)."""
    return (picture < 0.9).any(0)


def test_titles_stand_above_their_columns() -> None:
    columns = [torch.rand(2, 3, 32, 32) for _ in range(3)]
    picture = titled_columns(["input", "truth", "prediction"], *columns)
    assert picture.shape == (3, 16 + 2 * 97 + 1, 3 * 97 + 1)  # tiles enlarged to 96 px
    band = ink(picture[:, :16])
    for column in range(3):  # some text over the middle of each column, none at its edges
        middle = 1 + column * 97 + 48
        assert band[:, middle - 15 : middle + 15].any()
        assert not band[:, 1 + column * 97 : 1 + column * 97 + 3].any()


def test_text_is_drawn_and_differs_by_text() -> None:
    one, other = text_band(100, ["truth"], [50]), text_band(100, ["prediction"], [50])
    assert ink(one).any() and not torch.equal(one, other)


def test_the_class_legend_shows_each_class_colour() -> None:
    names = ["background", "circle", "square"]
    picture = class_legend(names, 300, ignored=True)
    assert picture.shape[:2] == (3, 20)
    pixels = picture.permute(1, 2, 0).reshape(-1, 3)
    for label in range(3):
        colour = colourise(torch.tensor([[[label]]]))[0, :, 0, 0]
        assert (pixels - colour).abs().sum(1).lt(0.02).sum() >= 50, names[label]


def test_a_long_legend_wraps_into_rows() -> None:
    names = [f"class number {k}" for k in range(12)]
    colours = [(0.5, 0.5, 0.5)] * 12
    assert legend(names, colours, 200).shape[1] > 3 * legend(names[:1], colours[:1], 200).shape[1]


def test_boxes_carry_class_names_and_scores() -> None:
    image = torch.zeros(1, 3, 64, 64)
    boxes = [torch.tensor([[8.0, 20.0, 56.0, 60.0]])]
    labels = [torch.tensor([1])]
    plain = draw_boxes(image, boxes, labels, 2)
    named = draw_boxes(image, boxes, labels, 2, ["circle", "square"])
    scored = draw_boxes(image, boxes, labels, 2, ["circle", "square"], [torch.tensor([0.87])])
    above_box = (slice(None), slice(40, 60), slice(16, 110))  # the label sits at the box's top
    assert not torch.equal(plain[0][above_box], named[0][above_box])
    assert not torch.equal(named[0][above_box], scored[0][above_box])


def test_confusion_matrix_picture_grows_with_the_classes() -> None:
    small = confusion_picture(torch.eye(2) * 5, ["a", "b"])
    large = confusion_picture(torch.eye(8) * 5, [f"class {k}" for k in range(8)])
    assert large.shape[1] > small.shape[1] and large.shape[2] > small.shape[2]
    assert small.min() >= 0 and small.max() <= 1


def test_shapes_names_its_classes_for_the_legends() -> None:
    info = ShapesData(val_size=2, batch_size=2).info
    assert info.class_names["seg"][0] == "background" and len(info.class_names["det"]) >= 3

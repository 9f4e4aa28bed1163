"""The `landmarks` task: output shape, L1 loss on image fractions, and the normalised mean
error on a hand-computed case."""

import pytest
import torch

from mtlrun.data import DatasetInfo
from mtlrun.errors import UserError
from mtlrun.tasks.landmarks import PREDICTION, TRUTH, LandmarksTask

POINTS = ["left_eye", "right_eye", "nose"]
INFO = DatasetInfo(
    name="faces",
    image_size=(20, 40),  # height 20, width 40
    targets=frozenset({"landmarks"}),
    class_names={"landmarks": POINTS},
)
# One face: eyes 10 px apart; the prediction misses the nose by 5 px (3 across, 4 down).
TARGET = torch.tensor([[[10.0, 5.0], [20.0, 5.0], [15.0, 10.0]]])
PREDICTED_PX = torch.tensor([[[10.0, 5.0], [20.0, 5.0], [18.0, 14.0]]])
PREDICTED = PREDICTED_PX / torch.tensor([40.0, 20.0])  # the head predicts fractions of (W, H)


def make(**settings: object) -> LandmarksTask:
    return LandmarksTask("landmarks", INFO, in_channels=6, stride=1, **settings)


def test_nme_divides_the_mean_point_error_by_the_eye_distance() -> None:
    task = make()
    task.update_metrics(PREDICTED, TARGET)
    metrics = task.compute_metrics()
    assert metrics["error_px"] == pytest.approx(5 / 3)
    assert metrics["nme"] == pytest.approx(5 / 3 / 10)


def test_loss_is_l1_on_fractions_of_the_image() -> None:
    loss = make().loss(PREDICTED, TARGET)
    assert loss.item() == pytest.approx((3 / 40 + 4 / 20) / 6)


def test_head_gives_one_point_per_name() -> None:
    assert make().head(torch.rand(2, 6, 3, 3)).shape == (2, 3, 2)


def test_pictures_draw_on_the_images() -> None:
    two = make().pictures(
        torch.zeros(2, 3, 20, 40), PREDICTED.repeat(2, 1, 1), TARGET.repeat(2, 1, 1)
    )["truth_vs_prediction"]
    # a row of two images enlarged 3x, 1 px padding, and the legend below
    assert two.shape[0] == 3 and two.shape[2] == 2 * 121 + 1 and two.shape[1] > 62
    assert two.sum() > 0  # the points are drawn on black images


def test_pictures_mark_truth_with_rings_and_predictions_with_crosses() -> None:
    """At the true nose (15, 10), enlarged 3x to (46, 31) in a tile 1 px in from the edge, a
    green ring around an undrawn centre; at the predicted nose (18, 14), a red cross's centre.
    Eight images wrap into two rows of four, so tiles stay large when TensorBoard fits the
    picture to its card."""
    picture = make().pictures(torch.zeros(1, 3, 20, 40), PREDICTED, TARGET)["truth_vs_prediction"]
    green, red = torch.tensor(TRUTH) / 255, torch.tensor(PREDICTION) / 255
    assert torch.allclose(picture[:, 1 + 31, 1 + 46 + 4], green, atol=0.01)  # on the ring
    assert torch.equal(picture[:, 1 + 31, 1 + 46], torch.zeros(3))  # inside it: the image
    assert torch.allclose(picture[:, 1 + 43, 1 + 55], red, atol=0.01)
    legend = picture[:, -20:]
    assert (legend - green[:, None, None]).abs().sum(0).lt(0.03).any()  # both markers
    assert (legend - red[:, None, None]).abs().sum(0).lt(0.03).any()
    eight = make().pictures(
        torch.zeros(8, 3, 20, 40), PREDICTED.repeat(8, 1, 1), TARGET.repeat(8, 1, 1)
    )["truth_vs_prediction"]
    assert eight.shape[2] == 4 * 121 + 1 and eight.shape[1] == 2 * 61 + 1 + 20


def test_reference_points_must_exist() -> None:
    with pytest.raises(UserError, match="normalise_by"):
        make(normalise_by=[0, 5])

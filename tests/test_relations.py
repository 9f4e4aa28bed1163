"""The measured task-relation matrix: cosines against a direct computation, the conflict
fraction, the heatmap, and a run that logs it without changing its training."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn

from mtlrun.build import build
from mtlrun.engine import fit
from mtlrun.relations import (
    CELL,
    TaskRelations,
    cell_colour,
    cosine_matrix,
    heatmap,
    measure_relations,
)

ComposeConfig = Callable[..., DictConfig]


class Toy(nn.Module):
    """A shared layer and one head per task; `losses` picks how each task's loss is made."""

    def __init__(self, tasks: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inputs, self.targets = torch.randn(8, 4), torch.randn(tasks, 8)
        self.shared = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(5, 1) for _ in range(tasks))

    def regression_losses(self) -> dict[str, Tensor]:
        features = self.shared(self.inputs)
        return {
            f"t{index}": (head(features).squeeze(1) - target).pow(2).mean()
            for index, (head, target) in enumerate(zip(self.heads, self.targets, strict=True))
        }

    def shared_parameters(self) -> list[Tensor]:
        return list(self.shared.parameters())


def direct_cosines(losses: dict[str, Tensor], parameters: list[Tensor]) -> Tensor:
    grads = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, parameters, retain_graph=True)])
        for loss in losses.values()
    ]
    return torch.stack(
        [torch.stack([F.cosine_similarity(a, b, dim=0) for b in grads]) for a in grads]
    ).double()


def test_cosines_match_a_direct_computation() -> None:
    toy = Toy()
    losses = toy.regression_losses()
    relations = measure_relations(losses, toy.shared_parameters(), step=7)
    torch.testing.assert_close(
        relations.cosine, direct_cosines(losses, toy.shared_parameters()), rtol=1e-5, atol=1e-6
    )
    assert relations.task_names == ["t0", "t1", "t2"] and relations.step == 7


def test_identical_tasks_have_cosine_one_and_opposite_losses_minus_one() -> None:
    toy = Toy(tasks=1)
    (loss,) = toy.regression_losses().values()
    same = measure_relations({"a": loss, "b": loss}, toy.shared_parameters(), step=0)
    torch.testing.assert_close(same.cosine, torch.ones(2, 2, dtype=torch.float64))
    assert same.conflict_fraction == 0.0
    opposite = measure_relations({"a": loss, "b": -loss}, toy.shared_parameters(), step=0)
    expected = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(opposite.cosine, expected)
    assert opposite.conflict_fraction == 1.0


def test_conflict_fraction_counts_pairs_with_negative_cosine() -> None:
    cosine = torch.tensor(
        [[1.0, -0.2, 0.3, 0.0], [-0.2, 1.0, -0.9, 0.1], [0.3, -0.9, 1.0, 0.4], [0.0, 0.1, 0.4, 1.0]]
    )
    assert TaskRelations(list("abcd"), cosine, 0).conflict_fraction == pytest.approx(2 / 6)
    assert TaskRelations(["a"], torch.ones(1, 1), 0).conflict_fraction == 0.0


def test_a_task_without_gradient_has_cosine_zero() -> None:
    grads = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    torch.testing.assert_close(
        cosine_matrix(grads),
        torch.tensor([[1.0, 0, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.float64),
    )


def test_measuring_leaves_the_steps_gradients_as_they_would_be() -> None:
    """Measure, zero the gradients (as the engine's update does), then the step's own
    backward: the same gradients as without measuring, and the graph was still there."""
    results = []
    for measure in (False, True):
        toy = Toy()
        losses = toy.regression_losses()
        if measure:
            measure_relations(losses, toy.shared_parameters(), step=0)
            assert all(p.grad is None for p in toy.shared_parameters())
            toy.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        results.append([p.grad.clone() for p in toy.parameters()])
    for plain, measured in zip(*results, strict=True):
        torch.testing.assert_close(plain, measured, rtol=0, atol=0)


# --- the heatmap -----------------------------------------------------------------------------


def test_heatmap_cells_have_the_colour_of_their_value() -> None:
    names = ["cls", "segmentation", "gen"]
    matrix = torch.tensor([[1.0, -0.5, 0.0], [-0.5, 1.0, -1.0], [0.0, -1.0, 1.0]])
    image = heatmap(matrix, names)
    assert image.shape[0] == 3 and image.min() >= 0 and image.max() <= 1
    height, width = image.shape[1:]
    label_width = width - 4 - 3 * CELL
    for i in range(3):
        for j in range(3):
            corner = image[:, 20 + i * CELL + 2, label_width + j * CELL + 2]
            expected = torch.tensor(cell_colour(float(matrix[i, j]))) / 255
            torch.testing.assert_close(corner, expected, rtol=0, atol=1e-6)
    assert height == 20 + 3 * CELL + 4


def test_heatmap_colours_run_from_blue_through_white_to_red() -> None:
    assert cell_colour(0.0) == (255, 255, 255)
    red, blue = cell_colour(1.0), cell_colour(-1.0)
    assert red[0] > red[2] and blue[2] > blue[0]
    half = cell_colour(0.5)
    assert all(full <= part < 255 for full, part in zip(red, half, strict=True))


def test_heatmap_shows_the_task_names() -> None:
    """The label column and row hold dark text pixels, and other names draw other text."""
    matrix = torch.eye(2)
    first, second = heatmap(matrix, ["ab", "ba"]), heatmap(matrix, ["ba", "ab"])
    label_width = first.shape[2] - 4 - 2 * CELL
    row_labels = first[:, 20:, :label_width]
    column_labels = first[:, :20, label_width:]
    assert (row_labels.mean(0) < 0.5).any() and (column_labels.mean(0) < 0.5).any()
    assert first.shape == second.shape and not torch.equal(first, second)


# --- in a run --------------------------------------------------------------------------------

RUN = (
    "tasks=[cls,seg,gen]",
    "backbone.channels=[8,16]",
    "dataset.image_size=16",
    "dataset.train_size=24",
    "trainer.threads=1",
    "trainer.num_images=0",
    "optimizer=sgd",
)


def test_run_logs_the_matrix_and_trains_exactly_as_without(
    compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    measured = build(compose_tiny(*RUN, "trainer.relations_every_n_steps=2"), tmp_path / "on")
    plain = build(compose_tiny(*RUN), tmp_path / "off")
    fit(measured)
    fit(plain)
    for (key, value), other in zip(
        measured.model.state_dict().items(), plain.model.state_dict().values(), strict=True
    ):
        assert torch.equal(value, other), key

    written = json.loads((tmp_path / "on" / "relations.json").read_text())
    assert written["step"] == 2 and written["tasks"] == ["cls", "seg", "gen"]
    cosine = torch.tensor(written["cosine"])
    assert cosine.shape == (3, 3) and torch.allclose(cosine, cosine.T)
    torch.testing.assert_close(cosine.diagonal(), torch.ones(3))
    assert not (tmp_path / "off" / "relations.json").exists()

    events = EventAccumulator(str(tmp_path / "on"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [event.step for event in events.Images("relations/gradient_cosine")] == [2]
    conflicts = events.Scalars("relations/conflict_fraction")
    negative = sum(value < 0 for value in (cosine[0, 1], cosine[0, 2], cosine[1, 2]))
    assert conflicts[-1].value == pytest.approx(float(negative) / 3)
    logged = events.Scalars("relations/cosine/cls/seg")[-1].value
    assert logged == pytest.approx(float(cosine[0, 1]), abs=1e-6)


def test_cross_stitch_measures_on_its_whole_trunk(
    compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    run = build(
        compose_tiny(*RUN, "model.sharing=cross_stitch", "trainer.relations_every_n_steps=3"),
        tmp_path,
    )
    fit(run)
    written = json.loads((tmp_path / "relations.json").read_text())
    assert written["step"] == 3 and len(written["cosine"]) == 3

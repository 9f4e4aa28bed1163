"""`sum` and `static` weighting: the gradients they leave are Σ λ_t ∇L_t."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from mtlrun.engine import Run
from mtlrun.errors import UserError
from mtlrun.weighting import StepContext, Weighting
from mtlrun.weighting.static import Static
from mtlrun.weighting.sum import Sum

BuildRun = Callable[..., Run]

TASKS = ["first", "second", "third"]


class ToyModel(nn.Module):
    """A shared linear layer and one linear head per task, with per-task losses that pull
    the shared layer in different directions."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(8, 3, generator=generator)
        self.shared = nn.Linear(3, 4)
        self.heads = nn.ModuleDict({name: nn.Linear(4, 1) for name in TASKS})

    def losses(self) -> tuple[dict[str, Tensor], StepContext]:
        features = self.shared(self.inputs)
        losses = {
            name: (head(features) - index).pow(2).mean()
            for index, (name, head) in enumerate(self.heads.items())
        }
        return losses, StepContext(list(self.shared.parameters()), features, step=0)


@pytest.fixture
def model() -> ToyModel:
    torch.manual_seed(0)
    return ToyModel()


def expected_gradients(model: ToyModel, lambdas: dict[str, float]) -> list[Tensor]:
    """Σ_t λ_t ∇L_t, each ∇L_t from its own backward pass."""
    parameters = list(model.parameters())
    total = [torch.zeros_like(parameter) for parameter in parameters]
    for name in TASKS:
        losses, _ = model.losses()
        gradients = torch.autograd.grad(losses[name], parameters, allow_unused=True)
        for accumulated, gradient in zip(total, gradients, strict=True):
            if gradient is not None:
                accumulated += lambdas[name] * gradient
    return total


def apply(weighting: Weighting, model: ToyModel) -> dict[str, Tensor]:
    weighting.setup(TASKS)
    model.zero_grad(set_to_none=True)
    losses, context = model.losses()
    return weighting.backward(losses, context)


def assert_gradients(model: ToyModel, expected: list[Tensor]) -> None:
    for parameter, gradient in zip(model.parameters(), expected, strict=True):
        assert parameter.grad is not None
        torch.testing.assert_close(parameter.grad, gradient)


def test_sum_gives_the_sum_of_task_gradients(model: ToyModel) -> None:
    expected = expected_gradients(model, dict.fromkeys(TASKS, 1.0))
    weights = apply(Sum(), model)
    assert_gradients(model, expected)
    assert {name: float(weight) for name, weight in weights.items()} == dict.fromkeys(TASKS, 1.0)


@pytest.mark.parametrize(
    "given",
    [{}, {"first": 2.0}, {"first": 0.25, "second": 0.0, "third": 3.0}],
    ids=["none-listed", "one-listed", "all-listed"],
)
def test_static_gives_lambda_weighted_gradients(model: ToyModel, given: dict[str, float]) -> None:
    lambdas = {name: given.get(name, 1.0) for name in TASKS}
    expected = expected_gradients(model, lambdas)
    weights = apply(Static(weights=given), model)
    assert_gradients(model, expected)
    assert {name: float(weight) for name, weight in weights.items()} == lambdas


def test_static_zero_weight_leaves_that_head_untouched(model: ToyModel) -> None:
    apply(Static(weights={"second": 0.0}), model)
    head = model.heads["second"]
    assert all(not parameter.grad.any() for parameter in head.parameters())
    assert all(parameter.grad.any() for parameter in model.heads["first"].parameters())


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"foo": 1.0}, "foo"),
        ({"first": -0.5}, "-0.5"),
        ({"first": float("nan")}, "nan"),
    ],
    ids=["unselected-task", "negative", "nan"],
)
def test_static_rejects_bad_lambdas(given: dict[str, float], named: str) -> None:
    with pytest.raises(UserError, match=named):
        Static(weights=given).setup(TASKS)


def test_static_weights_from_the_command_line_form(
    build_tiny_run: BuildRun, tmp_path: Path
) -> None:
    """The override form documented in conf/weighting/static.yaml composes and applies."""
    run = build_tiny_run(
        tmp_path, "tasks=[cls,seg,gen]", "weighting=static", "weighting.weights={cls:2.0,seg:0.5}"
    )
    assert run.weighting.lambdas.tolist() == [2.0, 0.5, 1.0]


def test_static_unselected_task_from_config_is_a_user_error(
    build_tiny_run: BuildRun, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="foo"):
        build_tiny_run(tmp_path, "tasks=[cls]", "weighting=static", "weighting.weights={foo:1.0}")

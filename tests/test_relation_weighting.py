"""`weighting=relation`: the regularizer's value and gradient against a direct computation,
the learned Ω, the fixed matrices' validation, per-task λ, and exact resume of Ω."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn

from mtlrun import checkpoint
from mtlrun.build import build
from mtlrun.engine import fit
from mtlrun.errors import UserError
from mtlrun.weighting import StepContext
from mtlrun.weighting.relation import TaskRelation

ComposeConfig = Callable[..., DictConfig]
TASKS = ["a", "b", "c"]
SHAPES = [(2, 3), (4,)]  # every task's task-specific parameters: two tensors of these shapes


class Problem:
    """Per-task parameters of identical shape (W's columns) and a head per task whose loss
    does not touch them, so that their gradient is the regularizer's alone."""

    def __init__(self, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.task_parameters = {
            name: [nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]
            for name in TASKS
        }
        self.heads = {name: nn.Parameter(torch.randn(3, generator=generator)) for name in TASKS}

    def context(self, step: int = 0) -> tuple[dict[str, Tensor], StepContext]:
        losses = {name: head.pow(2).sum() for name, head in self.heads.items()}
        features = torch.zeros(1)
        return losses, StepContext([], features, step=step, task_parameters=self.task_parameters)

    def columns(self) -> Tensor:
        """W as one [P, T] matrix (a fresh leaf), assembled directly."""
        flat = [torch.cat([p.detach().reshape(-1) for p in self.task_parameters[n]]) for n in TASKS]
        return torch.stack(flat, dim=1).double().requires_grad_(True)

    def gradients(self) -> Tensor:
        """The task parameters' `.grad` as a [P, T] matrix."""
        flat = [torch.cat([p.grad.reshape(-1) for p in self.task_parameters[n]]) for n in TASKS]
        return torch.stack(flat, dim=1).double()


def by_name(matrix: Tensor) -> dict[str, dict[str, float]]:
    """A [T, T] matrix as the config's {task: {task: value}}."""
    return {a: {b: float(matrix[i, j]) for j, b in enumerate(TASKS)} for i, a in enumerate(TASKS)}


def relation(**settings: Any) -> TaskRelation:
    method = TaskRelation(**settings)
    method.setup(TASKS)
    return method


def random_covariance(seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    factor = torch.randn(len(TASKS), len(TASKS), generator=generator, dtype=torch.float64)
    return factor @ factor.T + 0.5 * torch.eye(len(TASKS), dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_covariance_form_value_and_gradient_match_a_direct_computation(seed: int) -> None:
    problem, covariance = Problem(seed), random_covariance(seed)
    method = relation(mu=0.3, mode="fixed", covariance=by_name(covariance))
    method.backward(*problem.context())

    columns = problem.columns()
    direct = 0.3 * torch.trace(columns @ torch.linalg.inv(covariance) @ columns.T)
    direct.backward()
    torch.testing.assert_close(method.regularizer.double(), direct.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(problem.gradients(), columns.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_graph_form_is_the_pairwise_distance_sum_and_the_laplacian_trace(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    upper = torch.rand(len(TASKS), len(TASKS), generator=generator, dtype=torch.float64).triu(1)
    weights = upper + upper.T + torch.diag(torch.tensor([5.0, 0.0, 2.0], dtype=torch.float64))
    problem = Problem(seed)
    method = relation(mu=0.7, mode="fixed", relation=by_name(weights))
    method.backward(*problem.context())

    columns = problem.columns()
    pairs = sum(
        weights[i, j] * (columns[:, i] - columns[:, j]).pow(2).sum()
        for i in range(len(TASKS))
        for j in range(i + 1, len(TASKS))
    )
    off_diagonal = weights - torch.diag(weights.diagonal())  # r_ii plays no part
    laplacian = torch.diag(off_diagonal.sum(1)) - off_diagonal
    trace = torch.trace(columns @ laplacian @ columns.T)
    torch.testing.assert_close(pairs, trace)
    (0.7 * pairs).backward()
    torch.testing.assert_close(method.regularizer.double(), 0.7 * trace.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(problem.gradients(), columns.grad, rtol=1e-5, atol=1e-6)


def test_task_losses_get_their_lambda_and_the_heads_only_their_own_gradient() -> None:
    problem = Problem()
    method = relation(mu=0.0, weights={"b": 2.5})
    weights = method.backward(*problem.context())
    assert {name: float(value) for name, value in weights.items()} == {"a": 1, "b": 2.5, "c": 1}
    for name, head in problem.heads.items():
        torch.testing.assert_close(head.grad, weights[name] * 2 * head.detach())


def test_bad_lambda_is_rejected_with_statics_message() -> None:
    with pytest.raises(UserError, match=r"weighting\.weights must be >= 0"):
        relation(weights={"a": -1.0})


# --- the learned Ω ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learned_covariance_is_psd_with_unit_trace_and_the_closed_form(seed: int) -> None:
    problem = Problem(seed)
    method = relation(mu=1.0, eps=1e-9, update_every_n_steps=1)
    method.backward(*problem.context())
    covariance = method.covariance
    assert torch.allclose(covariance, covariance.T)
    assert torch.linalg.eigvalsh(covariance).min() >= 0
    torch.testing.assert_close(covariance.trace(), torch.tensor(1.0, dtype=torch.float64))
    # Ω² ∝ WᵀW: Ω is the (normalised) square root of the Gram matrix of the columns.
    gram = problem.columns().detach().T @ problem.columns().detach()
    squared = covariance @ covariance
    # (The Gram matrix is accumulated in float32, as in training.)
    torch.testing.assert_close(squared / squared.norm(), gram / gram.norm(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(method.coupling, torch.linalg.inv(covariance))


@pytest.mark.parametrize("seed", [0, 1])
def test_learned_covariance_minimises_the_regularizer_among_unit_trace_matrices(seed: int) -> None:
    """The closed form is the minimiser of tr(W Ω⁻¹ Wᵀ) over Ω ≻ 0 with tr Ω = 1."""
    problem = Problem(seed)
    method = relation(mu=1.0, eps=1e-9)
    method.backward(*problem.context())
    columns = problem.columns().detach()

    def objective(covariance: Tensor) -> float:
        return float(torch.trace(columns @ torch.linalg.inv(covariance) @ columns.T))

    best = objective(method.covariance)
    for other in range(20):
        candidate = random_covariance(100 + other)
        assert best <= objective(candidate / candidate.trace()) + 1e-9


def test_learned_covariance_changes_every_n_steps_only() -> None:
    problem = Problem()
    method = relation(mu=1.0, update_every_n_steps=3)
    optimizer = torch.optim.SGD([p for ps in problem.task_parameters.values() for p in ps], lr=0.1)
    seen = []
    for step in range(7):
        optimizer.zero_grad()
        method.backward(*problem.context(step))
        optimizer.step()
        seen.append(method.covariance.clone())
    changed = [step for step in range(1, 7) if not torch.equal(seen[step], seen[step - 1])]
    assert changed == [3, 6]


def test_zero_parameters_give_the_identity_over_t() -> None:
    problem = Problem()
    for parameters in problem.task_parameters.values():
        for parameter in parameters:
            parameter.data.zero_()
    method = relation()
    method.backward(*problem.context())
    identity = torch.eye(len(TASKS), dtype=torch.float64)
    torch.testing.assert_close(method.covariance, identity / len(TASKS))
    assert float(method.regularizer) == 0.0


def test_parameters_of_different_shapes_are_a_user_error() -> None:
    problem = Problem()
    problem.task_parameters["c"] = [nn.Parameter(torch.zeros(3, 2)), nn.Parameter(torch.zeros(4))]
    with pytest.raises(UserError, match="task 'c'"):
        relation().backward(*problem.context())


# --- validation of the fixed matrices --------------------------------------------------------

GOOD = {"a": {"a": 1.0, "b": 0.2, "c": 0.1}, "b": {"a": 0.2, "b": 1.0, "c": 0.3}}
GOOD["c"] = {"a": 0.1, "b": 0.3, "c": 1.0}


def changed(**entries: float) -> dict[str, dict[str, float]]:
    """GOOD with entries like a_b=0.9 set (one side only, unless both are given)."""
    matrix = {row: dict(values) for row, values in GOOD.items()}
    for key, value in entries.items():
        row, column = key.split("_")
        matrix[row][column] = value
    return matrix


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        (
            {"covariance": changed(a_b=0.9)},
            r"not symmetric: \[a\]\[b\] = 0\.9 but \[b\]\[a\] = 0\.2",
        ),
        ({"covariance": {**GOOD, "c": {"a": 0.1, "c": 1.0}}}, r"not square: row 'c'"),
        ({"covariance": {"a": GOOD["a"], "b": GOOD["b"]}}, r"not square: row 'a'"),
        (
            {"covariance": {"a": {"a": 1.0, "b": 0.0}, "b": {"a": 0.0, "b": 1.0}}},
            r"every selected task; missing: \['c'\]",
        ),
        (
            {"covariance": {"a": {"a": 1.0, "d": 0.0}, "d": {"a": 0.0, "d": 1.0}}},
            r"weighting\.covariance names task\(s\) \['d'\] that are not selected",
        ),
        ({"covariance": changed(b_b=0.0)}, r"\[b\]\[b\] = 0 must be > 0"),
        ({"covariance": changed(a_c=1.5, c_a=1.5)}, r"\[a\]\[c\] = 1\.5 is too large"),
        (
            {"covariance": changed(a_b=0.9, b_a=0.9, a_c=0.9, c_a=0.9, b_c=-0.9, c_b=-0.9)},
            r"not positive definite \(smallest eigenvalue .*along tasks \['a', 'b', 'c'\]",
        ),
        ({"covariance": changed(a_b="x", b_a="x")}, r"\[a\]\[b\] = x is not a finite number"),
        ({"covariance": {"a": 1.0}}, r"must map each task to \{task: value\}"),
        ({"relation": changed(a_b=-0.5, b_a=-0.5)}, r"relation\[a\]\[b\] = -0\.5 is negative"),
    ],
    ids=[
        "asymmetric",
        "row-missing-a-column",
        "rows-missing-a-column",
        "omega-missing-a-task",
        "unselected-task",
        "zero-variance",
        "too-large-entry",
        "indefinite",
        "not-a-number",
        "not-a-matrix",
        "negative-relation",
    ],
)
def test_bad_fixed_matrices_name_the_wrong_entry(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(UserError, match=named):
        relation(mode="fixed", **settings)


def test_relation_may_name_a_subset_of_the_tasks() -> None:
    method = relation(mode="fixed", relation={"a": {"a": 0, "c": 2}, "c": {"a": 2, "c": 0}})
    expected = torch.tensor([[2.0, 0, -2], [0, 0, 0], [-2, 0, 2]], dtype=torch.float64)
    torch.testing.assert_close(method.coupling, expected)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"mode": "fixed"}, "exactly one of"),
        ({"mode": "fixed", "covariance": GOOD, "relation": GOOD}, "exactly one of"),
        ({"mode": "learned", "relation": GOOD}, "needs weighting.mode=fixed"),
        ({"mode": "sometimes"}, "weighting.mode=sometimes is unknown"),
        ({"mu": -1.0}, "weighting.mu must be >= 0"),
        ({"eps": 0.0}, "eps > 0"),
        ({"update_every_n_steps": 0}, "update_every_n_steps >= 1"),
    ],
)
def test_bad_settings_are_user_errors(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(UserError, match=named):
        relation(**settings)


def test_covariance_from_the_command_line(compose_tiny: ComposeConfig, tmp_path: Path) -> None:
    """The nested-dict override reaches Ω by task name, and a bad one stops the build."""
    matrix = "{cls:{cls:2,seg:0.5},seg:{cls:0.5,seg:1}}"
    overrides = ("tasks=[cls,seg]", "weighting=relation", "weighting.mode=fixed")
    run = build(compose_tiny(*overrides, f"weighting.covariance={matrix}"), tmp_path)
    expected = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(run.weighting.covariance, expected)
    bad = "{cls:{cls:1,seg:0.5},seg:{cls:0.4,seg:1}}"
    with pytest.raises(UserError, match=r"\[cls\]\[seg\] = 0\.5 but \[seg\]\[cls\] = 0\.4"):
        build(compose_tiny(*overrides, f"weighting.covariance={bad}"), tmp_path / "bad")


# --- in real runs ----------------------------------------------------------------------------

SMALL = (
    "tasks=[cls,seg]",
    "backbone.channels=[8,16]",
    "dataset.image_size=16",
    "trainer.threads=1",
    "trainer.num_images=0",
)


def test_resume_restores_omega_exactly(compose_tiny: ComposeConfig, tmp_path: Path) -> None:
    learned = (
        *SMALL,
        "weighting=relation",
        "weighting.update_every_n_steps=1",
        "model.sharing=soft",
    )

    def train(folder: str, *overrides: str) -> Any:
        run = build(compose_tiny(*learned, *overrides), tmp_path / folder)
        fit(run)
        return run

    straight = train("straight", "trainer.epochs=2")
    first = train("first", "trainer.epochs=1")
    saved = checkpoint.load(first.output_dir / "checkpoints" / "last.pt")
    assert torch.equal(saved["weighting"]["covariance"], first.weighting.covariance)
    resumed = train("resumed", "trainer.epochs=2", f"resume={first.output_dir}")
    assert logged_steps(resumed.output_dir) == [3, 4]  # it trained the second epoch only

    start = torch.eye(2, dtype=torch.float64) / 2
    assert not torch.equal(first.weighting.covariance, start)  # Ω did move
    assert not torch.equal(straight.weighting.covariance, first.weighting.covariance)
    assert torch.equal(resumed.weighting.covariance, straight.weighting.covariance)
    assert torch.equal(resumed.weighting.coupling, straight.weighting.coupling)


def logged_steps(folder: Path) -> list[int]:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return [event.step for event in events.Scalars("train/loss/total")]


def test_relation_needs_task_parameters(compose_tiny: ComposeConfig, tmp_path: Path) -> None:
    """With hard sharing `adapter: auto` adds adapters; `adapter: none` is a clear error."""
    run = build(compose_tiny(*SMALL, "weighting=relation"), tmp_path)
    assert set(run.model.task_parameters()) == {"cls", "seg"}
    with pytest.raises(UserError, match=r"model\.adapter=conv"):
        build(compose_tiny(*SMALL, "weighting=relation", "model.adapter=none"), tmp_path / "x")


def test_omega_and_the_regularizer_are_logged(compose_tiny: ComposeConfig, tmp_path: Path) -> None:
    run = build(compose_tiny(*SMALL, "weighting=relation", "model.sharing=soft"), tmp_path)
    fit(run)
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    prefix = "train/weighting/"
    expected = {"regularizer", "omega/cls/cls", "omega/cls/seg", "omega/seg/seg"}
    assert {prefix + key for key in expected} <= tags
    last = events.Scalars(prefix + "omega/cls/seg")[-1].value
    assert last == pytest.approx(float(run.weighting.covariance[0, 1]), rel=1e-6)
    assert events.Scalars(prefix + "regularizer")[-1].value > 0


def test_config_file_lists_the_constructor_arguments() -> None:
    """conf/weighting/relation.yaml documents every argument of `TaskRelation`."""
    from inspect import signature

    from mtlrun.cli import config_dir

    written = OmegaConf.to_container(OmegaConf.load(config_dir() / "weighting" / "relation.yaml"))
    assert set(written) - {"_target_"} == set(signature(TaskRelation).parameters)

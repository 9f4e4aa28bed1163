"""The loss-weighting methods, each against the property that defines it, on small problems
whose answer is known; the shared per-task-gradient mechanism; and, for every file in
conf/weighting/, finite outputs, a short real training run and an exact resume."""

import copy
import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from torch import Tensor, nn

from mtlrun import checkpoint
from mtlrun.build import build
from mtlrun.cli import config_dir
from mtlrun.engine import fit
from mtlrun.weighting import StepContext, Weighting
from mtlrun.weighting.aligned_mtl import AlignedMTL
from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.cagrad import CAGrad
from mtlrun.weighting.dwa import DynamicWeightAverage
from mtlrun.weighting.famo import FAMO
from mtlrun.weighting.graddrop import GradDrop
from mtlrun.weighting.gradnorm import GradNorm
from mtlrun.weighting.imtl import IMTLG
from mtlrun.weighting.mgda import MGDA
from mtlrun.weighting.nash_mtl import NashMTL
from mtlrun.weighting.pcgrad import PCGrad, project_conflicting
from mtlrun.weighting.uw import UncertaintyWeighting

TASKS = ["a", "b", "c"]
METHODS = sorted(path.stem for path in (config_dir() / "weighting").glob("*.yaml"))
# Methods with a choice of where gradients are taken, run on their non-default side too.
VARIANTS = [(name, {}) for name in METHODS] + [
    ("mgda", {"on": "features"}),
    ("aligned_mtl", {"on": "features"}),
    ("imtl", {"on": "parameters"}),
    ("graddrop", {"on": "parameters"}),
    ("mgda", {"normalize": "l2"}),
    ("mgda", {"normalize": "loss+"}),
]
VARIANT_IDS = [name + "".join(f"-{value}" for value in over.values()) for name, over in VARIANTS]
FAST = settings(max_examples=40, deadline=None)


def make(name: str, **overrides: object) -> Weighting:
    """The weighting `conf/weighting/<name>.yaml` describes, with `overrides`."""
    node = OmegaConf.load(config_dir() / "weighting" / f"{name}.yaml")
    return instantiate(OmegaConf.merge(node, overrides))


class ToyModel(nn.Module):
    """A shared two-layer backbone (tanh) and one small head per task; task t regresses
    a different function, so the task gradients conflict."""

    def __init__(self, tasks: list[str] = TASKS, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(16, 5, generator=generator)
        self.targets = torch.randn(len(tasks), 16, generator=generator)
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh())
        self.heads = nn.ModuleDict({name: nn.Linear(4, 1) for name in tasks})

    def losses(self, step: int = 0, epoch: int = 0) -> tuple[dict[str, Tensor], StepContext]:
        features = self.backbone(self.inputs)
        losses = {
            name: (head(features).squeeze(1) - target).pow(2).mean() + 0.1
            for (name, head), target in zip(self.heads.items(), self.targets, strict=True)
        }
        shared = list(self.backbone.parameters())
        return losses, StepContext(shared, features, step=step, epoch=epoch)


def train_steps(
    method: Weighting, model: ToyModel, steps: range, optimizer: torch.optim.Optimizer
) -> list[dict[str, Tensor]]:
    """Steps as the engine takes them; a new epoch every second step (for DWA)."""
    returned = []
    for step in steps:
        optimizer.zero_grad(set_to_none=True)
        losses, context = model.losses(step=step, epoch=step // 2)
        returned.append(method.backward(losses, context))
        optimizer.step()
    return returned


def random_gradients(seed: int, tasks: int, size: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.rand(tasks, 1, generator=generator, dtype=torch.float64) * 3 + 0.1
    return torch.randn(tasks, size, generator=generator, dtype=torch.float64) * scales


def gradient_method(cls: type[GradientWeighting], **kwargs: object) -> GradientWeighting:
    method = cls(**kwargs)
    method.setup(TASKS)
    return method


# --- the shared per-task-gradient mechanism --------------------------------------------------


class FixedCombination(GradientWeighting):
    """Σ_t w_t g_t with fixed w: what every linear method reduces to once w is known."""

    sides = ("parameters", "features")

    def __init__(self, weights: list[float], on: str = "parameters") -> None:
        super().__init__(on)
        self.fixed = torch.tensor(weights)
        self.seen: Tensor | None = None

    def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        self.seen = grads.clone()
        weights = self.fixed.to(grads)
        return weights @ grads, weights


def own_gradients(model: ToyModel, name: str, parameters: list[Tensor]) -> list[Tensor]:
    losses, _ = model.losses()
    return list(torch.autograd.grad(losses[name], parameters))


@pytest.mark.parametrize("on", ["parameters", "features"])
def test_mechanism_writes_the_combination_and_heads_get_their_own_gradient(on: str) -> None:
    model = ToyModel()
    weights = [0.5, 2.0, -1.0]
    method = FixedCombination(weights, on=on)
    method.setup(TASKS)
    losses, context = model.losses()
    method.backward(losses, context)

    shared = list(model.backbone.parameters())
    losses, _ = model.losses()
    combined = sum(w * loss for w, loss in zip(weights, losses.values(), strict=True))
    for parameter, expected in zip(shared, torch.autograd.grad(combined, shared), strict=True):
        torch.testing.assert_close(parameter.grad, expected)
    for name, head in model.heads.items():
        head_parameters = list(head.parameters())
        expected = own_gradients(model, name, head_parameters)
        for parameter, gradient in zip(head_parameters, expected, strict=True):
            torch.testing.assert_close(parameter.grad, gradient)


@pytest.mark.parametrize("on", ["parameters", "features"])
def test_mechanism_hands_over_the_per_task_gradients(on: str) -> None:
    model = ToyModel()
    method = FixedCombination([1.0, 1.0, 1.0], on=on)
    method.setup(TASKS)
    losses, context = model.losses()
    method.backward(losses, context)
    assert method.seen is not None
    for row, name in zip(method.seen, TASKS, strict=True):
        losses, context = model.losses()
        target = context.features if on == "features" else context.shared_parameters
        expected = torch.autograd.grad(losses[name], target)
        torch.testing.assert_close(row, torch.cat([grad.flatten() for grad in expected]))


def count_backward_passes(module: nn.Module, calls: list[int]) -> None:
    """Append to `calls` whenever a gradient flows into `module`'s output."""

    def hook(module: nn.Module, inputs: object, output: Tensor) -> None:
        output.register_hook(lambda grad: calls.append(1))

    module.register_forward_hook(hook)


@pytest.mark.parametrize(
    ("method", "backbone_passes"),
    [
        (FixedCombination([1.0, 1.0, 1.0], on="parameters"), len(TASKS)),
        (FixedCombination([1.0, 1.0, 1.0], on="features"), 1),
        (GradNorm(), 1),
    ],
    ids=["parameters", "features", "gradnorm"],
)
def test_each_head_is_backpropagated_once_and_the_backbone_once_per_task_at_most(
    method: Weighting, backbone_passes: int
) -> None:
    model = ToyModel()
    backbone_calls: list[int] = []
    head_calls: dict[str, list[int]] = {name: [] for name in TASKS}
    count_backward_passes(model.backbone[0], backbone_calls)
    for name, head in model.heads.items():
        count_backward_passes(head, head_calls[name])
    method.setup(TASKS)
    method.backward(*model.losses())
    assert len(backbone_calls) == backbone_passes
    assert all(len(calls) == 1 for calls in head_calls.values())


# --- PCGrad ----------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 10_000), size=st.integers(1, 6))
def test_pcgrad_two_projected_gradients_do_not_conflict_with_the_originals(
    seed: int, size: int
) -> None:
    grads = random_gradients(seed, 2, size)
    projected = project_conflicting(grads @ grads.T) @ grads
    scale = grads.norm(dim=1).prod()
    assert projected[0] @ grads[1] >= -1e-12 * scale
    assert projected[1] @ grads[0] >= -1e-12 * scale
    if grads[0] @ grads[1] >= 0:
        torch.testing.assert_close(projected, grads)


def test_pcgrad_conflicting_pair_matches_the_projection_formula() -> None:
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    combined, weights = gradient_method(PCGrad).combine(grads)
    # g1 - (g1·g2/|g2|²) g2 = (0.5, 0.5); g2 - (g2·g1/|g1|²) g1 = (0, 1)
    torch.testing.assert_close(combined, torch.tensor([0.5, 1.5], dtype=torch.float64))
    torch.testing.assert_close(weights @ grads, combined)


def test_pcgrad_leaves_orthogonal_gradients_unchanged() -> None:
    grads = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, -1.0]])
    combined, weights = gradient_method(PCGrad).combine(grads)
    torch.testing.assert_close(combined, grads.sum(0))
    torch.testing.assert_close(weights, torch.ones(3))


# --- MGDA ------------------------------------------------------------------------------------


def brute_force_min_norm(grads: Tensor) -> Tensor:
    """The minimum-norm point of the hull, by trying every face: on each subset of tasks,
    the minimum of ||Σ w g||² with Σ w = 1 solves a linear system; keep the best feasible."""
    gram = (grads @ grads.T).numpy()
    count = len(gram)
    best, best_value = None, math.inf
    for size in range(1, count + 1):
        for face in itertools.combinations(range(count), size):
            index = list(face)
            system = np.block([
                [2 * gram[np.ix_(index, index)], np.ones((size, 1))],
                [np.ones((1, size)), np.zeros((1, 1))],
            ])  # fmt: skip
            solution = np.linalg.lstsq(system, np.r_[np.zeros(size), 1.0], rcond=None)[0][:size]
            if solution.min() < -1e-12:
                continue
            weights = np.zeros(count)
            weights[index] = solution
            value = weights @ gram @ weights
            if value < best_value:
                best, best_value = weights, value
    return torch.from_numpy(best) @ grads


@FAST
@given(seed=st.integers(0, 10_000), tasks=st.integers(2, 5), size=st.integers(1, 8))
def test_mgda_returns_the_minimum_norm_point_of_the_hull(seed: int, tasks: int, size: int) -> None:
    grads = random_gradients(seed, tasks, size)
    if seed % 3 == 0:  # a hull far from the origin: the answer is on a face
        grads = grads + 4 * random_gradients(seed + 1, 1, size)
    method = gradient_method(MGDA)
    combined, weights = method.combine(grads)
    assert weights.min() >= 0
    assert abs(float(weights.sum()) - 1) < 1e-12
    torch.testing.assert_close(weights @ grads, combined)
    scale = float(grads.norm(dim=1).max())
    assert float((combined - brute_force_min_norm(grads)).norm()) <= 1e-5 * scale
    assert int(method.solver_failures) == 0


def test_mgda_two_tasks_match_the_closed_form() -> None:
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    # α = (g2 - g1)·g2 / |g1 - g2|² = 4/5 on g1
    combined, weights = gradient_method(MGDA).combine(grads)
    torch.testing.assert_close(weights, torch.tensor([0.8, 0.2], dtype=torch.float64))
    torch.testing.assert_close(combined, torch.tensor([0.8, 0.4], dtype=torch.float64))


# --- CAGrad ----------------------------------------------------------------------------------


def cagrad_dual_objective(weights: np.ndarray, gram: np.ndarray, c: float) -> np.ndarray:
    """F(w) = g_w·g0 + c||g0|| ||g_w|| for rows of `weights`."""
    count = len(gram)
    radius = c * math.sqrt(gram.sum()) / count
    quadratic = np.einsum("ni,ij,nj->n", weights, gram, weights)
    return weights @ gram.sum(1) / count + radius * np.sqrt(np.maximum(quadratic, 0))


@FAST
@given(seed=st.integers(0, 10_000), tasks=st.integers(2, 3), size=st.integers(1, 6))
def test_cagrad_reaches_the_dual_bound_and_the_papers_direction(
    seed: int, tasks: int, size: int
) -> None:
    c = 0.4
    grads = random_gradients(seed, tasks, size)
    gram = (grads @ grads.T).numpy()
    method = gradient_method(CAGrad, c=c)
    combined, weights = method.combine(grads)
    assert int(method.solver_failures) == 0
    torch.testing.assert_close(weights @ grads, combined)
    mean = grads.mean(0)
    radius = c * mean.norm()
    scale = float(grads.norm(dim=1).max() ** 2)
    assert float((combined - mean).norm()) <= float(radius) * (1 + 1e-9) + 1e-9
    # Weak duality: every point of the simplex bounds the worst improvement from above; the
    # best point of a dense grid bounds it tightly, and d reaches it.
    axis = np.linspace(0, 1, 201)
    grid = np.array([(*p, 1 - sum(p)) for p in itertools.product(axis, repeat=tasks - 1)])
    grid = grid[grid[:, -1] >= 0]
    bound = cagrad_dual_objective(grid, gram, c).min()
    worst = float((grads @ combined).min())
    assert worst <= bound + 1e-9 * scale
    assert worst >= bound - 2e-3 * float(radius * grads.norm(dim=1).max())  # grid step
    # Where the paper's formula is defined, d = g0 + c||g0|| / ||g_w|| g_w with g_w the
    # normalised multipliers.
    mixed = (weights - 1 / tasks) @ grads
    if mixed.norm() > 1e-3 * grads.norm(dim=1).max():
        torch.testing.assert_close(combined, mean + radius / mixed.norm() * mixed)


def test_cagrad_with_c_zero_is_the_average_gradient() -> None:
    grads = random_gradients(3, 3, 4)
    combined, weights = gradient_method(CAGrad, c=0.0).combine(grads)
    torch.testing.assert_close(combined, grads.mean(0))
    torch.testing.assert_close(weights, torch.full((3,), 1 / 3, dtype=torch.float64))


# --- IMTL-G, Nash-MTL, Aligned-MTL ------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 10_000), tasks=st.integers(2, 5))
def test_imtl_projections_on_every_unit_gradient_are_equal(seed: int, tasks: int) -> None:
    grads = random_gradients(seed, tasks, tasks + 3)
    method = gradient_method(IMTLG, on="parameters")
    combined, weights = method.combine(grads)
    projections = grads @ combined / grads.norm(dim=1)
    torch.testing.assert_close(projections, projections.mean().expand(tasks))
    assert abs(float(weights.sum()) - 1) < 1e-9
    torch.testing.assert_close(weights @ grads, combined)
    assert int(method.solver_failures) == 0


@FAST
@given(seed=st.integers(0, 10_000), tasks=st.integers(2, 5))
def test_nash_mtl_solution_bargains_alpha_times_k_alpha_equal_one(seed: int, tasks: int) -> None:
    grads = random_gradients(seed, tasks, tasks + 2) * 10.0 ** (seed % 7 - 3)
    method = gradient_method(NashMTL)
    combined, alpha = method.combine(grads)
    gram = grads @ grads.T
    assert alpha.min() > 0
    torch.testing.assert_close(alpha * (gram @ alpha), torch.ones(tasks, dtype=torch.float64))
    torch.testing.assert_close(alpha @ grads, combined)
    assert int(method.solver_failures) == 0


def test_nash_mtl_counts_an_impossible_problem_as_a_solver_failure() -> None:
    grads = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)  # no α > 0 exists
    method = gradient_method(NashMTL)
    combined, alpha = method.combine(grads)
    assert int(method.solver_failures) == 1
    assert float(method.extra_scalars()["solver_failures"]) == 1
    # The documented fallback: MGDA's minimum-norm point, here zero (Pareto-stationary).
    torch.testing.assert_close(alpha, torch.full_like(alpha, 1 / 2))
    torch.testing.assert_close(combined, torch.zeros_like(combined))


@FAST
@given(seed=st.integers(0, 10_000), tasks=st.integers(2, 5))
def test_aligned_mtl_gives_an_orthogonal_system_with_equal_singular_values(
    seed: int, tasks: int
) -> None:
    grads = random_gradients(seed, tasks, tasks + 4)
    combined, weights = gradient_method(AlignedMTL).combine(grads)
    gram = grads @ grads.T
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    sigma_min = eigenvalues.min().sqrt()
    balance = sigma_min * eigenvectors @ torch.diag(eigenvalues.rsqrt()) @ eigenvectors.T
    aligned = balance @ grads
    singular = torch.linalg.svdvals(aligned)
    torch.testing.assert_close(singular, sigma_min.expand(tasks))
    torch.testing.assert_close(aligned @ aligned.T, sigma_min**2 * torch.eye(tasks).double())
    torch.testing.assert_close(combined, aligned.sum(0))
    torch.testing.assert_close(weights @ grads, combined)


def test_aligned_mtl_ignores_the_null_space_of_dependent_gradients() -> None:
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    combined, _ = gradient_method(AlignedMTL).combine(grads)
    assert torch.isfinite(combined).all()


# --- GradDrop --------------------------------------------------------------------------------


def test_graddrop_keeps_one_sign_per_position() -> None:
    torch.manual_seed(0)
    grads = torch.randn(3, 1000)
    grads[:, :10] = grads[:, :10].abs()  # positions where every task agrees: all kept
    combined, weights = gradient_method(GradDrop, on="parameters").combine(grads)
    torch.testing.assert_close(combined[:10], grads[:, :10].sum(0))
    # Every position keeps exactly the positive or exactly the negative parts.
    positive, negative = grads.clamp(min=0).sum(0), grads.clamp(max=0).sum(0)
    assert (torch.isclose(combined, positive) | torch.isclose(combined, negative)).all()
    assert ((weights >= 0) & (weights <= 1)).all()


def test_graddrop_draws_signs_with_the_purity_probability() -> None:
    torch.manual_seed(0)
    grads = torch.tensor([[3.0], [-1.0]]).expand(2, 20000).contiguous()  # purity 0.75
    combined, _ = gradient_method(GradDrop, on="parameters").combine(grads)
    kept_positive = (combined > 0).float().mean()
    assert abs(float(kept_positive) - 0.75) < 0.02


def test_graddrop_with_full_leak_is_the_plain_sum() -> None:
    grads = torch.randn(3, 50)
    combined, _ = gradient_method(GradDrop, on="parameters", leak=1.0).combine(grads)
    torch.testing.assert_close(combined, grads.sum(0))


# --- loss-based methods ------------------------------------------------------------------------


def test_uw_log_variances_move_to_the_log_of_each_loss() -> None:
    fixed = torch.tensor([0.5, 2.0, 8.0])
    anchor = nn.Parameter(torch.ones(()))
    method = UncertaintyWeighting()
    method.setup(TASKS)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5)
    context = StepContext([anchor], anchor, step=0)
    for _ in range(300):
        optimizer.zero_grad()
        losses = dict(zip(TASKS, (fixed * anchor).unbind(), strict=True))
        weights = method.backward(losses, context)
        optimizer.step()
    torch.testing.assert_close(method.log_variances.detach(), fixed.log(), atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.stack(list(weights.values())), 0.5 / fixed, rtol=2e-3, atol=0)


def test_dwa_weights_follow_the_papers_formula() -> None:
    method = DynamicWeightAverage(temperature=2.0)
    method.setup(TASKS)
    anchor = nn.Parameter(torch.ones(()))
    history = {  # epoch -> the losses of its steps
        0: [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]],
        1: [[1.0, 1.0, 1.0], [1.0, 3.0, 0.5]],
        2: [[0.5, 0.5, 0.5]],
        3: [[0.7, 0.1, 0.2]],
    }
    seen = {}
    for epoch, steps in history.items():
        for values in steps:
            losses = dict(zip(TASKS, (torch.tensor(values) * anchor).unbind(), strict=True))
            weights = method.backward(losses, StepContext([anchor], anchor, 0, epoch=epoch))
            seen[epoch] = torch.stack(list(weights.values()))
    average = {epoch: torch.tensor(steps).mean(0) for epoch, steps in history.items()}
    assert torch.equal(seen[0], torch.ones(3)) and torch.equal(seen[1], torch.ones(3))
    for epoch in (2, 3):
        ratios = average[epoch - 1] / average[epoch - 2]
        expected = 3 * torch.exp(ratios / 2) / torch.exp(ratios / 2).sum()
        torch.testing.assert_close(seen[epoch], expected)


def test_famo_updates_its_logits_as_computed_by_hand() -> None:
    lr, decay = 0.025, 1e-3
    method = FAMO(lr=lr, decay=decay)
    method.setup(TASKS)
    anchor = nn.Parameter(torch.ones(()))
    first, second = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, 1.9, 4.2])
    context = StepContext([anchor], anchor, step=0)

    weights = method.backward(dict(zip(TASKS, (first * anchor).unbind(), strict=True)), context)
    assert torch.equal(method.logits, torch.zeros(3))  # the first step only records
    z = torch.full((3,), 1 / 3)
    torch.testing.assert_close(torch.stack(list(weights.values())), (z / first) / (z / first).sum())

    anchor.grad = None
    weights = method.backward(dict(zip(TASKS, (second * anchor).unbind(), strict=True)), context)
    decrease = first.log() - second.log()
    grad = z * (decrease - (z * decrease).sum())  # softmax Jacobianᵀ δ at ξ = 0 (no decay)
    logits = -lr * grad / (grad.abs() + 1e-8)  # Adam's first step: lr · m̂ / (sqrt(v̂) + eps)
    torch.testing.assert_close(method.logits, logits)
    z = torch.softmax(logits, 0)
    expected = (z / second) / (z / second).sum()
    torch.testing.assert_close(torch.stack(list(weights.values())), expected)
    torch.testing.assert_close(anchor.grad, (expected * second).sum())


def test_gradnorm_updates_its_weights_as_computed_by_hand() -> None:
    model = ToyModel()
    method = GradNorm(alpha=1.5, lr=0.025)
    method.setup(TASKS)
    layer = model.backbone[2].weight  # the last shared weight
    losses, _ = model.losses()
    norms = torch.stack([
        torch.autograd.grad(losses[name], layer, retain_graph=True)[0].norm() for name in TASKS
    ])  # fmt: skip
    sum_gradients = torch.autograd.grad(sum(losses.values()), list(model.backbone.parameters()))

    weights = method.backward(*model.losses())
    assert torch.equal(torch.stack(list(weights.values())), torch.ones(3))  # used this step
    for parameter, expected in zip(model.backbone.parameters(), sum_gradients, strict=True):
        torch.testing.assert_close(parameter.grad, expected)
    # Step 0: L(0) = L, so every r_i = 1 and the target is the mean norm; w = 1.
    grad = torch.sign(norms - norms.mean()) * norms
    stepped = 1 - 0.025 * grad / (grad.abs() + 1e-8)
    torch.testing.assert_close(method.weights, stepped * 3 / stepped.sum())
    torch.testing.assert_close(method.initial_losses, torch.stack(list(losses.values())).detach())


# --- every method in conf/weighting/ -----------------------------------------------------------


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=VARIANT_IDS)
def test_weights_and_gradients_are_finite(name: str, overrides: dict[str, str]) -> None:
    model = ToyModel()
    method = make(name, **overrides)
    method.setup(TASKS)
    optimizer = torch.optim.SGD([*model.parameters(), *method.parameters()], lr=0.05)
    for weights in train_steps(method, model, range(5), optimizer):
        assert set(weights) == set(TASKS)
        assert all(weight.dim() == 0 and torch.isfinite(weight) for weight in weights.values())
    for parameter in model.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()
    assert all(math.isfinite(float(value)) for value in method.extra_scalars().values())
    if "solver_failures" in method.extra_scalars():
        assert int(method.solver_failures) == 0


@pytest.mark.parametrize(("name", "overrides"), VARIANTS, ids=VARIANT_IDS)
def test_resume_restores_the_state_exactly(
    name: str, overrides: dict[str, str], tmp_path: Path
) -> None:
    model = ToyModel()
    method = make(name, **overrides)
    method.setup(TASKS)
    optimizer = torch.optim.SGD([*model.parameters(), *method.parameters()], lr=0.05)
    train_steps(method, model, range(5), optimizer)
    checkpoint.save({"weighting": method.state_dict()}, tmp_path / "last.pt")

    restored = make(name, **overrides)
    restored.setup(TASKS)
    restored.load_state_dict(checkpoint.load(tmp_path / "last.pt")["weighting"])
    saved, loaded = method.state_dict(), restored.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[key], loaded[key]) for key in saved)

    # Both continue the same way (same model, same random numbers).
    twin = copy.deepcopy(model)
    continued = []
    for weighting, network in ((method, model), (restored, twin)):
        parameters = [*network.parameters(), *weighting.parameters()]
        torch.manual_seed(1)
        continued.append(train_steps(weighting, network, range(5, 8), torch.optim.SGD(parameters)))
    for first, second in zip(*continued, strict=True):
        assert all(torch.equal(first[task], second[task]) for task in TASKS)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the runs below (their tensors are tiny; with other processes on
    the machine, spinning thread pools make them ~10x slower), restored afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", METHODS)
def test_two_step_training_run(name: str, compose_tiny, tmp_path: Path, one_thread: None) -> None:
    cfg = compose_tiny(
        "tasks=[cls,seg,gen]",
        f"weighting={name}",
        "dataset.image_size=16",
        "dataset.train_size=8",
        "dataset.val_size=4",
        "trainer.batch_size=4",
        "trainer.num_images=0",
        "trainer.threads=1",
        "backbone.channels=[8,16]",
    )
    run = build(cfg, tmp_path)
    metrics = fit(run)
    assert metrics["step"] == 2
    assert all(math.isfinite(value) for value in metrics.values())
    assert (tmp_path / "checkpoints" / "last.pt").is_file()

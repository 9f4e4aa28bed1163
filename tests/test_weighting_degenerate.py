"""The gradient-based methods in degenerate cases (issue 15): opposite, zero, nearly
collinear and widely different-norm gradients, T = 2, 3, 5. CAGrad is checked against an
independent solution of the paper's primal problem (cvxpy with the Clarabel SOCP solver);
IMTL-G and Nash-MTL against their documented behaviour with a solved (zero-gradient) task
and with no common descent direction; GradDrop's sign(A) step; MGDA's normalisations."""

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mtlrun.errors import UserError
from mtlrun.weighting import StepContext
from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.cagrad import CAGrad
from mtlrun.weighting.graddrop import GradDrop
from mtlrun.weighting.imtl import IMTLG
from mtlrun.weighting.mgda import MGDA
from mtlrun.weighting.nash_mtl import NashMTL
from mtlrun.weighting.solvers import min_norm_weights

cp = pytest.importorskip("cvxpy")
# Clarabel at 1e-10 sometimes warns that it stopped short; the comparison's tolerance is wider.
pytestmark = pytest.mark.filterwarnings("ignore:Solution may be inaccurate")

FAMILIES = ["random", "opposite", "zero", "collinear", "spread"]


def family(name: str, tasks: int, size: int, seed: int = 0) -> Tensor:
    """[T, P] gradients of one degenerate family."""
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(tasks, size, generator=generator, dtype=torch.float64)
    if name == "opposite":  # 0 in the hull: no direction improves every task
        grads[1] = -grads[0]
    elif name == "zero":  # a solved task
        grads[0] = 0
    elif name == "collinear":
        grads = grads[:1] + 1e-6 * grads
    elif name == "spread":  # norms over six decades
        grads = grads * torch.logspace(-3, 3, tasks, dtype=torch.float64)[:, None]
    return grads


def make(cls: type[GradientWeighting], tasks: int, **kwargs: object) -> GradientWeighting:
    method = cls(**kwargs)
    method.setup([f"t{index}" for index in range(tasks)])
    return method


def cagrad_primal(grads: np.ndarray, c: float) -> tuple[float, np.ndarray]:
    """CAGrad's primal problem (Liu et al. 2021), max_d min_i g_i·d s.t. ||d - g0|| ≤
    c||g0||, solved by Clarabel."""
    mean = grads.mean(0)
    direction, level = cp.Variable(grads.shape[1]), cp.Variable()
    constraints = [
        grads @ direction >= level,
        cp.norm(direction - mean) <= c * np.linalg.norm(mean),
    ]
    problem = cp.Problem(cp.Maximize(level), constraints)
    problem.solve(cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return float(level.value), np.asarray(direction.value)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("tasks", [2, 3, 5])
@pytest.mark.parametrize("size", [10, 1000])
def test_cagrad_solves_the_papers_primal_problem_in_every_family(
    name: str, tasks: int, size: int
) -> None:
    c = 0.4
    grads = family(name, tasks, size)
    method = make(CAGrad, tasks, c=c)
    combined, weights = method.combine(grads)
    assert int(method.solver_failures) == 0
    torch.testing.assert_close(weights @ grads, combined)
    level, reference = cagrad_primal(grads.numpy(), c)
    scale = float(grads.norm(dim=1).max() ** 2)
    worst = float((grads @ combined).min())
    assert worst == pytest.approx(level, rel=1e-6, abs=1e-9 * scale)
    mean = grads.mean(0)
    assert float((combined - mean).norm()) <= c * float(mean.norm()) * (1 + 1e-9) + 1e-12
    if name in ("random", "collinear", "spread"):  # a unique optimum: the same d
        np.testing.assert_allclose(combined.numpy(), reference, rtol=0, atol=1e-5 * scale**0.5)


def test_cagrad_opposite_gradients_reach_zero_not_the_average() -> None:
    # The case (a): with d = g0 the worst task got -0.81 ... -21.1; the optimum is 0.
    grads = family("opposite", 3, 50, seed=4)
    combined, _ = make(CAGrad, 3).combine(grads)
    assert float((grads @ grads.mean(0)).min()) < -0.1
    assert abs(float((grads @ combined).min())) <= 1e-9 * float(grads.norm(dim=1).max() ** 2)


def test_cagrad_counts_an_inaccurate_solve() -> None:
    grads = family("random", 3, 10)
    grads[1, 0] = float("nan")
    method = make(CAGrad, 3)
    method.combine(grads)
    assert int(method.solver_failures) == 1


@pytest.mark.parametrize("tasks", [2, 3, 5])
def test_imtl_a_solved_task_leaves_the_others_balanced(tasks: int) -> None:
    grads = family("zero", tasks, 20)
    method = make(IMTLG, tasks, on="parameters")
    combined, alpha = method.combine(grads)
    assert float(alpha[0]) == 0.0 and float(alpha.sum()) == pytest.approx(1.0)
    units = grads[1:] / grads[1:].norm(dim=1, keepdim=True)
    projections = units @ combined
    torch.testing.assert_close(projections, projections[:1].expand_as(projections))
    assert float(projections[0]) > 0  # the others still move
    assert int(method.solver_failures) == 0


def test_imtl_all_gradients_zero_gives_equal_weights_and_no_update() -> None:
    combined, alpha = make(IMTLG, 3, on="parameters").combine(torch.zeros(3, 4))
    torch.testing.assert_close(alpha, torch.full((3,), 1 / 3))
    assert not combined.any()


@pytest.mark.parametrize("tasks", [2, 3, 5])
def test_nash_mtl_a_solved_task_gets_zero_and_the_others_bargain(tasks: int) -> None:
    grads = family("zero", tasks, 20)
    method = make(NashMTL, tasks)
    _, alpha = method.combine(grads)
    assert float(alpha[0]) == 0.0
    rest = grads[1:]
    torch.testing.assert_close(
        alpha[1:] * (rest @ rest.T @ alpha[1:]), torch.ones(tasks - 1).double()
    )
    assert int(method.solver_failures) == 0


@pytest.mark.parametrize("tasks", [2, 3, 5])
def test_nash_mtl_without_a_common_direction_falls_back_to_mgda(tasks: int) -> None:
    grads = family("opposite", tasks, 20)
    method = make(NashMTL, tasks)
    combined, alpha = method.combine(grads)
    assert int(method.solver_failures) == 1
    expected, _ = min_norm_weights((grads @ grads.T).numpy())
    torch.testing.assert_close(alpha, torch.from_numpy(expected))
    assert float(alpha.max()) <= 1.0 and float(combined.norm()) <= float(grads.norm(dim=1).max())


def graddrop_with_signs(grads: Tensor, signs: Tensor) -> Tensor:
    method = make(GradDrop, len(grads))
    method.row_shape = torch.Size(grads.shape[1:])
    method.input_signs = signs
    combined, _ = method.combine(grads.flatten(1))
    return combined.view(grads.shape[1:])


def test_graddrop_weighs_each_sample_by_the_sign_of_the_layer_input() -> None:
    # Chen et al. 2020, Algorithm 1: G_i = Σ_batch sign(A) ∘ ∇_A L_i. Per-sample gradients
    # [2, -1] and [-1, 3] on inputs of sign [+, -]: G = 3 and -4, purity 3/7 (the plain
    # batch sums 1 and 2 agree, and would keep both).
    positions = 4000
    per_sample = torch.tensor([[2.0, -1.0], [-1.0, 3.0]])[:, :, None].expand(2, 2, positions)
    signs = torch.tensor([1.0, -1.0])[:, None].expand(2, positions)
    torch.manual_seed(0)
    combined = graddrop_with_signs(per_sample, signs)
    first, second = per_sample[0, :, :1], per_sample[1, :, :1]
    only_first = torch.isclose(combined, first.expand_as(combined)).all(0)
    only_second = torch.isclose(combined, second.expand_as(combined)).all(0)
    assert bool((only_first | only_second).all())
    assert float(only_first.double().mean()) == pytest.approx(3 / 7, abs=0.03)


def test_graddrop_backward_takes_the_signs_from_the_features() -> None:
    seen: list[Tensor] = []

    class Watching(GradDrop):
        def combine(self, grads: Tensor) -> tuple[Tensor, Tensor]:
            assert self.input_signs is not None
            seen.append(self.input_signs.clone())
            return super().combine(grads)

    torch.manual_seed(0)
    trunk, heads = nn.Linear(3, 4), [nn.Linear(4, 1) for _ in range(2)]
    features = trunk(torch.randn(5, 3))
    losses = {f"t{i}": head(features).pow(2).mean() for i, head in enumerate(heads)}
    method = Watching()
    method.setup(list(losses))
    method.backward(losses, StepContext(list(trunk.parameters()), features, step=0))
    torch.testing.assert_close(seen[0], features.detach().sign())
    assert method.input_signs is None and trunk.weight.grad is not None


@pytest.mark.parametrize("normalize", ["l2", "loss", "loss+"])
def test_mgda_normalised_weights_are_the_min_norm_point_of_the_scaled_gradients(
    normalize: str,
) -> None:
    grads = family("spread", 3, 10)
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    norms = grads.norm(dim=1)
    divisors = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalize]
    method = make(MGDA, 3, normalize=normalize)
    method.loss_values = losses
    combined, weights = method.combine(grads)
    scaled = grads / divisors[:, None]
    expected, _ = min_norm_weights((scaled @ scaled.T).numpy())
    torch.testing.assert_close(weights, torch.from_numpy(expected))
    torch.testing.assert_close(combined, weights @ grads)
    with pytest.raises(UserError, match="normalize"):
        MGDA(normalize="max")


def test_pcd_with_one_task_follows_it() -> None:
    """One task: no other constraint, so no least-squares problem to solve (an empty one
    once stopped the run with numpy's zero-size reduction error)."""
    from mtlrun.weighting.pcd import pcd_weights
    from mtlrun.weighting.solvers import nonnegative_least_squares

    assert nonnegative_least_squares(np.zeros((0, 0)), np.zeros(0)).shape == (0,)
    assert pcd_weights(np.array([[2.0]]), np.array([0.7]), 0, 0.1) == pytest.approx([1.0])

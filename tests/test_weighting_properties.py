"""The methods added for issue 15, each against the property that defines it in its paper
(small problems whose answer is known); their cross-checks against TorchJD are in
tests/test_weighting_crosscheck.py."""

import pytest
import torch
from torch import Tensor

from gradient_families import FAMILIES, family
from mtlrun.errors import UserError
from mtlrun.weighting import StepContext, Weighting
from mtlrun.weighting.base import GradientWeighting
from mtlrun.weighting.config import ConFIG
from mtlrun.weighting.cr_mogm import CRMOGM
from mtlrun.weighting.db_mtl import DBMTL
from mtlrun.weighting.dualproj import DualProj
from mtlrun.weighting.excess_mtl import ExcessMTL
from mtlrun.weighting.fairgrad import FairGrad
from mtlrun.weighting.gls import GeometricLoss
from mtlrun.weighting.gradvac import GradVac
from mtlrun.weighting.imtl_l import IMTLL
from mtlrun.weighting.mean import Mean
from mtlrun.weighting.moco import MoCo, simplex_projection
from mtlrun.weighting.nash_mtl import NashMTL
from mtlrun.weighting.pcd import PCD
from mtlrun.weighting.rgw import RandomGradientWeighting
from mtlrun.weighting.robust import Krum, TrimmedMean
from mtlrun.weighting.solvers import min_norm_weights
from mtlrun.weighting.stch import STCH
from mtlrun.weighting.upgrad import UPGrad


def make(cls: type[Weighting], tasks: int, **kwargs: object) -> Weighting:
    method = cls(**kwargs)
    method.setup([f"t{index}" for index in range(tasks)])
    return method


def combine(cls: type[GradientWeighting], grads: Tensor, **kwargs: object) -> tuple[Tensor, Tensor]:
    method = make(cls, len(grads), **kwargs)
    assert isinstance(method, GradientWeighting)
    return method.combine(grads)


def loss_step(method: Weighting, values: list[float], epoch: int = 0) -> tuple[Tensor, dict]:
    losses = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    named = dict(zip(method.task_names, losses.unbind(), strict=True))
    weights = method.backward(named, StepContext([], losses, step=0, epoch=epoch))
    assert losses.grad is not None
    return losses.grad, weights


# --- UPGrad, DualProj: no conflict with any task --------------------------------------------


@pytest.mark.parametrize("tasks", [2, 3, 5])
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("cls", [UPGrad, DualProj])
def test_dual_cone_methods_conflict_with_no_task(
    cls: type[GradientWeighting], name: str, tasks: int
) -> None:
    grads = family(name, tasks)
    combined, _ = combine(cls, grads)
    scale = float(grads.norm(dim=1).max() ** 2)
    assert float((grads @ combined).min()) >= -1e-10 * scale


@pytest.mark.parametrize("cls", [UPGrad, DualProj])
def test_dual_cone_methods_leave_non_conflicting_gradients_averaged(
    cls: type[GradientWeighting],
) -> None:
    grads = family("random", 3).abs()  # all dot products positive
    combined, weights = combine(cls, grads)
    torch.testing.assert_close(weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(combined, grads.mean(0))


def test_dualproj_is_the_nearest_non_conflicting_point_to_the_mean() -> None:
    # Projection onto {d: Gd ≥ 0}: d - g0 = Gᵀλ with λ ≥ 0 and λ_i ⟨g_i, d⟩ = 0.
    grads = family("random", 4)
    grads[1] = -0.8 * grads[0] + 0.1 * grads[1]
    combined, weights = combine(DualProj, grads)
    multipliers = weights - 1 / 4
    assert float(multipliers.min()) >= -1e-12 and float(multipliers.max()) > 0
    slack = grads @ combined
    assert float((multipliers * slack).abs().max()) <= 1e-10


def test_upgrad_averages_each_task_gradients_projection_found_by_clarabel() -> None:
    cp = pytest.importorskip("cvxpy")
    grads = family("random", 3)
    grads[2] = -grads[0] + 0.3 * grads[2]
    combined, _ = combine(UPGrad, grads)
    matrix = grads.numpy()
    projections = []
    for row in matrix:  # argmin ||d - g_i|| s.t. G d ≥ 0, independently of our solver
        point = cp.Variable(matrix.shape[1])
        cp.Problem(cp.Minimize(cp.sum_squares(point - row)), [matrix @ point >= 0]).solve(
            cp.CLARABEL
        )
        projections.append(torch.from_numpy(point.value))
    expected = torch.stack(projections).mean(0)
    torch.testing.assert_close(combined, expected, atol=1e-6, rtol=0)


# --- ConFIG: equal cosines ------------------------------------------------------------------


@pytest.mark.parametrize("tasks", [2, 3, 5])
@pytest.mark.parametrize("name", ["random", "opposite", "spread"])
def test_config_direction_has_equal_cosines_and_the_projected_length(name: str, tasks: int) -> None:
    grads = family(name, tasks)
    combined, _ = combine(ConFIG, grads)
    units = grads / grads.norm(dim=1, keepdim=True)
    direction = combined / combined.norm() if combined.norm() > 0 else combined
    cosines = units @ direction
    if name == "opposite":  # u1 = -u2: no direction has equal cosines; the pseudo-inverse
        # gives the least-squares one, cosine 0 with both (and d = 0 when T = 2)
        torch.testing.assert_close(cosines[:2], torch.zeros(2, dtype=torch.float64))
        if tasks == 2:
            assert float(combined.norm()) <= 1e-9 * float(grads.norm(dim=1).max())
        return
    torch.testing.assert_close(cosines, cosines[:1].expand_as(cosines))
    torch.testing.assert_close(combined.norm(), (grads @ direction).sum())


# --- FairGrad: the α-fair condition ----------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 10.0])
@pytest.mark.parametrize("name", ["random", "spread", "zero"])
def test_fairgrad_meets_the_alpha_fair_condition(alpha: float, name: str) -> None:
    grads = family(name, 3)
    method = make(FairGrad, 3, alpha=alpha)
    assert isinstance(method, FairGrad)
    combined, weights = method.combine(grads)
    active = grads.norm(dim=1) > 0
    improvement = grads[active] @ combined  # ⟨g_i, d⟩ = w_i^(-1/α)
    torch.testing.assert_close(improvement, weights[active] ** (-1 / alpha))
    assert bool((weights[~active] == 0).all()) and int(method.solver_failures) == 0


def test_fairgrad_with_alpha_one_is_nash_mtl() -> None:
    grads = family("random", 4)
    torch.testing.assert_close(combine(FairGrad, grads, alpha=1.0), combine(NashMTL, grads))


# --- GradVac: the adaptive cosine target -------------------------------------------------------


def test_gradvac_lifts_the_cosine_to_its_target_and_moves_the_target() -> None:
    grads = torch.tensor([[1.0, 0.0], [-0.6, 0.8]], dtype=torch.float64)  # cosine -0.6
    method = make(GradVac, 2, beta=0.25)
    assert isinstance(method, GradVac)
    method.targets.fill_(0.5)
    combined, weights = method.combine(grads)
    # T = 2: g0' = g0 + w01 g1 and g1' = g1 + w10 g0, so the weights are (1 + w10, 1 + w01).
    first = grads[0] + (weights[1] - 1) * grads[1]
    second = grads[1] + (weights[0] - 1) * grads[0]
    for modified, other in ((first, grads[1]), (second, grads[0])):
        cosine = modified @ other / (modified.norm() * other.norm())
        torch.testing.assert_close(cosine.item(), 0.5)
    torch.testing.assert_close(combined, first + second)
    expected_target = 0.75 * 0.5 + 0.25 * -0.6
    torch.testing.assert_close(method.targets[0, 1].item(), expected_target)
    torch.testing.assert_close(method.targets[1, 0].item(), expected_target)


def test_gradvac_leaves_pairs_above_their_target_alone() -> None:
    grads = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)  # cosine 0.6 > 0
    combined, weights = combine(GradVac, grads)
    torch.testing.assert_close(combined, grads.sum(0))
    torch.testing.assert_close(weights, torch.ones(2, dtype=torch.float64))


# --- loss-based: IMTL-L, GLS, STCH ------------------------------------------------------------


def test_imtl_l_scales_reach_the_inverse_losses() -> None:
    method = make(IMTLL, 2)
    assert isinstance(method, IMTLL)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    for _ in range(2000):
        optimizer.zero_grad()
        loss_step(method, [0.5, 4.0])
        optimizer.step()
    torch.testing.assert_close(method.scales.detach().exp(), torch.tensor([2.0, 0.25]))
    gradient, _ = loss_step(method, [0.5, 4.0])
    torch.testing.assert_close(gradient.float(), method.scales.detach().exp())


def test_gls_weights_and_scale_invariance() -> None:
    method = make(GeometricLoss, 3)
    gradient, weights = loss_step(method, [0.5, 2.0, 1.0])
    expected = 1.0 / (3 * torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64))  # G = 1
    torch.testing.assert_close(gradient, expected)
    torch.testing.assert_close(torch.stack(list(weights.values())), expected)
    scaled, _ = loss_step(method, [5.0, 2.0, 1.0])  # task 0's loss x10: its weight /10,
    torch.testing.assert_close(scaled[1:], expected[1:] * 10 ** (1 / 3))  # others x10^(1/3)


def test_stch_warms_up_then_smooths_the_max_of_the_normalised_log_losses() -> None:
    method = make(STCH, 2, mu=0.5, warmup_epochs=2)
    assert isinstance(method, STCH)
    gradient, _ = loss_step(method, [2.0, 4.0], epoch=0)
    torch.testing.assert_close(gradient, torch.tensor([0.5, 0.25], dtype=torch.float64))
    loss_step(method, [2.0, 8.0], epoch=1)
    loss_step(method, [4.0, 8.0], epoch=1)  # the last warm-up epoch: z = (3, 8)
    gradient, _ = loss_step(method, [6.0, 8.0], epoch=2)
    torch.testing.assert_close(method.nadir, torch.tensor([3.0, 8.0]))
    normalised = torch.log(torch.tensor([6.0 / 3, 8.0 / 8], dtype=torch.float64))
    shares = torch.softmax(normalised / 0.5, 0)
    torch.testing.assert_close(gradient, shares * 2 / torch.tensor([6.0, 8.0], dtype=torch.float64))


# --- DB-MTL, MoCo, ExcessMTL: the stateful gradient methods -------------------------------------


def db_mtl_step(method: DBMTL, grads: Tensor, losses: list[float]) -> tuple[Tensor, Tensor]:
    method.loss_values = torch.tensor(losses, dtype=torch.float64)
    return method.combine(grads)


def test_db_mtl_gives_every_averaged_log_gradient_the_largest_norm() -> None:
    method = make(DBMTL, 3, beta=0.9)
    assert isinstance(method, DBMTL)
    grads = family("spread", 3)
    combined, scales = db_mtl_step(method, grads, [1.0, 2.0, 4.0])
    averages = 0.1 * grads / torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)[:, None]
    torch.testing.assert_close(method.averages, averages)
    scaled = scales[:, None] * averages
    norms = scaled.norm(dim=1)
    torch.testing.assert_close(norms, norms.max().expand(3))
    torch.testing.assert_close(combined, scaled.sum(0))
    second, _ = db_mtl_step(method, grads, [1.0, 2.0, 4.0])  # r = 0.9: 0.19 of log-grads
    torch.testing.assert_close(method.averages, 0.19 / 0.1 * averages)
    torch.testing.assert_close(second, 1.9 * combined)


def test_simplex_projection_is_the_nearest_simplex_point() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        vector = torch.randn(4, generator=generator, dtype=torch.float64) * 2
        projected = simplex_projection(vector)
        assert abs(float(projected.sum()) - 1) <= 1e-12 and float(projected.min()) >= 0
        others = torch.distributions.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((5000,))
        closest = (others - vector).norm(dim=1).min()
        assert float((projected - vector).norm()) <= float(closest) + 1e-12


def test_moco_weights_approach_mgda_on_fixed_gradients() -> None:
    # With exact gradients (β = 1: y = g) and a constant step, λ ← Π(λ - γ K λ) is projected
    # gradient descent on the min-norm problem: it converges to MGDA's weights.
    grads = family("random", 3)
    method = make(MoCo, 3, beta=1.0, beta_sigma=0.0, gamma=0.02, gamma_sigma=0.0)
    assert isinstance(method, MoCo)
    for _ in range(3000):
        combined, weights = method.combine(grads)
    expected, _ = min_norm_weights((grads @ grads.T).numpy())
    torch.testing.assert_close(weights, torch.from_numpy(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(combined, weights @ grads)


def test_moco_tracks_the_gradients_at_its_rate() -> None:
    method = make(MoCo, 2, beta=0.5, beta_sigma=0.5)
    assert isinstance(method, MoCo)
    grads = family("random", 2)
    method.combine(grads)  # k = 1: rate 0.5
    torch.testing.assert_close(method.tracked, 0.5 * grads)
    method.combine(grads)  # k = 2: rate 0.5 / √2
    rate = 0.5 / 2**0.5
    torch.testing.assert_close(method.tracked, 0.5 * grads + rate * 0.5 * grads)


def test_excess_mtl_raises_the_weight_of_the_task_whose_excess_grows() -> None:
    method = make(ExcessMTL, 2, robust_step_size=0.5)
    assert isinstance(method, ExcessMTL)
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    _, weights = method.combine(first)
    torch.testing.assert_close(weights, torch.ones(2, dtype=torch.float64))  # baseline step
    second = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    _, weights = method.combine(second)
    # Excess g²/√(Σg² + 1e-7): task 0: 9/√10, task 1: 1/√2; relative to the first step's 1.
    ratios = torch.tensor([9 / (10 + 1e-7) ** 0.5, 1 / (2 + 1e-7) ** 0.5], dtype=torch.float64)
    ratios = ratios * (1 + 1e-7) ** 0.5
    grown = torch.exp(0.5 * ratios)
    torch.testing.assert_close(weights, 2 * grown / grown.sum())
    assert float(weights[0]) > 1 > float(weights[1])


# --- Krum, trimmed mean, CR-MOGM, mean, RGW ------------------------------------------------------


def test_krum_leaves_the_outlying_task_out() -> None:
    grads = torch.tensor([[1.0, 0.0], [1.1, 0.1], [0.9, -0.1], [-50.0, 40.0]], dtype=torch.float64)
    combined, weights = combine(Krum, grads, byzantine=1)
    assert float(weights[3]) == 0.0 and float(weights.sum()) == 1.0
    combined, weights = combine(Krum, grads, byzantine=1, selected=3)
    torch.testing.assert_close(combined, grads[:3].mean(0))


def test_krum_and_trimmed_mean_refuse_too_few_tasks() -> None:
    with pytest.raises(UserError, match="krum"):
        make(Krum, 3, byzantine=1)
    with pytest.raises(UserError, match="trimmed_mean"):
        make(TrimmedMean, 2, trim=1)


def test_trimmed_mean_of_three_is_the_coordinate_median() -> None:
    grads = family("spread", 3, size=50)
    combined, weights = combine(TrimmedMean, grads, trim=1)
    torch.testing.assert_close(combined, grads.median(dim=0).values)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_cr_mogm_averages_mgda_weights_over_the_steps() -> None:
    method = make(CRMOGM, 3, alpha=0.75)
    assert isinstance(method, CRMOGM)
    expected = None
    for step in range(3):
        grads = family("random", 3, seed=step)
        _, weights = method.combine(grads)
        fresh = torch.from_numpy(min_norm_weights((grads @ grads.T).numpy())[0])
        expected = fresh if expected is None else 0.75 * expected + 0.25 * fresh
        torch.testing.assert_close(weights, expected)


def test_mean_is_the_sum_over_t() -> None:
    gradient, weights = loss_step(make(Mean, 4), [1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(gradient, torch.full((4,), 0.25, dtype=torch.float64))
    assert all(float(value) == 0.25 for value in weights.values())


def test_rgw_weights_are_a_fresh_softmax_of_normal_draws() -> None:
    grads = family("random", 3)
    torch.manual_seed(0)
    expected = torch.softmax(torch.randn(3), 0).double()
    torch.manual_seed(0)
    combined, weights = combine(RandomGradientWeighting, grads)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(combined, expected @ grads)
    _, again = combine(RandomGradientWeighting, grads)
    assert not torch.equal(again, weights)


# --- PCD -----------------------------------------------------------------------------------------


def test_pcd_is_the_constrained_projection_found_by_clarabel() -> None:
    cp = pytest.importorskip("cvxpy")
    grads = family("random", 4)
    grads[2] = -grads[0] + 0.2 * grads[2]  # a secondary task in conflict with the primary
    combined, _ = combine(PCD, grads, primary="t0", tau=0.3, beta=0.0)
    # β = 0 (one step): g̃_i = g_i / √(||g_i||² + ε); d̃ = argmin ½||d - g̃_0||² subject to
    # ⟨g̃_j, d⟩ ≥ τ||g̃_j||², then rescaled to ||g_0||.
    scaled = (grads / (grads.norm(dim=1, keepdim=True) ** 2 + 1e-8).sqrt()).numpy()
    point = cp.Variable(grads.shape[1])
    constraints = [scaled[1:] @ point >= 0.3 * (scaled[1:] ** 2).sum(1)]
    cp.Problem(cp.Minimize(cp.sum_squares(point - scaled[0])), constraints).solve(cp.CLARABEL)
    expected = torch.from_numpy(point.value)
    expected = expected * grads[0].norm() / expected.norm()
    torch.testing.assert_close(combined, expected, atol=1e-6, rtol=0)
    assert float((grads[1:] @ combined).min()) > 0  # every secondary task still progresses


def test_pcd_drops_constraints_that_cannot_hold_and_follows_the_primary() -> None:
    grads = family("random", 3)
    grads[2] = -grads[1]  # two opposite secondary tasks
    combined, _ = combine(PCD, grads, tau=0.5, beta=0.0)
    torch.testing.assert_close(combined, grads[0])
    zero = grads.clone()
    zero[0] = 0
    combined, weights = combine(PCD, zero, beta=0.0)
    assert not combined.any() and not weights.any()

"""mtlrun's weighting methods against TorchJD's and LibMTL's on the same task-gradient
matrices (issue 15): random, opposite, zero, nearly collinear and widely different-norm
gradients; T = 2, 3, 5.

TorchJD (PyPI `torchjd`, aggregators on a [T, P] Jacobian) runs in float64: where the
definitions coincide the updates agree to 1e-6 (relative to the largest gradient); where
they do not, the test says why and checks what the two share.

LibMTL: the packaged version (PyPI `LibMTL` 1.1.5, 2022) is older than the GitHub one and
has 12 of its methods; its weightings compute the task gradients themselves, so they run
here on a real parameter θ with linear losses L_t = ⟨g_t, θ⟩ (whose gradients are the rows
of the matrix exactly), and they accumulate in float32 (`_grad2vec`), so the comparison
is to float32 precision (1e-5 relative). Its CAGrad only runs with 3 tasks (a hard-coded
reshape(1, 3)) and solves the dual with scipy's SLSQP to its default tolerance; the
methods added to LibMTL after 1.1.5 (Aligned-MTL, DB-MTL, ExcessMTL, FairGrad, FAMO, MoCo,
Nash-MTL, STCH, UPGrad, ...) are checked against TorchJD or their defining properties
(tests/test_weighting_properties.py) instead.
"""

import importlib
import importlib.util
import random
import sys
import types
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from gradient_families import FAMILIES, family
from mtlrun.weighting.aligned_mtl import AlignedMTL
from mtlrun.weighting.base import GradientWeighting, StepContext
from mtlrun.weighting.cagrad import CAGrad
from mtlrun.weighting.config import ConFIG
from mtlrun.weighting.cr_mogm import CRMOGM
from mtlrun.weighting.dualproj import DualProj
from mtlrun.weighting.excess_mtl import ExcessMTL
from mtlrun.weighting.fairgrad import FairGrad
from mtlrun.weighting.gls import GeometricLoss
from mtlrun.weighting.graddrop import GradDrop
from mtlrun.weighting.gradvac import GradVac
from mtlrun.weighting.imtl import IMTLG
from mtlrun.weighting.mgda import MGDA
from mtlrun.weighting.nash_mtl import NashMTL
from mtlrun.weighting.pcd import PCD
from mtlrun.weighting.pcgrad import PCGrad
from mtlrun.weighting.rgw import RandomGradientWeighting
from mtlrun.weighting.robust import Krum, TrimmedMean
from mtlrun.weighting.upgrad import UPGrad
from mtlrun.weighting.uw import UncertaintyWeighting

tj = pytest.importorskip("torchjd.aggregation")
QuadprogProjector = pytest.importorskip("torchjd._linalg").QuadprogProjector
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TASKS = [2, 3, 5]
SIZES = [12, 10_000]  # P: gradients of a few and of ten thousand parameters


def ours(cls: type[GradientWeighting], grads: Tensor, **kwargs: object) -> Tensor:
    method = cls(**kwargs)
    method.setup([f"t{index}" for index in range(len(grads))])
    combined, weights = method.combine(grads)
    if cls not in (GradDrop, TrimmedMean):  # the others are linear in the gradients
        torch.testing.assert_close(weights.to(grads) @ grads, combined)
    return combined


def assert_same(mine: Tensor, theirs: Tensor, grads: Tensor, tolerance: float = 1e-6) -> None:
    scale = float(grads.norm(dim=1).max()) or 1.0
    difference = float((mine - theirs).norm())
    assert difference <= tolerance * scale, f"differ by {difference / scale:.2e} of max ||g||"


def worst(grads: Tensor, direction: Tensor) -> float:
    return float((grads @ direction).min())


# --- definitions that coincide: the same update to 1e-6 -----------------------------------------


@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", SIZES)
def test_pcgrad_matches_torchjd(name: str, tasks: int, size: int) -> None:
    # Both draw one torch.randperm(T) per task, so with one seed the orders are the same.
    grads = family(name, tasks, size)
    torch.manual_seed(3)
    mine = ours(PCGrad, grads)
    torch.manual_seed(3)
    assert_same(mine, tj.PCGrad()(grads), grads)


@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", SIZES)
def test_upgrad_and_dualproj_match_torchjd(name: str, tasks: int, size: int) -> None:
    # TorchJD's quadprog projector adds reg_eps·I to the Gramian normalised by its trace
    # (1e-4 by default) so that quadprog sees a positive-definite matrix; that shifts the
    # answer by up to 13% of max ||g|| when the norms spread over decades. Ours solves the
    # unregularised problem; so does TorchJD's with reg_eps = 0, where the Gramian is
    # positive definite, and 1e-13 where it is singular (opposite and zero gradients).
    grads = family(name, tasks, size)
    singular = name in ("opposite", "zero")
    projector = QuadprogProjector(norm_eps=0.0, reg_eps=1e-13 if singular else 0.0)
    assert_same(ours(UPGrad, grads), tj.UPGrad(projector=projector)(grads), grads)
    assert_same(ours(DualProj, grads), tj.DualProj(projector=projector)(grads), grads)


@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("name", ["random", "opposite", "zero", "spread"])
@pytest.mark.parametrize("size", SIZES)
def test_config_matches_torchjd(name: str, tasks: int, size: int) -> None:
    # Nearly collinear gradients are left out: the cosine matrix is then singular to 1e-12
    # and both pseudo-inverses cut its small eigenvalues at different thresholds.
    grads = family(name, tasks, size)
    assert_same(ours(ConFIG, grads), tj.ConFIG()(grads), grads)


@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("name", ["random", "opposite", "spread"])
def test_imtl_matches_torchjd(name: str, tasks: int) -> None:
    # TorchJD's weights, pinv(K)·||g|| normalised, solve the same equal-projection
    # conditions. It differs where the conditions have no unique solution: a zero gradient
    # (we leave the solved task out, TorchJD's pinv gives it a share), nearly collinear
    # gradients (K singular to rounding).
    grads = family(name, tasks)
    mine, theirs = ours(IMTLG, grads, on="parameters"), tj.IMTLG()(grads)
    if name != "opposite":
        assert_same(mine, theirs, grads)
        return
    # g2 = -g1 makes K singular. Equal projections on u1 and u2 = -u1 force them to 0, so
    # the only solution is d = 0 (α = ½, ½, 0, ...), which ours returns; TorchJD's pinv gives
    # a least-squares answer that moves along g3 and breaks the equal-projection condition.
    units = grads / grads.norm(dim=1, keepdim=True)
    assert float((units @ mine).abs().max()) <= 1e-12
    if tasks > 2:
        assert float((units @ theirs).abs().max()) > 0.1


@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", SIZES)
def test_aligned_mtl_matches_torchjd_times_t(name: str, tasks: int, size: int) -> None:
    # Same balance transformation B (scale λ_min); the paper sums the aligned gradients
    # (B·1, ours), TorchJD averages them by default (B·1/T).
    grads = family(name, tasks, size)
    assert_same(ours(AlignedMTL, grads) / tasks, tj.AlignedMTL()(grads), grads)


@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("name", FAMILIES)
def test_graddrop_on_parameters_matches_torchjd(name: str, tasks: int) -> None:
    # On a gradient matrix (no batch, so G_i = g_i) both follow Algorithm 1's lines 10-15
    # and draw U with one torch.rand of P numbers.
    grads = family(name, tasks)
    torch.manual_seed(5)
    mine = ours(GradDrop, grads, on="parameters")
    torch.manual_seed(5)
    theirs = tj.GradDrop()(grads)
    usable = grads.abs().sum(0) > 0  # TorchJD's purity is 0/0 = NaN where every g is 0
    assert_same(mine[usable], theirs[usable], grads)


@pytest.mark.parametrize("name", FAMILIES)
def test_gradvac_matches_torchjd_over_steps(name: str) -> None:
    # Stateful (the EMA targets): five steps on changing gradients. T = 2, where the visiting
    # order is fixed (the two draw their random orders differently for T ≥ 3).
    method = GradVac(beta=0.5)
    method.setup(["a", "b"])
    theirs = tj.GradVac(beta=0.5)
    for step in range(5):
        grads = family(name, 2, seed=step)
        combined, _ = method.combine(grads)
        assert_same(combined, theirs(grads), grads)


@pytest.mark.parametrize("tasks", TASKS)
def test_excess_mtl_matches_torchjd_over_steps(tasks: int) -> None:
    # TorchJD with one warm-up step takes the first step's excess risks as the baseline, as
    # ours does; its weights sum to 1, ours to T (LibMTL's convention). It divides by the
    # baseline + 1e-7, ours by the baseline: gradients of order 1 keep that out of sight.
    method = ExcessMTL(robust_step_size=0.5)
    method.setup([f"t{index}" for index in range(tasks)])
    theirs = tj.ExcessMTL(robust_step_size=0.5, n_warmup_steps=1)
    for step in range(6):
        grads = family("random", tasks, seed=step)
        combined, _ = method.combine(grads)
        assert_same(combined / tasks, theirs(grads), grads)


@pytest.mark.parametrize("tasks", [3, 5])
@pytest.mark.parametrize("name", FAMILIES)
def test_robust_aggregations_match_torchjd(name: str, tasks: int) -> None:
    grads = family(name, tasks)
    assert_same(ours(Krum, grads), tj.Krum(n_byzantine=0)(grads), grads)
    assert_same(ours(Krum, grads, selected=2), tj.Krum(n_byzantine=0, n_selected=2)(grads), grads)
    assert_same(ours(TrimmedMean, grads, trim=1), tj.TrimmedMean(trim_number=1)(grads), grads)


@pytest.mark.parametrize("tasks", TASKS)
def test_random_gradient_weighting_matches_torchjds_random(tasks: int) -> None:
    # Both draw softmax(randn(T)) in the gradients' dtype (float32 here).
    grads = family("random", tasks).float()
    torch.manual_seed(9)
    mine = ours(RandomGradientWeighting, grads)
    torch.manual_seed(9)
    assert_same(mine.double(), tj.Random()(grads).double(), grads.double())


@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("name", FAMILIES)
def test_pcd_matches_torchjd_over_steps(name: str, tasks: int) -> None:
    # Stateful (the squared norms' moving average); the first task is the primary one.
    method = PCD(tau=0.3, beta=0.9)
    method.setup([f"t{index}" for index in range(tasks)])
    theirs = tj.PCD(tau=0.3, beta=0.9)
    for step in range(4):
        grads = family(name, tasks, seed=step)
        combined, _ = method.combine(grads)
        assert_same(combined, theirs(grads), grads)


# --- definitions that differ: what each shares, and why --------------------------------------


@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", SIZES)
def test_mgda_reaches_torchjds_min_norm_or_better(name: str, tasks: int, size: int) -> None:
    # TorchJD runs the paper's Frank-Wolfe iterations (stopping at step < epsilon or after
    # max_iters); ours solves the min-norm problem exactly. Ours is never longer, and the
    # two agree to Frank-Wolfe's accuracy (O(1/k): 1.6e-2 of max ||g|| after 1000 steps,
    # 3.5e-3 after 20 000).
    grads = family(name, tasks, size)
    mine = ours(MGDA, grads)
    theirs = tj.MGDA(epsilon=1e-12, max_iters=1000)(grads)
    scale = float(grads.norm(dim=1).max() ** 2)
    assert float(mine @ mine) <= float(theirs @ theirs) + 1e-12 * scale
    assert_same(mine, theirs, grads, tolerance=2e-2)


@pytest.mark.parametrize("tasks", TASKS)
def test_cr_mogm_smooths_like_torchjd(tasks: int) -> None:
    # The same moving average of the min-norm weights (first step: the weights themselves);
    # TorchJD's inner MGDA is Frank-Wolfe, hence MGDA's tolerance.
    method = CRMOGM(alpha=0.9)
    method.setup([f"t{index}" for index in range(tasks)])
    theirs = tj.CRMOGMWeighting(tj.MGDAWeighting(epsilon=1e-12, max_iters=1000), alpha=0.9)
    for step in range(4):
        grads = family("random", tasks, seed=step)
        combined, _ = method.combine(grads)
        assert_same(combined, theirs(grads @ grads.T) @ grads, grads, tolerance=2e-2)


@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("size", SIZES)
def test_cagrad_improves_the_worst_task_at_least_as_much_as_torchjd(
    name: str, tasks: int, size: int
) -> None:
    # TorchJD solves the same dual with Clarabel, but on the normalised Gramian and with
    # d = g0 + r·g_w/||g_w|| (weights 0, i.e. d = 0, where ||g_w|| < 1e-4). Where that formula
    # holds (random, collinear) the two agree; elsewhere ours solves the paper's primal
    # problem and so improves the worst task at least as much.
    grads = family(name, tasks, size)
    mine = ours(CAGrad, grads, c=0.4)
    theirs = tj.CAGrad(c=0.4)(grads)
    scale = float(grads.norm(dim=1).max() ** 2)
    assert worst(grads, mine) >= worst(grads, theirs) - 1e-6 * scale
    if name in ("random", "collinear"):
        # TorchJD runs Clarabel at its default tolerances (1e-8 on the gap): ~1e-5 on d.
        assert_same(mine, theirs, grads, tolerance=1e-4)


@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("name", ["random", "collinear"])
def test_nash_mtl_solves_torchjds_bargaining_condition_exactly(name: str, tasks: int) -> None:
    # TorchJD follows the authors' code: a sequence of 20 convex programs (cvxpy) toward
    # α_i (Kα)_i = 1, and the update clipped to norm 1 (max_norm). Ours solves the condition
    # to 1e-9; with the update scaled to norm 1, the two point the same way to the
    # accuracy of their iterations. (With norms over six decades, TorchJD's iterations stop
    # far from the condition; ours is checked on those in test_weighting_degenerate.py.)
    grads = family(name, tasks) / 10
    mine = ours(NashMTL, grads)
    theirs = tj.NashMTL(n_tasks=tasks, max_norm=1e9, optim_niter=200)(grads)
    cosine = float(mine @ theirs / (mine.norm() * theirs.norm()))
    assert cosine >= 1 - 1e-3


@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("name", ["random", "spread"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_solves_torchjds_condition_at_least_as_well(
    name: str, tasks: int, alpha: float
) -> None:
    # Same condition K w = w^(-1/α); TorchJD minimises its residual with scipy's
    # least_squares from w = 1/T (default tolerances), ours by Newton to 1e-9. On random
    # gradients the two agree to TorchJD's tolerance; with norms over six decades
    # least_squares stops early (residual up to ~0.8), ours still solves it.
    grads = family(name, tasks)
    gram = grads @ grads.T
    method = FairGrad(alpha=alpha)
    method.setup([f"t{index}" for index in range(tasks)])
    mine, weights = method.combine(grads)
    theirs = tj.FairGradWeighting(alpha=alpha)(gram)

    def residual(w: Tensor) -> float:
        return float((w ** (1 / alpha) * (gram @ w) - 1).abs().max())

    assert residual(weights) <= 1e-9 and residual(weights) <= residual(theirs) + 1e-12
    if name == "random":
        assert_same(mine, theirs @ grads, grads, tolerance=1e-4)


# --- LibMTL 1.1.5 -----------------------------------------------------------------------------


def import_libmtl_weighting() -> types.ModuleType:
    """LibMTL.weighting without the package's __init__, which imports LibMTL.model and with
    it `torchvision.models.utils`, gone since torchvision 0.13 (so `import LibMTL` fails
    with current torchvision: the packaged 1.1.5 is broken as a whole; its weighting
    modules need only torch, numpy and scipy)."""
    spec = importlib.util.find_spec("LibMTL")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("LibMTL is not installed")
    if "LibMTL" not in sys.modules:
        package = types.ModuleType("LibMTL")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["LibMTL"] = package
    return importlib.import_module("LibMTL.weighting")


libmtl = import_libmtl_weighting()


def libmtl_update(
    name: str, grads: Tensor, offsets: Tensor | None = None, **kwargs: object
) -> Tensor:
    """LibMTL's method `name` run on affine losses L_t = ⟨g_t, θ⟩ + offsets_t at θ = 0,
    whose gradients are the rows of `grads` (LibMTL accumulates them in float32)."""
    theta = nn.Parameter(torch.zeros(grads.shape[1]))

    class Harness(getattr(libmtl, name)):  # type: ignore[misc]
        """What a LibMTL weighting expects of the model it is mixed into."""

        def get_share_params(self) -> list[nn.Parameter]:
            return [theta]

        def zero_grad_share_params(self) -> None:
            theta.grad = torch.zeros_like(theta)  # as nn.Module.zero_grad did in 2022

    weighting = Harness()
    weighting.task_num, weighting.device, weighting.rep_grad = (
        len(grads),
        torch.device("cpu"),
        False,
    )
    weighting.task_name = [f"t{index}" for index in range(len(grads))]
    weighting.init_param()
    losses = grads.float() @ theta
    if offsets is not None:
        losses = losses + offsets.float()
    weighting.backward(losses if name in ("GLS", "EW", "IMTL") else list(losses.unbind()), **kwargs)
    assert theta.grad is not None
    return theta.grad.double()


LIBMTL_SHARED: list[tuple[str, dict[str, object], Callable[[Tensor], Tensor]]] = [
    ("EW", {}, lambda g: g.sum(0)),
    ("MGDA", {"mgda_gn": "none"}, lambda g: ours(MGDA, g)),
    ("IMTL", {}, lambda g: ours(IMTLG, g, on="parameters")),
]


@pytest.mark.parametrize("tasks", TASKS)
@pytest.mark.parametrize("name", ["random", "spread"])
@pytest.mark.parametrize(("method", "kwargs", "mine"), LIBMTL_SHARED, ids=lambda v: str(v)[:8])
def test_libmtl_methods_that_coincide(
    method: str, kwargs: dict[str, object], mine: Callable[[Tensor], Tensor], name: str, tasks: int
) -> None:
    # LibMTL's MGDA runs Frank-Wolfe to 1e-5 (its stop criterion): compared to that.
    grads = family(name, tasks).float().double()
    tolerance = 1e-3 if method == "MGDA" else 1e-5
    if name == "spread" and method == "MGDA":
        tolerance = 1e-2  # LibMTL's Frank-Wolfe in float32 on K entries over 12 decades
    assert_same(mine(grads), libmtl_update(method, grads, **kwargs), grads, tolerance)


@pytest.mark.parametrize("tasks", [2])
@pytest.mark.parametrize("name", FAMILIES)
def test_libmtl_pcgrad_and_gradvac_first_step(name: str, tasks: int) -> None:
    # T = 2: the visiting order (LibMTL: Python's random.shuffle) does not matter. GradVac:
    # the first step only -- LibMTL 1.1.5 updates the EMA target only when it corrects a pair,
    # the paper (and TorchJD, and ours) after every pair.
    grads = family(name, tasks).float().double()
    random.seed(0)
    assert_same(ours(PCGrad, grads), libmtl_update("PCGrad", grads), grads, 1e-5)
    theirs = libmtl_update("GradVac", grads, beta=0.5)
    assert_same(ours(GradVac, grads, beta=0.5), theirs, grads, 1e-5)


@pytest.mark.parametrize("name", ["random", "collinear"])
def test_libmtl_cagrad_three_tasks_with_rescale(name: str) -> None:
    # LibMTL's c is relative to ||g0|| like ours; rescale=1 divides by 1 + c² (our
    # `rescale`). Its SLSQP stops at ~1e-6 on the dual, hence the tolerance.
    grads = family(name, 3).float().double()
    theirs = libmtl_update("CAGrad", grads, calpha=0.4, rescale=1)
    assert_same(ours(CAGrad, grads, c=0.4, rescale=True), theirs, grads, 1e-3)


@pytest.mark.parametrize("normalize", ["none", "l2", "loss", "loss+"])
def test_libmtl_mgda_normalisations_choose_the_same_weights(normalize: str) -> None:
    # LibMTL (parameter side) combines the *normalised* gradients with the weights it finds;
    # ours (like the authors' code) applies the same weights to the original gradients. The
    # weights agree: compare ours, normalised back, with LibMTL's update.
    grads = family("random", 3).float().double()
    losses = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)  # the losses at θ = 0
    method = MGDA(normalize=normalize)
    method.setup(["a", "b", "c"])
    method.loss_values = losses
    _, weights = method.combine(grads)
    norms = grads.norm(dim=1)
    divisors = {"none": torch.ones_like(norms), "l2": norms, "loss": losses}.get(
        normalize, losses * norms
    )
    expected = (weights / divisors) @ grads
    theirs = libmtl_update("MGDA", grads, offsets=losses, mgda_gn=normalize)
    assert_same(expected, theirs, grads, 1e-3)


def test_libmtl_gls_and_uw_give_the_same_gradients() -> None:
    # GLS: the same objective. UW: the same objective; LibMTL starts the log-variances at
    # -0.5 where ours start at `init` (0 by default: weight ½), so ours runs with init=-0.5.
    values = [0.5, 2.0, 3.0]
    for theirs_class, mine in (
        (libmtl.GLS, GeometricLoss()),
        (libmtl.UW, UncertaintyWeighting(init=-0.5)),
    ):
        gradients = []
        for method in ("libmtl", "mtlrun"):
            losses = torch.tensor(values, dtype=torch.float64, requires_grad=True)
            if method == "libmtl":
                weighting = theirs_class()
                weighting.task_num, weighting.device = 3, torch.device("cpu")
                weighting.init_param()
                if hasattr(weighting, "loss_scale"):  # float64, like the losses here
                    weighting.loss_scale = nn.Parameter(weighting.loss_scale.data.double())
                weighting.backward(losses)
            else:
                mine.setup(["a", "b", "c"])
                named = dict(zip(["a", "b", "c"], losses.unbind(), strict=True))
                mine.backward(named, StepContext([], losses, step=0))
            assert losses.grad is not None
            gradients.append(losses.grad)
        # ours keeps its log-variances in float32 (the model's dtype): float32 precision
        torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-6, atol=0)


@pytest.mark.parametrize("tasks", TASKS)
def test_libmtl_graddrop_on_features_matches_with_the_input_signs(tasks: int) -> None:
    # Both follow Chen et al.'s Algorithm 1 on a batch-separated layer: G_i = Σ_batch
    # sign(A) ∘ ∇_A L_i, then purity, one uniform draw per feature (torch.rand_like of the
    # same shape), masks broadcast over the batch. LibMTL adds 1e-7 to the purity's
    # denominator; ours does not, which moves no draw here.
    generator = torch.Generator().manual_seed(tasks)
    per_sample = torch.randn(tasks, 6, 40, generator=generator)
    inputs = torch.randn(6, 40, generator=generator)
    rep = inputs.clone().requires_grad_()

    class Harness(libmtl.GradDrop):  # type: ignore[misc]
        def _compute_grad(self, losses: object, mode: str, rep_grad: bool = False) -> Tensor:
            return per_sample.clone()

    theirs = Harness()
    theirs.task_num, theirs.device, theirs.rep_grad, theirs.rep = tasks, "cpu", True, rep
    torch.manual_seed(11)
    theirs.backward(None, leak=0.0)
    method = GradDrop(on="features")
    method.setup([f"t{index}" for index in range(tasks)])
    method.row_shape = torch.Size(inputs.shape)
    method.input_signs = inputs.sign()
    torch.manual_seed(11)
    mine, _ = method.combine(per_sample.flatten(1))
    assert rep.grad is not None
    torch.testing.assert_close(mine.view_as(inputs), rep.grad)

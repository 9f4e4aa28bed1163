"""`relation`: the task-relation regularizer of multi-task relationship learning (MTRL).

Zhang & Yeung, "A Convex Formulation for Learning Task Relationships in Multi-Task
Learning", UAI 2010.
"""

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.weighting.base import StepContext, Weighting
from mtlrun.weighting.static import Static

MODES = ("learned", "fixed")


class TaskRelation(Weighting):
    """Minimise Σ_t λ_t L_t + μ·tr(W Ω⁻¹ Wᵀ), where column t of W is task t's task-specific
    parameters (adapter or backbone, `StepContext.task_parameters`) flattened, and Ω is the
    T x T task covariance (Zhang & Yeung 2010's objective; their separate squared-norm
    term is left to the optimizer's weight decay). Related tasks (large Ω_ij) are pulled
    together.

    Modes:
        learned: Ω starts at `covariance` (default I/T) and every `update_every_n_steps`
            steps takes its closed-form minimiser for the current W (the Ω-step of
            their alternating optimisation), Ω = (WᵀW)^½ / tr((WᵀW)^½), blended
            with εI and renormalised to unit trace so that it stays invertible.
        fixed: Ω is `covariance` (positive definite), or `relation` gives a symmetric
            r ≥ 0 and the regularizer takes the graph form μ·Σ_{i<j} r_ij ‖w_i − w_j‖²
            = μ·tr(W L Wᵀ), L = diag(r 1) − r the graph Laplacian (Evgeniou, Micchelli &
            Pontil, "Learning Multiple Tasks with Kernel Methods", JMLR 2005).

    Ω, the matrix the regularizer uses and the last value are buffers (saved in
    checkpoints); Ω (or r) and the value are logged at log steps.

    Args:
        mu: the regularizer's strength μ ≥ 0.
        mode: "learned" or "fixed".
        covariance: Ω by task name, {task: {task: value}} (fixed; initial Ω if learned).
        relation: r by task name, for the graph form (fixed only); pairs not given are 0.
        update_every_n_steps: learned: steps between updates of Ω (first at step 0).
        eps: learned: the weight of I/T blended into Ω (> 0).
        weights: λ by task name for the task losses, as `weighting=static` (default 1).
    """

    # Buffers (register_buffer), typed for the checker: nn.Module's __getattr__ is not.
    relation: Tensor
    covariance: Tensor
    coupling: Tensor
    regularizer: Tensor

    def __init__(
        self,
        mu: float = 1e-4,
        mode: str = "learned",
        covariance: Mapping[str, Mapping[str, float]] | None = None,
        relation: Mapping[str, Mapping[str, float]] | None = None,
        update_every_n_steps: int = 10,
        eps: float = 0.01,
        weights: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise UserError(f"weighting.mode={mode} is unknown; choose from: {', '.join(MODES)}")
        if not (math.isfinite(mu) and mu >= 0) or update_every_n_steps < 1 or not eps > 0:
            raise UserError(
                "weighting.mu must be >= 0, update_every_n_steps >= 1 and eps > 0, got "
                f"{mu}, {update_every_n_steps}, {eps}"
            )
        if mode == "fixed" and (covariance is None) == (relation is None):
            raise UserError(
                "weighting.mode=fixed needs exactly one of weighting.covariance (Ω) or "
                "weighting.relation (r, graph form)"
            )
        if mode == "learned" and relation is not None:
            raise UserError(
                "weighting.relation (the graph form) needs weighting.mode=fixed; with "
                "mode=learned give an initial weighting.covariance or nothing"
            )
        self.mu, self.mode, self.eps = float(mu), mode, float(eps)
        self.update_every_n_steps = update_every_n_steps
        self.given_covariance, self.given_relation = covariance, relation
        self.loss_weighting = Static(weights)  # per-task λ, with static's checks

    def requires(self) -> set[str]:
        return {"task_parameters"}

    def setup(self, task_names: list[str]) -> None:
        super().setup(task_names)
        self.loss_weighting.setup(task_names)
        count = len(task_names)
        if self.given_relation is not None:
            relation = read_matrix("weighting.relation", self.given_relation, self, False)
            check_graph_weights("weighting.relation", relation, task_names)
            self.register_buffer("relation", relation)
            off_diagonal = relation - torch.diag(relation.diagonal())  # r_ii plays no part
            coupling = torch.diag(off_diagonal.sum(1)) - off_diagonal  # the Laplacian L
        else:
            if self.given_covariance is None:
                covariance = torch.eye(count, dtype=torch.float64) / count
            else:
                covariance = read_matrix("weighting.covariance", self.given_covariance, self, True)
                check_positive_definite("weighting.covariance", covariance, task_names)
            self.register_buffer("covariance", covariance)
            coupling = torch.linalg.inv(covariance)
        self.register_buffer("coupling", coupling)  # M in μ·tr(W M Wᵀ)
        self.register_buffer("regularizer", torch.zeros(()), persistent=False)

    def backward(self, losses: dict[str, Tensor], context: StepContext) -> dict[str, Tensor]:
        weights = self.loss_weighting.backward(losses, context)
        gram = gram_matrix(self.task_columns(context.task_parameters), self.coupling.device)
        if self.mode == "learned" and context.step % self.update_every_n_steps == 0:
            self.update_covariance(gram.detach())
        value = self.mu * (self.coupling.to(gram.dtype) * gram).sum()
        if value.requires_grad:
            value.backward()
        self.regularizer.copy_(value.detach())
        return weights

    @torch.no_grad()
    def update_covariance(self, gram: Tensor) -> None:
        """Ω ← ((WᵀW)^½ / tr((WᵀW)^½) + εI) / (1 + Tε), from the Gram matrix WᵀW
        (I/T instead of the first term while W is zero); the coupling becomes Ω⁻¹."""
        eigenvalues, eigenvectors = torch.linalg.eigh(gram.double())
        root = eigenvectors @ torch.diag(eigenvalues.clamp_min(0).sqrt()) @ eigenvectors.T
        count = len(self.task_names)
        identity = torch.eye(count, dtype=root.dtype, device=root.device)
        trace = root.trace()
        normalised = torch.where(trace > 0, root / trace.clamp_min(1e-300), identity / count)
        covariance = (normalised + self.eps * identity) / (1 + count * self.eps)
        self.covariance.copy_(covariance)
        self.coupling.copy_(torch.linalg.inv(covariance))

    def task_columns(self, task_parameters: Mapping[str, Sequence[Tensor]]) -> list[list[Tensor]]:
        """The tasks' parameter lists in task order, checked to have identical shapes."""
        if not task_parameters:
            return [[] for _ in self.task_names]
        columns = [list(task_parameters[name]) for name in self.task_names]
        shapes = [[tuple(p.shape) for p in column] for column in columns]
        for name, task_shapes in zip(self.task_names, shapes, strict=True):
            if task_shapes != shapes[0]:
                raise UserError(
                    f"weighting=relation needs task-specific parameters of identical shape, "
                    f"but task '{name}' has {len(task_shapes)} tensors of other shapes than "
                    f"task '{self.task_names[0]}'; build every task's part from one config"
                )
        return columns

    def extra_scalars(self) -> dict[str, Tensor | float]:
        scalars: dict[str, Tensor | float] = {"regularizer": self.regularizer}
        key, matrix = (
            ("relation", self.relation)
            if self.given_relation is not None
            else ("omega", self.covariance)
        )
        for i, first in enumerate(self.task_names):
            for j in range(i, len(self.task_names)):
                scalars[f"{key}/{first}/{self.task_names[j]}"] = matrix[i, j]
        return scalars


def gram_matrix(columns: list[list[Tensor]], device: torch.device) -> Tensor:
    """WᵀW, [T, T], where column t of W is `columns[t]` flattened and concatenated; computed
    one parameter at a time, so W itself is never assembled."""
    gram = torch.zeros(len(columns), len(columns), device=device)
    for same_place in zip(*columns, strict=True):
        stacked = torch.stack([parameter.reshape(-1) for parameter in same_place]).float()
        gram = gram + stacked @ stacked.T
    return gram


def read_matrix(
    setting: str, given: Mapping[str, Mapping[str, float]], method: Weighting, complete: bool
) -> Tensor:
    """A {task: {task: value}} setting as a symmetric [T, T] matrix in task order (zeros for
    tasks it does not name), or a one-line error naming the wrong entry."""
    if not isinstance(given, Mapping) or not all(isinstance(r, Mapping) for r in given.values()):
        raise UserError(
            f"{setting} must map each task to {{task: value}}, e.g. {{cls: {{seg: 1}}}}"
        )
    rows = {
        str(name): {str(col): value for col, value in row.items()} for name, row in given.items()
    }
    method.check_task_keys(setting, rows)
    for name, row in rows.items():
        if set(row) != set(rows):
            raise UserError(
                f"{setting} is not square: row '{name}' names columns {sorted(row)} but the "
                f"rows are {sorted(rows)}; give a value for every pair of the tasks it names"
            )
    missing = [name for name in method.task_names if name not in rows]
    if complete and missing:
        raise UserError(f"{setting} must give a row for every selected task; missing: {missing}")
    names = method.task_names
    matrix = torch.zeros(len(names), len(names), dtype=torch.float64)
    for a, row in rows.items():
        for b, value in row.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise UserError(f"{setting}[{a}][{b}] = {value} is not a finite number")
            matrix[names.index(a), names.index(b)] = number
    check_symmetric(setting, matrix, names)
    return matrix


def check_symmetric(setting: str, matrix: Tensor, names: list[str]) -> None:
    for i, j in zip(*torch.triu_indices(len(names), len(names), 1).tolist(), strict=True):
        upper, lower = float(matrix[i, j]), float(matrix[j, i])
        if abs(upper - lower) > 1e-9 * max(1.0, abs(upper), abs(lower)):
            raise UserError(
                f"{setting} is not symmetric: [{names[i]}][{names[j]}] = {upper:g} but "
                f"[{names[j]}][{names[i]}] = {lower:g}; make them equal"
            )


def check_positive_definite(setting: str, matrix: Tensor, names: list[str]) -> None:
    """Ω must be positive definite (it is inverted); name the first entry that breaks it."""
    diagonal = matrix.diagonal().tolist()
    for name, value in zip(names, diagonal, strict=True):
        if not value > 0:
            raise UserError(
                f"{setting}[{name}][{name}] = {value:g} must be > 0 (a task's variance); "
                "Ω must be positive definite"
            )
    for i, j in zip(*torch.triu_indices(len(names), len(names), 1).tolist(), strict=True):
        bound = math.sqrt(diagonal[i] * diagonal[j])
        if abs(float(matrix[i, j])) >= bound:
            raise UserError(
                f"{setting}[{names[i]}][{names[j]}] = {float(matrix[i, j]):g} is too large: Ω "
                f"must be positive definite, which needs |Ω_ij| < sqrt(Ω_ii·Ω_jj) = {bound:.4g}"
            )
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    if eigenvalues[0] <= 1e-12 * eigenvalues.abs().max():
        weights = eigenvectors[:, 0].abs()
        involved = [name for name, w in zip(names, weights.tolist(), strict=True) if w > 0.2]
        raise UserError(
            f"{setting} is not positive definite (smallest eigenvalue "
            f"{float(eigenvalues[0]):.3g}, along tasks {involved}); lower the off-diagonal "
            "entries among them"
        )


def check_graph_weights(setting: str, relation: Tensor, names: list[str]) -> None:
    """The graph form needs r_ij ≥ 0 off the diagonal: its Laplacian is then positive
    semi-definite (the regularizer is convex and pulls tasks together, never apart)."""
    for i, j in zip(*torch.triu_indices(len(names), len(names), 1).tolist(), strict=True):
        if relation[i, j] < 0:
            raise UserError(
                f"{setting}[{names[i]}][{names[j]}] = {float(relation[i, j]):g} is negative: "
                "the graph form Σ r_ij·‖w_i − w_j‖² needs r_ij >= 0 (0 = unrelated), else "
                "it pushes tasks apart without bound"
            )

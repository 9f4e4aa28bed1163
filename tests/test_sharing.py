"""`model.sharing`: hard, soft and cross-stitch sharing on every backbone and task, what each
shares, cross-stitch units, adapters, the checks against weightings, and the CI commands."""

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from mtlrun.build import build
from mtlrun.engine import Run, fit
from mtlrun.errors import UserError
from mtlrun.models.backbones import ConvNet
from mtlrun.models.multitask import MultiTaskModel, TaskBackbonesModel
from mtlrun.models.sharing import CrossStitch, CrossStitchBackbones, TaskAdapter, TaskBackbones

ComposeConfig = Callable[..., DictConfig]
BuildRun = Callable[..., Run]
SHARING = ["hard", "soft", "cross_stitch"]
ALL_TASKS = "tasks=[cls,seg,gen,det,inst,depth]"
SMALL = ("backbone.channels=[8,16]", "dataset.image_size=16", "trainer.threads=1")


def forward(run: Run, count: int = 2) -> tuple[torch.Tensor, dict[str, Any], dict[str, Any]]:
    batch = next(iter(run.data.val_batches()))
    run.model.eval()
    with torch.no_grad():
        features, outputs = run.model(batch["image"][:count])
    return features, outputs, batch


def shapes(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: shapes(item) for key, item in value.items()}
    return tuple(value.shape)


@pytest.fixture(scope="module", params=["cnn", "resnet18"])
def hard_shapes(
    request: pytest.FixtureRequest,
    build_tiny_run: BuildRun,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, Any]:
    """Each task's output shapes under hard sharing, the reference for the others."""
    run = build_tiny_run(tmp_path_factory.mktemp("hard"), f"backbone={request.param}", ALL_TASKS)
    return request.param, shapes(forward(run)[1])


@pytest.mark.parametrize("sharing", ["soft", "cross_stitch"])
def test_every_task_runs_on_every_backbone(
    sharing: str, hard_shapes: tuple[str, Any], build_tiny_run: BuildRun, tmp_path: Path
) -> None:
    """Per-task backbones give every head the input it gets under hard sharing; the features
    are the tasks' maps side by side along the batch; every loss is a finite scalar."""
    backbone, expected = hard_shapes
    run = build_tiny_run(tmp_path, f"backbone={backbone}", ALL_TASKS, f"model.sharing={sharing}")
    features, outputs, batch = forward(run)
    assert shapes(outputs) == expected
    assert features.shape[0] == 2 * len(run.tasks)
    for name, task in run.tasks.items():
        target = batch["targets"][task.target]
        target = {k: v[:2] for k, v in target.items()} if isinstance(target, dict) else target[:2]
        loss = task.loss(outputs[name], target)
        assert loss.ndim == 0 and torch.isfinite(loss), name


def test_soft_sharing_has_one_independent_backbone_per_task(
    build_tiny_run: BuildRun, tmp_path: Path
) -> None:
    run = build_tiny_run(tmp_path, "tasks=[cls,seg]", "model.sharing=soft", *SMALL)
    model = run.model
    assert isinstance(model, TaskBackbonesModel) and model.shared_parameters() == []
    networks = model.backbone.networks
    assert not torch.equal(
        networks["cls"].stages[0][0][0].weight, networks["seg"].stages[0][0][0].weight
    )
    task_parameters = model.task_parameters()
    assert [p.shape for p in task_parameters["cls"]] == [p.shape for p in task_parameters["seg"]]
    assert {id(p) for p in task_parameters["seg"]} == {id(p) for p in networks["seg"].parameters()}

    _, losses = losses_of(run)
    losses["cls"].backward()
    assert all(p.grad is None or not p.grad.any() for p in networks["seg"].parameters())
    assert all(p.grad is not None and p.grad.any() for p in networks["cls"].parameters())


def losses_of(run: Run) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    batch = next(iter(run.data.train_batches(0)))
    run.model.train()
    features, outputs = run.model(batch["image"])
    targets = batch["targets"]
    losses = {n: task.loss(outputs[n], targets[task.target]) for n, task in run.tasks.items()}
    return features, losses


def test_cross_stitch_shares_the_whole_trunk(build_tiny_run: BuildRun, tmp_path: Path) -> None:
    """Every loss reaches every backbone through the units, so the trunk is shared; each
    backbone is still its task's part for the relation regularizer."""
    run = build_tiny_run(tmp_path, "tasks=[cls,seg]", "model.sharing=cross_stitch", *SMALL)
    trunk = run.model.backbone
    assert {id(p) for p in run.model.shared_parameters()} == {id(p) for p in trunk.parameters()}
    _, losses = losses_of(run)
    losses["cls"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trunk.parameters())


def test_cross_stitch_unit_mixes_linearly_from_its_initial_weights() -> None:
    unit = CrossStitch(3, self_weight=0.7)
    expected_alpha = torch.tensor([[0.7, 0.15, 0.15], [0.15, 0.7, 0.15], [0.15, 0.15, 0.7]])
    torch.testing.assert_close(unit.alpha.detach(), expected_alpha)
    maps = [torch.randn(2, 4, 3, 3) for _ in range(3)]
    mixed = unit(maps)
    stacked = torch.stack(maps)
    for task in range(3):
        direct = torch.einsum("s,sbchw->bchw", unit.alpha[task].detach(), stacked)
        torch.testing.assert_close(mixed[task], direct)
    assert CrossStitch(1, self_weight=0.9).alpha.item() == 1.0


def make_backbones(seed: int) -> dict[str, ConvNet]:
    torch.manual_seed(seed)
    return {name: ConvNet(channels=[4, 8, 8], blocks_per_stage=1) for name in ("a", "b")}


def test_identity_cross_stitch_with_frozen_units_equals_independent_networks() -> None:
    """α = I and frozen: outputs and a few SGD steps are those of separate networks."""
    stitched = CrossStitchBackbones(make_backbones(0), self_weight=1.0)
    for unit in stitched.units:
        unit.alpha.requires_grad_(False)
    separate = TaskBackbones(copy.deepcopy(dict(stitched.networks)))
    heads = {"a": nn.Conv2d(8, 1, 1), "b": nn.Conv2d(8, 1, 1)}
    models = [
        TaskBackbonesModel(stitched, copy.deepcopy(heads)),
        TaskBackbonesModel(separate, copy.deepcopy(heads)),
    ]
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.1) for model in models]
    for _ in range(3):
        results = []
        for model, optimizer in zip(models, optimizers, strict=True):
            optimizer.zero_grad()
            _, outputs = model(images)
            loss = outputs["a"].pow(2).mean() + (outputs["b"] - 1).pow(2).mean()
            loss.backward()
            optimizer.step()
            results.append(outputs)
        for name in ("a", "b"):
            torch.testing.assert_close(results[0][name], results[1][name], rtol=0, atol=0)
    pairs = zip(stitched.networks.parameters(), separate.networks.parameters(), strict=True)
    for first, second in pairs:
        torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_adapters_start_as_the_identity_and_are_task_parameters() -> None:
    backbone = ConvNet(channels=[4, 8], blocks_per_stage=1)
    heads = {"a": nn.Conv2d(8, 2, 1), "b": nn.Conv2d(8, 2, 1)}
    plain = MultiTaskModel(backbone, heads)
    adapted = MultiTaskModel(backbone, heads, {n: TaskAdapter(8, 3) for n in heads})
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(plain(images)[1], adapted(images)[1])
    assert plain.task_parameters() == {}
    parameters = adapted.task_parameters()
    assert [p.shape for p in parameters["a"]] == [(8, 8, 3, 3), (8,)]
    assert {id(p) for p in parameters["b"]} == {id(p) for p in adapted.adapters["b"].parameters()}
    with pytest.raises(UserError, match="adapter_kernel_size"):
        TaskAdapter(8, 2)


@pytest.mark.parametrize(
    ("overrides", "adapters"),
    [
        (("weighting=relation",), True),
        (("weighting=sum",), False),
        (("weighting=sum", "model.adapter=conv"), True),
        (("weighting=relation", "model.sharing=soft"), False),
    ],
)
def test_auto_adapters_appear_where_the_weighting_needs_task_parameters(
    overrides: tuple[str, ...], adapters: bool, build_tiny_run: BuildRun, tmp_path: Path
) -> None:
    run = build_tiny_run(tmp_path, "tasks=[cls,seg]", *SMALL, *overrides)
    assert bool(len(run.model.adapters)) == adapters


# --- soft sharing with the relation regularizer ----------------------------------------------


def backbone_distance(run: Run) -> float:
    """‖w_cls − w_seg‖² over the two tasks' backbones."""
    first, second = run.model.task_parameters().values()
    return sum(float((a - b).detach().pow(2).sum()) for a, b in zip(first, second, strict=True))


def test_strong_relation_pulls_soft_shared_backbones_together(
    compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    """With the graph form and a large μ the distance between the tasks' backbones shrinks
    epoch after epoch; without the regularizer it does not."""
    pairs = "{cls:{cls:0,seg:1},seg:{cls:1,seg:0}}"
    distances: dict[float, list[float]] = {}
    for mu in (0.0, 1.0):
        overrides = (
            "tasks=[cls,seg]",
            "model.sharing=soft",
            "weighting=relation",
            "weighting.mode=fixed",
            f"weighting.relation={pairs}",
            f"weighting.mu={mu}",
            "optimizer=sgd",
            "optimizer.lr=0.05",
            "optimizer.momentum=0",
            "optimizer.nesterov=false",
            "optimizer.weight_decay=0",
            "scheduler=none",
            "dataset.train_size=32",
            "trainer.batch_size=8",
            "trainer.num_images=0",
            *SMALL,
        )
        seen = []
        for epochs in (1, 2):  # the same seed: the 2-epoch run starts as the 1-epoch run
            run = build(
                compose_tiny(*overrides, f"trainer.epochs={epochs}"), tmp_path / f"{mu}-{epochs}"
            )
            seen.append(backbone_distance(run))
            fit(run)
            seen.append(backbone_distance(run))
        assert seen[0] == seen[2]
        distances[mu] = [seen[0], seen[1], seen[3]]
    pulled, free = distances[1.0], distances[0.0]
    assert pulled[0] == pytest.approx(free[0])  # the same start
    assert pulled[0] > pulled[1] > pulled[2]
    # Each of the 8 steps scales w_cls - w_seg by 1 - 4·μ·lr = 0.8, plus the tasks' own pulls.
    assert pulled[2] < 0.1 * pulled[0]
    assert free[2] > 0.9 * free[0]


# --- what each sharing cannot serve ----------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (("model.sharing=shared",), r"model\.sharing=shared is unknown"),
        (("model.adapter=big",), r"model\.adapter=big is unknown"),
        (("model.sharing=cross_stitch", "model.stitch_self_weight=1.5"), "stitch_self_weight"),
        (("model.sharing=soft", "weighting=pcgrad"), r"PCGrad combines .* model\.sharing=soft"),
        (("weighting=relation", "model.adapter=none"), r"task-specific parameters"),
        (("model.sharing=soft", "trainer.relations_every_n_steps=5"), r"relations_every_n_steps"),
        (("trainer.relations_every_n_steps=-1",), r"relations_every_n_steps must be >= 0"),
    ],
)
def test_what_a_sharing_cannot_serve_is_a_user_error(
    overrides: tuple[str, ...], named: str, build_tiny_run: BuildRun, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=named):
        build_tiny_run(tmp_path, "tasks=[cls,seg]", *SMALL, *overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.sharing=cross_stitch", "weighting=pcgrad"),
        ("model.sharing=cross_stitch", "weighting=gradnorm"),
        ("model.sharing=soft", "weighting=mgda", "weighting.on=features"),
    ],
    ids=["pcgrad-cross_stitch", "gradnorm-cross_stitch", "mgda_ub-soft"],
)
def test_gradient_weightings_train_where_the_sharing_serves_them(
    overrides: tuple[str, ...], build_tiny_run: BuildRun, tmp_path: Path
) -> None:
    run = build_tiny_run(tmp_path, "tasks=[cls,seg]", *SMALL, "trainer.num_images=0", *overrides)
    before = [p.detach().clone() for p in run.model.backbone.parameters()]
    metrics = fit(run)
    assert metrics["step"] == 2
    after = list(run.model.backbone.parameters())
    assert all(not torch.equal(old, new) for old, new in zip(before, after, strict=True))


# --- the commands CI runs --------------------------------------------------------------------


@pytest.mark.slow  # the smoke experiment end to end
@pytest.mark.parametrize("sharing", ["soft", "cross_stitch"])
def test_smoke_command_with_learned_relations(sharing: str, call_main: Callable) -> None:
    finished = call_main(
        [
            "tasks=[cls,seg,gen]",
            "weighting=relation",
            "weighting.mode=learned",
            f"model.sharing={sharing}",
            "experiment=smoke",
        ]
    )
    assert finished.returncode == 0, finished.stderr
    (folder,) = finished.run_folders()
    assert json.loads((folder / "metrics.json").read_text())["step"] == 8  # 256 images / 32

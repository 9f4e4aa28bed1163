"""The multi-task model: backbone(s), optional per-task adapters, one head per task.

Three ways to share (`model.sharing`):

- `hard`: one backbone every task reads (`MultiTaskModel`);
- `soft`: one backbone per task, coupled only by a regularizer on their parameters
  (`weighting=relation`);
- `cross_stitch`: one backbone per task, their feature maps mixed by learned cross-stitch
  units after every stage (Misra et al. 2016).
"""

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtlrun.errors import UserError
from mtlrun.models.backbones import feature_shape
from mtlrun.models.sharing import CrossStitchBackbones, TaskAdapter, TaskBackbones

SHARING = ("hard", "soft", "cross_stitch")
ADAPTERS = ("auto", "none", "conv")


class MultiTaskModel(nn.Module):
    """Shared backbone -> (per-task adapter) -> {task name: head output}: hard sharing.

    `forward` also returns the features, the representation every head reads, which
    weighting methods that work on the shared representation (e.g. MGDA-UB) differentiate
    against.

    Args:
        backbone: the shared backbone.
        heads: {task name: head}.
        adapters: {task name: adapter} between the features and the head, or None.
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: dict[str, nn.Module],
        adapters: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.adapters = nn.ModuleDict(adapters or {})

    def encode(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The features and what each task's adapter (or head) reads: here the same map."""
        features = self.backbone(images)
        return features, dict.fromkeys(self.heads, features)

    def forward(
        self, images: Tensor, extra_inputs: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Features and every head's output.

        Args:
            images: the batch.
            extra_inputs: {task name: more images} that only that task's head reads (after
                the batch's own), e.g. a shared discriminator's generated images. They pass
                through the trunk together with the batch, so the returned features cover
                both and every loss reaches the trunk through them.

        A head with `reads_features = False` reads nothing from the trunk; when no head
        reads it, the trunk is skipped and the features are an empty [B, 0] tensor.
        """
        extra_inputs = extra_inputs or {}
        if not any(getattr(head, "reads_features", True) for head in self.heads.values()):
            # No head reads the trunk (a GAN with its own discriminator, alone): running it
            # would cost a forward pass whose output nobody uses.
            nothing = images.new_zeros(len(images), 0)
            return nothing, {name: head(nothing) for name, head in self.heads.items()}
        count = len(images)
        if extra_inputs:
            images = torch.cat([images, *extra_inputs.values()])
        features, task_features = self.encode(images)
        offsets, start = {}, count
        for name, extra in extra_inputs.items():
            offsets[name], start = (start, start + len(extra)), start + len(extra)
        outputs = {}
        for name, head in self.heads.items():
            read = task_features[name]
            if extra_inputs:
                own = read[:count]
                if name in offsets:
                    own = torch.cat([own, read[offsets[name][0] : offsets[name][1]]])
                read = own
            outputs[name] = head(self.adapters[name](read) if name in self.adapters else read)
        return features, outputs

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters every task's loss depends on."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Each task's trainable task-specific parameters of identical shape across tasks
        (adapters, per-task backbones), in the same order for every task; the heads, whose
        shapes differ between tasks, are not included. Empty when there are none."""
        return {
            name: [p for p in adapter.parameters() if p.requires_grad]
            for name, adapter in self.adapters.items()
        }


class TaskBackbonesModel(MultiTaskModel):
    """One backbone per task (`TaskBackbones`: soft sharing, or `CrossStitchBackbones`).

    The features returned by `forward` are the tasks' feature maps concatenated along the
    batch dimension, [T * B, C, h, w], and each head reads its own slice of them: every
    loss reaches the trunk through this one tensor, so feature-side weightings still work.

    Args:
        backbone: the per-task backbones.
        heads: {task name: head}, in the order of `backbone.networks`.
        adapters: {task name: adapter}, or None.
    """

    backbone: TaskBackbones

    def __init__(
        self,
        backbone: TaskBackbones,
        heads: dict[str, nn.Module],
        adapters: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__(backbone, heads, adapters)
        if list(backbone.networks) != list(heads):
            raise ValueError("the per-task backbones and the heads must name the same tasks")

    def encode(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        per_task = self.backbone(images)
        features = torch.cat([per_task[name] for name in self.heads])
        return features, dict(zip(self.heads, features.chunk(len(self.heads)), strict=True))

    def shared_parameters(self) -> list[nn.Parameter]:
        return self.backbone.shared_parameters()

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        adapters = super().task_parameters()
        return {
            name: [*parameters, *adapters.get(name, [])]
            for name, parameters in self.backbone.task_parameters().items()
        }


def multitask_model(
    backbone: nn.Module,
    new_backbone: Callable[[], nn.Module],
    heads: dict[str, nn.Module],
    needs_task_parameters: bool = False,
    sharing: str = "hard",
    adapter: str = "auto",
    adapter_kernel_size: int = 1,
    stitch_self_weight: float = 0.9,
) -> MultiTaskModel:
    """The model `conf/model/` describes (the config node's target).

    Args:
        backbone: a built backbone (the heads were built for its `out_channels`, `stride`).
        new_backbone: builds another backbone from the same config (fresh weights), for the
            second and later tasks when each task has its own.
        heads: {task name: head}.
        needs_task_parameters: whether the weighting needs task-specific parameters of
            identical shape (`adapter: auto` then adds adapters where there are none).
        sharing: hard | soft | cross_stitch.
        adapter: auto | none | conv (a `TaskAdapter` per task).
        adapter_kernel_size: the adapters' kernel size.
        stitch_self_weight: cross_stitch: the units' initial weight of a task's own map.
    """
    if sharing not in SHARING:
        raise UserError(f"model.sharing={sharing} is unknown; choose from: {', '.join(SHARING)}")
    if adapter not in ADAPTERS:
        raise UserError(f"model.adapter={adapter} is unknown; choose from: {', '.join(ADAPTERS)}")
    # With per-task backbones the tasks already have parameters of identical shape.
    wants_adapters = adapter == "conv" or (
        adapter == "auto" and needs_task_parameters and sharing == "hard"
    )
    adapters = (
        {name: TaskAdapter(feature_shape(backbone)[0], adapter_kernel_size) for name in heads}
        if wants_adapters
        else None
    )
    if sharing == "hard":
        return MultiTaskModel(backbone, heads, adapters)
    names = list(heads)
    backbones = {names[0]: backbone, **{name: new_backbone() for name in names[1:]}}
    trunk = (
        TaskBackbones(backbones)
        if sharing == "soft"
        else CrossStitchBackbones(backbones, stitch_self_weight)
    )
    return TaskBackbonesModel(trunk, heads, adapters)

"""Per-task networks and what connects them: soft sharing, cross-stitch units, task adapters.

Hard sharing (one backbone for every task) needs nothing from this module. With soft
sharing every task has its own backbone and the tasks interact only through a regularizer
on their parameters (`weighting=relation`); with cross-stitch sharing the tasks' backbones
also exchange feature maps after each stage.
"""

from collections.abc import Mapping
from typing import cast

import torch
from torch import Tensor, nn

from mtlrun.errors import UserError
from mtlrun.models.backbones import Backbone, feature_shape


class TaskAdapter(nn.Module):
    """A residual convolution between the shared features and one task's head: x + conv(x).

    Zero-initialised, so a model starts exactly as it would without adapters and every
    task's adapter starts equal; the tasks' adapters are task-specific parameters of
    identical shape, which `weighting=relation` couples.

    Args:
        channels: channels of the features (kept).
        kernel_size: the convolution's kernel size (odd; 1 is a per-pixel linear map).
    """

    def __init__(self, channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise UserError(f"model.adapter_kernel_size must be odd and >= 1, got {kernel_size}")
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        for parameter in self.conv.parameters():  # the weight and the bias
            nn.init.zeros_(parameter)

    def forward(self, features: Tensor) -> Tensor:
        return features + self.conv(features)


class TaskBackbones(nn.Module):
    """One backbone per task, applied independently (soft parameter sharing).

    No parameter is shared: each task's loss depends on its own backbone only, so
    `shared_parameters` is empty and each backbone is that task's task-specific part.

    Args:
        backbones: {task name: backbone}, all built from the same config (same shapes).
    """

    def __init__(self, backbones: Mapping[str, nn.Module]) -> None:
        super().__init__()
        first = next(iter(backbones.values()))
        self.networks = nn.ModuleDict(backbones)
        self.out_channels, self.stride = feature_shape(first)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {name: network(images) for name, network in self.networks.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return []

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {
            name: [p for p in network.parameters() if p.requires_grad]
            for name, network in self.networks.items()
        }


class CrossStitch(nn.Module):
    """A cross-stitch unit: each task's new feature map is a learned linear combination of
    all tasks' feature maps, x̃_t = Σ_s α_ts x_s (Misra, Shrivastava, Gupta & Hebert,
    "Cross-stitch Networks for Multi-task Learning", CVPR 2016, eq. 1, one α per pair of
    tasks as in the paper's layer-wise units).

    Args:
        tasks: the number of tasks T (α is T x T).
        self_weight: initial α_tt; the rest of each row, 1 - α_tt, is split evenly over the
            other tasks (the paper initialises (α_S, α_D) = (0.9, 0.1) for two tasks).
    """

    def __init__(self, tasks: int, self_weight: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= self_weight <= 1.0:
            raise UserError(f"model.stitch_self_weight must be in [0, 1], got {self_weight}")
        if tasks == 1:
            self_weight = 1.0  # a single task has nothing to mix with
        other = (1.0 - self_weight) / max(tasks - 1, 1)
        alpha = torch.full((tasks, tasks), other)
        alpha.fill_diagonal_(self_weight)
        self.alpha = nn.Parameter(alpha)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        # A sum of scaled maps keeps each map's memory format (channels-last), which a
        # stack + einsum over a 5-D tensor would not.
        return [
            sum((weight * feature for weight, feature in zip(row, features, strict=True)))
            for row in self.alpha
        ]


class CrossStitchBackbones(TaskBackbones):
    """One backbone per task, with a cross-stitch unit after every stage; each task's neck
    then reads its own (mixed) stage outputs.

    Every task's loss depends on every backbone (through the units), so all of the trunk's
    parameters are shared in the sense of `shared_parameters`; each backbone still belongs
    to one task for `task_parameters` (the relation regularizer compares them).

    Args:
        backbones: {task name: backbone}; each must be a `Backbone` (stages + neck).
        self_weight: the units' initial α_tt (see `CrossStitch`).
    """

    def __init__(self, backbones: Mapping[str, nn.Module], self_weight: float = 0.9) -> None:
        super().__init__(backbones)
        for backbone in backbones.values():
            if not isinstance(backbone, Backbone):
                raise UserError(
                    f"model.sharing=cross_stitch needs a backbone made of stages "
                    f"(mtlrun.models.backbones.Backbone); {type(backbone).__name__} is not one"
                )
        stages = len(self.task_backbones()[0].stages)
        self.units = nn.ModuleList(CrossStitch(len(backbones), self_weight) for _ in range(stages))

    def task_backbones(self) -> list[Backbone]:
        """The per-task backbones, in task order."""
        # ModuleDict yields plain modules; __init__ checked that each is a Backbone.
        return [cast(Backbone, network) for network in self.networks.values()]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        networks = self.task_backbones()
        current = [images] * len(networks)
        stage_outputs: list[list[Tensor]] = [[] for _ in networks]
        for index, unit in enumerate(self.units):
            current = unit([net.stages[index](x) for net, x in zip(networks, current, strict=True)])
            for outputs, mixed in zip(stage_outputs, current, strict=True):
                outputs.append(mixed)
        return {
            name: network.neck(outputs)
            for name, network, outputs in zip(self.networks, networks, stage_outputs, strict=True)
        }

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

"""Shared backbones. Each returns one feature map and states its `out_channels` and `stride`
(input side / feature side), which the task heads receive when they are built.

Every backbone is a `Backbone`: a list of `stages` applied in order, then a `neck` that turns
the stages' outputs into the one feature map the heads read. Sharing schemes that exchange
features between task networks after each stage (cross-stitch) rely on this split.
"""

from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from mtlrun.errors import UserError


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Backbone(nn.Module):
    """Stages applied in order, then a neck over all stage outputs.

    Subclasses set `stages`, `out_channels` and `stride`, and override `neck` when the
    heads should read more than the last stage (e.g. a multi-scale decoder).
    """

    stages: nn.ModuleList
    out_channels: int
    stride: int

    def neck(self, stage_outputs: list[Tensor]) -> Tensor:
        """The feature map the heads read; by default the last stage's output."""
        return stage_outputs[-1]

    def forward(self, images: Tensor) -> Tensor:
        outputs: list[Tensor] = []
        features = images
        for stage in self.stages:
            features = stage(features)
            outputs.append(features)
        return self.neck(outputs)


class ConvNet(Backbone):
    """A small VGG-style conv net: stages of 3x3 conv-BN-ReLU blocks.

    Args:
        channels: output channels of each stage; every stage after the first halves the
            resolution, so the stride is 2 ** (len(channels) - 1).
        blocks_per_stage: conv blocks per stage.
    """

    def __init__(
        self, channels: list[int] | tuple[int, ...] = (32, 64, 128), blocks_per_stage: int = 2
    ):
        super().__init__()
        if not channels or blocks_per_stage < 1:
            raise UserError(
                "backbone.channels must list at least one stage and blocks_per_stage >= 1"
            )
        stages: list[nn.Module] = []
        in_channels = 3
        for stage, out_channels in enumerate(channels):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                blocks.append(conv_bn_relu(in_channels, out_channels, stride))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels = in_channels
        self.stride = 2 ** (len(channels) - 1)


class ResNet18(Backbone):
    """torchvision's ResNet-18 up to its last stage (512 channels).

    Args:
        pretrained: load torchvision's ImageNet weights from the local torch hub cache;
            nothing is downloaded.
        small_input: use a 3x3 stride-1 stem without max-pool (stride 8 instead of 32),
            as is usual for images of 32-64 pixels.
    """

    def __init__(self, pretrained: bool = False, small_input: bool = True) -> None:
        super().__init__()
        network = torchvision.models.resnet18(weights=None)
        if pretrained:
            network.load_state_dict(
                _cached_weights(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
            )
        if small_input:
            network.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
            network.maxpool = nn.Identity()
        stem = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool)
        self.stages = nn.ModuleList(
            [stem, network.layer1, network.layer2, network.layer3, network.layer4]
        )
        self.out_channels = 512
        self.stride = 8 if small_input else 32


def _cached_weights(weights: torchvision.models.WeightsEnum) -> dict[str, Tensor]:
    """torchvision weights from the torch hub cache, or a clear error saying where to put them."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise UserError(
            f"pretrained weights not found at {path}; download {weights.url} to that path "
            "(or set TORCH_HOME), or use backbone.pretrained=false"
        )
    return torch.load(path, map_location="cpu", weights_only=True)

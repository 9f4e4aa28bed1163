"""Shared backbones. Each returns one feature map and states its `out_channels` and `stride`
(input side / feature side), which the task heads receive when they are built."""

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


class ConvNet(nn.Module):
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
        layers: list[nn.Module] = []
        in_channels = 3
        for stage, out_channels in enumerate(channels):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(conv_bn_relu(in_channels, out_channels, stride))
                in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.out_channels = in_channels
        self.stride = 2 ** (len(channels) - 1)

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)


class ResNet18(nn.Module):
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
        self.features = nn.Sequential(
            network.conv1, network.bn1, network.relu, network.maxpool,
            network.layer1, network.layer2, network.layer3, network.layer4,
        )  # fmt: skip
        self.out_channels = 512
        self.stride = 8 if small_input else 32

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)


def _cached_weights(weights: torchvision.models.WeightsEnum) -> dict[str, Tensor]:
    """torchvision weights from the torch hub cache, or a clear error saying where to put them."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise UserError(
            f"pretrained weights not found at {path}; download {weights.url} to that path "
            "(or set TORCH_HOME), or use backbone.pretrained=false"
        )
    return torch.load(path, map_location="cpu", weights_only=True)

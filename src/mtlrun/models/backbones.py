"""Shared backbones. Each returns one feature map and states its `out_channels` and `stride`
(input side / feature side), which the task heads receive when they are built.

Every backbone is a `Backbone`: a list of `stages` applied in order, then a `neck` that turns
the stages' outputs into the one feature map the heads read. Sharing schemes that exchange
features between task networks after each stage (cross-stitch) rely on this split.
"""

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from mtlrun.errors import UserError
from mtlrun.models.decoders import ASPPNeck, FPNNeck, conv_bn_relu

__all__ = [
    "Backbone",
    "ConvNet",
    "LeNet",
    "ResNet",
    "ResNet18",
    "conv_bn_relu",
    "feature_shape",
]


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


def feature_shape(backbone: nn.Module) -> tuple[int, int]:
    """The `out_channels` and `stride` a backbone states: a `Backbone` declares them, and any
    other module used as a backbone must set them as ints too."""
    out_channels, stride = backbone.out_channels, backbone.stride
    if not isinstance(out_channels, int) or not isinstance(stride, int):
        raise UserError(
            f"backbone {type(backbone).__name__} must set out_channels and stride as ints, "
            f"got {out_channels!r} and {stride!r}"
        )
    return out_channels, stride


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


class LeNet(Backbone):
    """The shared part of the LeNet of Sener & Koltun, "Multi-Task Learning as Multi-Objective
    Optimization", NeurIPS 2018, for MultiMNIST: conv 5x5 -> max-pool 2 -> ReLU, twice, then
    the *flattened* map through a shared fully connected layer and ReLU.

    Flattening keeps where each stroke is, which telling the left digit from the right one
    needs. The second pooling is adaptive, to a `grid` x `grid` map: at their 28 x 28 input it
    is their 2 x 2 pooling (8 x 8 -> 4 x 4, 320 values), and other sizes work too.

    The features are the shared layer's units as a [B, features, 1, 1] map, so task heads
    read it like any other backbone's (`cls` with `hidden: 50` is their per-task 50-unit
    layer). The stated stride, 32, is nominal (one cell for images up to 32 px): the LeNet
    suits image-level tasks, not dense ones.

    Args:
        channels: output channels of the two conv layers.
        kernel_size: their kernel size.
        grid: side of the map that is flattened.
        features: units of the shared fully connected layer.
    """

    def __init__(
        self,
        channels: list[int] | tuple[int, ...] = (10, 20),
        kernel_size: int = 5,
        grid: int = 4,
        features: int = 50,
    ) -> None:
        super().__init__()
        if len(channels) != 2 or min(*channels, kernel_size, grid, features) < 1:
            raise UserError(
                "backbone.channels must be two positive ints, and backbone.kernel_size, grid "
                f"and features positive; got {list(channels)}, {kernel_size}, {grid}, {features}"
            )
        first, second = channels
        self.stages = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(3, first, kernel_size), nn.MaxPool2d(2), nn.ReLU(inplace=True)
                ),
                nn.Sequential(
                    nn.Conv2d(first, second, kernel_size),
                    nn.AdaptiveMaxPool2d(grid),
                    nn.ReLU(inplace=True),
                ),
                nn.Sequential(
                    nn.Flatten(),
                    nn.Linear(second * grid * grid, features),
                    nn.ReLU(inplace=True),
                    nn.Unflatten(1, (features, 1, 1)),
                ),
            ]
        )
        self.out_channels = features
        self.stride = 32


RESNET_BUILDERS = {
    18: (torchvision.models.resnet18, torchvision.models.ResNet18_Weights.IMAGENET1K_V1),
    34: (torchvision.models.resnet34, torchvision.models.ResNet34_Weights.IMAGENET1K_V1),
    50: (torchvision.models.resnet50, torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
}
NECKS = ("none", "fpn", "aspp")


class ImageNetNormalize(nn.Module):
    """(x - mean) / std with ImageNet's channel statistics, which pretrained weights expect."""

    mean: Tensor
    std: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std


class ResNet(Backbone):
    """torchvision's ResNet-18, -34 or -50 as five stages (stem, layer1..layer4) and a neck.

    The stages are the torchvision network's own modules, taken in order (as torchvision's
    feature extractors do), so cross-stitch sharing can mix their outputs.

    Args:
        depth: 18, 34 or 50.
        pretrained: load torchvision's ImageNet weights (IMAGENET1K_V1) from the local torch
            hub cache, nothing is downloaded; inputs are then normalised with ImageNet's
            channel statistics inside the stem.
        small_input: use a 3x3 stride-1 stem without max-pool (natural stride 8 instead of
            32), as is usual for images of 32-64 pixels.
        output_stride: the stride of the last stage: the natural one (null), or half or a
            quarter of it, reached by replacing the strides of layer4 (and layer3) with
            dilated convolutions (Chen et al., "DeepLab", TPAMI 2018; Yu & Koltun, "Dilated
            Residual Networks", CVPR 2017), so dense tasks see finer features.
        neck: what the heads read: `none` (the last stage), `fpn` (a feature pyramid over
            layer1..layer4 merged at layer1's stride, see `FPNNeck`) or `aspp` (atrous
            spatial pyramid pooling on the last stage, see `ASPPNeck`).
        neck_channels: channels of the fpn / aspp output.
        aspp_rates: dilation rates of `aspp`; null = 96 / stride x (1, 2, 3), i.e. DeepLabV3's
            (6, 12, 18) at output stride 16 and (12, 24, 36) at 8.
    """

    def __init__(
        self,
        depth: int = 18,
        pretrained: bool = False,
        small_input: bool = False,
        output_stride: int | None = None,
        neck: str = "none",
        neck_channels: int = 128,
        aspp_rates: list[int] | None = None,
    ) -> None:
        super().__init__()
        if depth not in RESNET_BUILDERS or neck not in NECKS:
            raise UserError(
                f"backbone.depth must be one of {list(RESNET_BUILDERS)} and backbone.neck one "
                f"of {list(NECKS)}; got depth={depth}, neck={neck}"
            )
        builder, weights = RESNET_BUILDERS[depth]
        network = builder(weights=None)
        if pretrained:
            network.load_state_dict(_cached_weights(weights))
        if small_input:
            network.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
            network.maxpool = nn.Identity()
        stem: list[nn.Module] = [ImageNetNormalize()] if pretrained else []
        stem += [network.conv1, network.bn1, network.relu, network.maxpool]
        layers = [network.layer1, network.layer2, network.layer3, network.layer4]
        self.stages = nn.ModuleList([nn.Sequential(*stem), *layers])
        natural = 8 if small_input else 32
        self.stride = output_stride or natural
        dilated = {natural: 0, natural // 2: 1, natural // 4: 2}.get(self.stride)
        if dilated is None:
            raise UserError(
                f"backbone.output_stride must be null, {natural}, {natural // 2} or "
                f"{natural // 4} (small_input={small_input}), got {output_stride}"
            )
        dilate_last_layers(layers, dilated)
        widths = [layer[-1].conv1.in_channels for layer in layers]  # block output channels
        self.decoder: nn.Module | None = None
        self.out_channels = widths[-1]
        if neck == "fpn":
            self.decoder = FPNNeck(widths, neck_channels)
            self.out_channels = neck_channels
            self.stride = natural // 8  # layer1's stride
        elif neck == "aspp":
            rates = aspp_rates or [96 // self.stride * factor for factor in (1, 2, 3)]
            self.decoder = ASPPNeck(widths[-1], neck_channels, list(rates))
            self.out_channels = neck_channels

    def neck(self, stage_outputs: list[Tensor]) -> Tensor:
        if isinstance(self.decoder, FPNNeck):
            return self.decoder(stage_outputs[1:])
        if self.decoder is not None:
            return self.decoder(stage_outputs[-1])
        return stage_outputs[-1]


class ResNet18(ResNet):
    """ResNet-18 with the small-input stem by default (see `ResNet`)."""

    def __init__(self, pretrained: bool = False, small_input: bool = True, **options: Any) -> None:
        super().__init__(18, pretrained=pretrained, small_input=small_input, **options)


def dilate_last_layers(layers: list[nn.Sequential], count: int) -> None:
    """Turn the stride-2 convolutions of the last `count` residual layers into stride 1 and
    dilate their 3x3 convolutions instead: the first block of a layer keeps the dilation of
    the layer before it, later blocks double it (as torchvision's
    `replace_stride_with_dilation`, which only supports bottleneck blocks, does)."""
    dilation = 1
    for layer in layers[len(layers) - count :]:
        previous, dilation = dilation, dilation * 2
        for position, block in enumerate(layer):
            rate = previous if position == 0 else dilation
            for module in block.modules():
                if not isinstance(module, nn.Conv2d):
                    continue
                module.stride = (1, 1)
                if module.kernel_size == (3, 3):
                    module.dilation, module.padding = (rate, rate), (rate, rate)


def _cached_weights(weights: torchvision.models.WeightsEnum) -> dict[str, Tensor]:
    """torchvision weights from the torch hub cache, or a clear error saying where to put them."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.is_file():
        raise UserError(
            f"pretrained weights not found at {path}; download {weights.url} to that path "
            "(or set TORCH_HOME), or use backbone.pretrained=false"
        )
    return torch.load(path, map_location="cpu", weights_only=True)

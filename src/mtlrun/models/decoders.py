"""Decoders: the light upsampling decoder of the dense heads (segmentation, depth, normals,
generation), and the multi-scale necks a backbone can put between its stages and the heads
(FPN, ASPP), built from torchvision's modules."""

import math
from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.ops import FeaturePyramidNetwork


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UpsampleDecoder(nn.Module):
    """Feature map at `stride` -> `out_channels` maps at input resolution.

    One conv block with `hidden` channels, then log2(stride) rounds of 2x bilinear
    upsampling and a conv block, each halving the channels (to no fewer than 16), then a
    1x1 projection. Halving keeps the full-resolution convolutions, the costly ones, thin.
    """

    def __init__(self, in_channels: int, hidden: int, out_channels: int, stride: int) -> None:
        super().__init__()
        rounds = int(math.log2(stride))
        if 2**rounds != stride:
            raise ValueError(f"decoder needs a power-of-two stride, got {stride}")
        layers: list[nn.Module] = [conv_bn_relu(in_channels, hidden)]
        channels = hidden
        for _ in range(rounds):
            thinner = max(channels // 2, 16)
            layers += [
                nn.Upsample(scale_factor=2, mode="bilinear"),
                conv_bn_relu(channels, thinner),
            ]
            channels = thinner
        layers.append(nn.Conv2d(channels, out_channels, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features)


class FPNNeck(nn.Module):
    """A feature pyramid over several stage outputs, merged into one map at the finest
    level's resolution.

    torchvision's `FeaturePyramidNetwork` (Lin et al., "Feature Pyramid Networks for Object
    Detection", CVPR 2017) gives every level `channels` channels through lateral 1x1 and
    top-down connections; the levels are then upsampled to the finest one, summed and passed
    through a 3x3 conv block, a light form of the semantic branch of Panoptic FPN (Kirillov
    et al., CVPR 2019) that dense heads share.

    Args:
        in_channels: channels of each input level, finest first.
        channels: channels of every pyramid level and of the output.
    """

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.pyramid = FeaturePyramidNetwork(in_channels, channels)
        self.merge = conv_bn_relu(channels, channels)

    def forward(self, levels: list[Tensor]) -> Tensor:
        named = OrderedDict((str(index), level) for index, level in enumerate(levels))
        outputs = list(self.pyramid(named).values())
        size = outputs[0].shape[-2:]
        merged = outputs[0]
        for coarser in outputs[1:]:
            merged = merged + F.interpolate(coarser, size=size, mode="bilinear")
        return self.merge(merged)


class ASPPNeck(nn.Module):
    """Atrous spatial pyramid pooling over the last stage: parallel 3x3 convolutions at
    several dilation rates plus image-level pooling, concatenated and projected (Chen et al.,
    "Rethinking Atrous Convolution for Semantic Image Segmentation", DeepLabV3, 2017;
    torchvision's `ASPP` module, dropout 0.5 included).

    Args:
        in_channels: channels of the last stage.
        channels: output channels.
        rates: the dilation rates (DeepLabV3 uses 6, 12, 18 at output stride 16 and twice
            those at 8).
    """

    def __init__(self, in_channels: int, channels: int, rates: list[int]) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, rates, channels)

    def forward(self, features: Tensor) -> Tensor:
        return self.aspp(features)

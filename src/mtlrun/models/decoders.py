"""A light upsampling decoder shared by the dense heads (segmentation, depth, generation)."""

import math

from torch import Tensor, nn

from mtlrun.models.backbones import conv_bn_relu


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

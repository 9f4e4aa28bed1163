"""The two players of a GAN: a generator, an own discriminator, and a real/fake head for a
discriminator that shares the backbone's trunk.

The generator follows DCGAN/SNGAN (Radford et al. 2016; Miyato et al., "Spectral
Normalization for Generative Adversarial Networks", ICLR 2018): a linear layer to an
H/8 x W/8 map, three rounds of norm-ReLU-upsample-conv, and a last conv to RGB. Its
normalisation carries the conditioning:

- unconditional: plain BatchNorm;
- `num_classes > 0`: a learned class embedding concatenated to the noise (as in conditional
  DCGANs and BigGAN's shared embedding, Brock et al., ICLR 2019), and class-conditional
  BatchNorm, an affine-free BatchNorm whose gain and bias are looked up per class (de Vries
  et al., "Modulating early visual processing by language", NeurIPS 2017; Miyato & Koyama,
  "cGANs with Projection Discriminator", ICLR 2018). The embedding is what makes a short run
  follow its classes: the per-class gains start equal and Adam moves each by at most ~lr per
  step, so with them alone MNIST samples were in their class 14% of the time after 375
  steps (21% after 750), with the embedding 79% (99% after 750; README, Generation);
- `layout_classes > 0`: SPADE, the gain and bias predicted per pixel by a small conv net from
  the one-hot layout resized to the block's resolution (Park et al., "Semantic Image Synthesis
  with Spatially-Adaptive Normalization", CVPR 2019).

Both conditionings may be on at once; their gains and biases then add.

Layouts are LongTensors [B, H, W] of class indices; -1 (ignore) is drawn as class 0, the
background, because a generator has to paint every pixel.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

__all__ = [
    "Discriminator",
    "Generator",
    "LayoutModulation",
    "ModulatedBatchNorm2d",
    "RealFakeHead",
    "layout_one_hot",
]

SPADE_HIDDEN = 64  # Park et al. use 128; 64 is plenty at 32-64 px and halves the cost
LEAKY_SLOPE = 0.2


def layout_one_hot(
    layout: Tensor,
    classes: int,
    size: tuple[int, ...] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Class indices [B, H, W] (-1 = ignore) -> one-hot maps [B, classes, h, w].

    Args:
        layout: class indices; -1 is treated as the background class 0.
        classes: number of layout classes.
        size: (h, w) to resize to with nearest neighbours (keeps the maps one-hot); None keeps
            the layout's own size.
        dtype: dtype of the maps, so they match the features they meet.
    """
    maps = F.one_hot(layout.clamp(min=0).long(), classes).permute(0, 3, 1, 2).to(dtype)
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps, size=size, mode="nearest")
    return maps


def _maybe_spectral_norm(module: nn.Module, enabled: bool) -> nn.Module:
    return _spectral_norm(module) if enabled else module


def _conv(
    in_channels: int, out_channels: int, kernel: int, stride: int, spectral_norm: bool
) -> nn.Module:
    """A conv keeping (kernel 3, stride 1) or halving (kernel 4, stride 2) the size."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=1)
    return _maybe_spectral_norm(conv, spectral_norm)


class LayoutModulation(nn.Module):
    """SPADE's modulation (Park et al. 2019): a 3x3 conv and ReLU on the one-hot layout,
    then one 3x3 conv each for the per-pixel gain offset (gamma) and bias (beta)."""

    def __init__(self, layout_classes: int, channels: int) -> None:
        super().__init__()
        self.shared = nn.Conv2d(layout_classes, SPADE_HIDDEN, 3, padding=1)
        self.gamma = nn.Conv2d(SPADE_HIDDEN, channels, 3, padding=1)
        self.beta = nn.Conv2d(SPADE_HIDDEN, channels, 3, padding=1)

    def forward(self, layout: Tensor, size: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """(gamma, beta) [B, channels, *size] from one-hot maps [B, K, H, W]."""
        hidden = F.relu(self.shared(F.interpolate(layout, size=size, mode="nearest")))
        return self.gamma(hidden), self.beta(hidden)


class ModulatedBatchNorm2d(nn.Module):
    """BatchNorm whose affine transform comes from the conditioning (see the module docstring).

    Without conditioning it is a plain affine BatchNorm. Otherwise the BatchNorm is affine-free
    and out = normed * gain + bias with gain = class gain (or 1) + SPADE gamma (or 0) and bias
    = class bias (or 0) + SPADE beta (or 0).
    """

    def __init__(self, channels: int, num_classes: int = 0, layout_classes: int = 0) -> None:
        super().__init__()
        conditional = num_classes > 0 or layout_classes > 0
        self.norm = nn.BatchNorm2d(channels, affine=not conditional)
        self.class_gain: nn.Embedding | None = None
        self.class_bias: nn.Embedding | None = None
        if num_classes > 0:
            # Start at the identity transform, as an unconditional BatchNorm does.
            self.class_gain = nn.Embedding(num_classes, channels)
            self.class_bias = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.class_gain.weight)
            nn.init.zeros_(self.class_bias.weight)
        self.spade = LayoutModulation(layout_classes, channels) if layout_classes > 0 else None

    def forward(
        self, features: Tensor, labels: Tensor | None = None, layout: Tensor | None = None
    ) -> Tensor:
        """Normalise `features` [B,C,h,w]; `layout` is one-hot [B,K,H,W] at any resolution."""
        normed = self.norm(features)
        if self.class_gain is None and self.spade is None:
            return normed
        gain: Tensor | float = 1.0
        bias: Tensor | float = 0.0
        if self.class_gain is not None and self.class_bias is not None:
            if labels is None:
                raise ValueError("a class-conditional generator needs labels")
            gain = self.class_gain(labels)[:, :, None, None]
            bias = self.class_bias(labels)[:, :, None, None]
        if self.spade is not None:
            if layout is None:
                raise ValueError("a layout-conditional (SPADE) generator needs a layout")
            gamma, beta = self.spade(layout, features.shape[-2:])
            gain = gain + gamma
            bias = bias + beta
        return normed * gain + bias


class GeneratorBlock(nn.Module):
    """Norm, ReLU, 2x nearest upsampling, 3x3 conv."""

    def __init__(
        self, in_channels: int, out_channels: int, num_classes: int, layout_classes: int
    ) -> None:
        super().__init__()
        self.norm = ModulatedBatchNorm2d(in_channels, num_classes, layout_classes)
        # No bias: a BatchNorm follows (the next block's or the last one) and removes it;
        # a bias there would only gather rounding noise, which Adam turns into steps.
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)

    def forward(self, features: Tensor, labels: Tensor | None, layout: Tensor | None) -> Tensor:
        features = F.relu(self.norm(features, labels, layout))
        return self.conv(F.interpolate(features, scale_factor=2.0, mode="nearest"))


class Generator(nn.Module):
    """Noise [B, noise_dim] (+ class labels [B] and/or a layout [B,H,W]) -> images [B,3,H,W]
    in [0, 1].

    Args:
        image_size: (H, W), each divisible by 8.
        noise_dim: length of the noise vector.
        hidden: channels of the first (H/8 x W/8) map; each upsampling block halves them
            (to no fewer than 32, or `hidden` if that is smaller).
        num_classes: > 0 makes every BatchNorm class-conditional.
        layout_classes: > 0 makes every BatchNorm a SPADE block.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        noise_dim: int = 128,
        hidden: int = 256,
        num_classes: int = 0,
        layout_classes: int = 0,
    ) -> None:
        super().__init__()
        height, width = image_size
        if height % 8 or width % 8:
            raise ValueError(f"generator image_size must be divisible by 8, got {image_size}")
        self.image_size = (height, width)
        self.noise_dim = noise_dim
        self.num_classes = num_classes
        self.layout_classes = layout_classes
        self.base_size = (height // 8, width // 8)
        # N(0, 1) like the noise, so the class starts with as much say as the noise has.
        self.class_embedding = nn.Embedding(num_classes, noise_dim) if num_classes > 0 else None
        inputs = noise_dim * (2 if num_classes > 0 else 1)
        self.project = nn.Linear(inputs, hidden * math.prod(self.base_size), bias=False)
        widths = [max(hidden >> level, min(hidden, 32)) for level in range(4)]
        self.blocks = nn.ModuleList(
            GeneratorBlock(widths[level], widths[level + 1], num_classes, layout_classes)
            for level in range(3)
        )
        self.last_norm = ModulatedBatchNorm2d(widths[-1], num_classes, layout_classes)
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, padding=1)

    def forward(
        self, noise: Tensor, labels: Tensor | None = None, layout: Tensor | None = None
    ) -> Tensor:
        """Images [B,3,H,W] in [0, 1]. `labels`/`layout` are ignored by an unconditional
        generator, so a caller can pass what the batch has without asking which kind it is."""
        maps = None
        if self.layout_classes > 0 and layout is not None:
            maps = layout_one_hot(layout, self.layout_classes, self.image_size, noise.dtype)
        if self.num_classes == 0:
            labels = None
        elif labels is None:
            raise ValueError("a class-conditional generator needs labels")
        if self.class_embedding is not None and labels is not None:
            noise = torch.cat([noise, self.class_embedding(labels).to(noise.dtype)], dim=1)
        features = self.project(noise).view(noise.shape[0], -1, *self.base_size)
        for block in self.blocks:
            features = block(features, labels, maps)
        features = F.relu(self.last_norm(features, labels, maps))
        # (tanh + 1) / 2 = sigmoid(2x): tanh's centred range as in DCGAN, mapped to [0, 1].
        return (torch.tanh(self.to_rgb(features)) + 1) / 2

    def sample_inputs(
        self, count: int, generator: torch.Generator, labels: Tensor | None = None
    ) -> Tensor:
        """Noise [count, noise_dim] drawn on CPU from `generator`, then moved to this module's
        device, so a fixed-noise grid is the same on every device.

        Args:
            count: number of noise vectors.
            generator: a CPU `torch.Generator` (seed it for a reproducible grid).
            labels: the labels the noise will be paired with; only checked to have `count`
                entries, since the noise itself does not depend on them.
        """
        if labels is not None and labels.shape[0] != count:
            raise ValueError(f"sample_inputs got {labels.shape[0]} labels for {count} samples")
        device = next(self.parameters()).device
        return torch.randn(count, self.noise_dim, generator=generator).to(device)


class Discriminator(nn.Module):
    """Images [B,3,H,W] in [0, 1] (+ labels [B] and/or a layout [B,H,W]) -> logits [B].

    SNGAN-style plain conv net (Miyato et al. 2018): per level a 3x3 conv and a 4x4 stride-2
    conv, each followed by LeakyReLU(0.2), until the map is about 4x4; then a 3x3 conv, global
    sum pooling and a linear layer. Class labels enter by projection (Miyato & Koyama 2018):
    logit += <embed(y), pooled features>. A layout enters as one-hot maps concatenated to the
    image (Isola et al., pix2pix, CVPR 2017).

    Args:
        image_size: (H, W) of the input images.
        hidden: channels at the last (4x4) level; earlier levels halve them (to >= 32).
        num_classes: > 0 adds the projection term.
        layout_classes: > 0 concatenates the one-hot layout to the input.
        spectral_norm: wrap every conv, linear and the class embedding in spectral
            normalisation (one power iteration per training forward pass).
        auxiliary_classes: > 0 adds an auxiliary classifier on the pooled features (AC-GAN,
            Odena et al. 2017), read with `judge`.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        hidden: int = 128,
        num_classes: int = 0,
        layout_classes: int = 0,
        spectral_norm: bool = True,
        auxiliary_classes: int = 0,
    ) -> None:
        super().__init__()
        self.layout_classes = layout_classes
        self.num_classes = num_classes
        levels = max(1, int(math.log2(min(image_size) // 4)))
        widths = [max(hidden >> (levels - level), min(hidden, 32)) for level in range(levels + 1)]
        layers = [_conv(3 + layout_classes, widths[0], 3, 1, spectral_norm)]
        for level in range(levels):
            layers += [
                nn.LeakyReLU(LEAKY_SLOPE),
                _conv(widths[level], widths[level], 3, 1, spectral_norm),
                nn.LeakyReLU(LEAKY_SLOPE),
                _conv(widths[level], widths[level + 1], 4, 2, spectral_norm),
            ]
        layers.append(nn.LeakyReLU(LEAKY_SLOPE))
        self.trunk = nn.Sequential(*layers)
        self.head = RealFakeHead(
            hidden, num_classes, spectral_norm, LEAKY_SLOPE, auxiliary_classes=auxiliary_classes
        )

    def forward(
        self, images: Tensor, labels: Tensor | None = None, layout: Tensor | None = None
    ) -> Tensor:
        """Logits [B]; higher means "real"."""
        return self.judge(images, labels, layout)[0]

    def judge(
        self, images: Tensor, labels: Tensor | None = None, layout: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Real/fake logits [B] and the auxiliary classifier's logits [B, classes] (None
        without one), from one pass."""
        # Centre the input as DCGAN does; the generator and the datasets both give [0, 1].
        inputs = images * 2 - 1
        if self.layout_classes > 0:
            if layout is None:
                raise ValueError("a layout-conditional discriminator needs a layout")
            maps = layout_one_hot(layout, self.layout_classes, images.shape[-2:], images.dtype)
            inputs = torch.cat([inputs, maps], dim=1)
        return self.head.judge(self.trunk(inputs), labels if self.num_classes > 0 else None)


class RealFakeHead(nn.Module):
    """Feature map [B,C,h,w] (+ labels [B]) -> real/fake logits [B].

    The head a discriminator puts on its trunk, also usable on a trunk shared with other
    tasks: a 3x3 conv and ReLU, global sum pooling, a linear layer to one logit, plus the
    projection term <embed(y), pooled> when `num_classes > 0` (Miyato & Koyama 2018).
    Sum pooling (SNGAN) rather than mean keeps the logit's scale tied to the map's size.

    Args:
        in_channels: channels of the feature map.
        num_classes: > 0 adds the class projection.
        spectral_norm: wrap the conv, the linear layer and the embedding in spectral norm.
        activation: negative slope of the leaky ReLU after the conv; 0 is a plain ReLU.
        pooling: "sum" (SNGAN, for a fully spectral-normalised discriminator) or "mean"
            (for a trunk without spectral norm, shared with other tasks: sum pooling there
            gives logits in the tens to hundreds, where the hinge loss is flat).
        auxiliary_classes: > 0 adds a linear classifier on the pooled features (AC-GAN).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 0,
        spectral_norm: bool = True,
        activation: float = 0.0,
        pooling: str = "sum",
        auxiliary_classes: int = 0,
    ) -> None:
        super().__init__()
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self.conv = _conv(in_channels, in_channels, 3, 1, spectral_norm)
        self.slope = activation
        self.linear = _maybe_spectral_norm(nn.Linear(in_channels, 1), spectral_norm)
        self.embed: nn.Module | None = None
        if num_classes > 0:
            embed = nn.Embedding(num_classes, in_channels)
            self.embed = _maybe_spectral_norm(embed, spectral_norm)
        self.classifier: nn.Module | None = None
        if auxiliary_classes > 0:
            classifier = nn.Linear(in_channels, auxiliary_classes)
            self.classifier = _maybe_spectral_norm(classifier, spectral_norm)

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits [B]; `labels` are required when the head has classes."""
        return self.judge(features, labels)[0]

    def judge(self, features: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits [B] and the auxiliary class logits [B, classes] (None without a classifier).
        The classifier reads the pooled features the logit reads: with spectral norm on it,
        mean pooling's smaller scale kept its logits near zero (MNIST: cross-entropy 0.87
        vs 0.47 with sum pooling after the same 120 steps)."""
        activated = F.leaky_relu(self.conv(features), self.slope)
        pooled = activated.sum(dim=(2, 3)) if self.pooling == "sum" else activated.mean(dim=(2, 3))
        logits = self.linear(pooled).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("a class-conditional discriminator head needs labels")
            logits = logits + (self.embed(labels) * pooled).sum(dim=1)
        if self.classifier is None:
            return logits, None
        return logits, self.classifier(pooled)

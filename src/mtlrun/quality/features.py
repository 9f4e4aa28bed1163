"""Feature extractors for sample-quality metrics: images [B, 3, H, W] in [0, 1] -> [B, D].

Two kinds, both fixed and offline (nothing is downloaded, ever):

- `ReferenceNetwork`: a small conv net trained on one built-in dataset, whose weights ship
  inside the package (`weights/<name>.pth`, written by `python -m
  mtlrun.quality.train_reference <name>`). Features that know the dataset's shapes make FID
  meaningful on 32 x 32 synthetic images, where Inception's ImageNet features are not.
- `InceptionFeatures`: torchvision's Inception-v3 pool features, read from the local torch hub
  cache only. Torchvision's weights differ from the TensorFlow graph of the FID paper, so its
  values compare across mtlrun runs but not with published FID numbers.

The metric code takes any such module; it never uses the run's own backbone, whose features
change as it trains.
"""

import hashlib
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from mtlrun.errors import UserError

WEIGHTS_DIR = Path(__file__).parent / "weights"
INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"  # torchvision's IMAGENET1K_V1 checkpoint
REFERENCE_SIZE = 32  # the side the reference networks see; other sizes are resized to it
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ReferenceNetwork(nn.Module):
    """A small conv net with feature, classification and segmentation outputs.

    Four conv-BN-ReLU layers: 32 channels at 32 x 32, then 64, 128 and 128 channels, each
    halving the resolution (down to 4 x 4), so that training fits a few CPU minutes. Features
    are the global average of the last layer (D = 128). The segmentation head fuses the three
    coarser maps at 16 x 16 with a 1 x 1 convolution, upsamples, and adds the 32 x 32 stem
    features for sharp edges before a last 1 x 1 convolution.

    Args:
        num_classes: classes of the image-level `classify` output.
        seg_classes: classes of the per-pixel `segment` output (background included).
    """

    feature_dim = 128

    def __init__(self, num_classes: int, seg_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.seg_classes = seg_classes
        self.stem = _conv_bn_relu(3, 32)
        self.down1 = _conv_bn_relu(32, 64, stride=2)
        self.down2 = _conv_bn_relu(64, 128, stride=2)
        self.down3 = _conv_bn_relu(128, self.feature_dim, stride=2)
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.seg_fuse = nn.Sequential(
            nn.Conv2d(64 + 128 + self.feature_dim, 32, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
        )
        self.seg_out = nn.Conv2d(32 + 32, seg_classes, 1)

    def _trunk(self, images: Tensor) -> list[Tensor]:
        """The 32, 16, 8 and 4 pixel feature maps of `images` resized to 32 x 32."""
        if images.shape[-2:] != (REFERENCE_SIZE, REFERENCE_SIZE):
            images = F.interpolate(
                images, size=(REFERENCE_SIZE, REFERENCE_SIZE), mode="bilinear", antialias=True
            )
        # Centre the [0, 1] input so the first BN sees a zero-mean signal from the start.
        maps = [self.stem(images - 0.5)]
        for layer in (self.down1, self.down2, self.down3):
            maps.append(layer(maps[-1]))
        return maps

    def features(self, images: Tensor) -> Tensor:
        """Global-average-pooled last-layer features, [B, 128]."""
        return self._trunk(images)[-1].mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        """Same as `features`, so the network plugs into `SampleQuality` as it is."""
        return self.features(images)

    def classify(self, images: Tensor) -> Tensor:
        """Class logits, [B, num_classes]."""
        return self.classifier(self.features(images))

    def segment(self, images: Tensor) -> Tensor:
        """Per-pixel class logits at the input's resolution, [B, seg_classes, H, W]."""
        return self._segment(self._trunk(images), images.shape[-2:])

    def classify_and_segment(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """`classify` and `segment` from one pass through the trunk (what training uses)."""
        maps = self._trunk(images)
        class_logits = self.classifier(maps[-1].mean(dim=(2, 3)))
        return class_logits, self._segment(maps, images.shape[-2:])

    def _segment(self, maps: list[Tensor], size: torch.Size) -> Tensor:
        full, half, *coarse = maps
        upsampled = [F.interpolate(x, size=half.shape[-2:], mode="bilinear") for x in coarse]
        fused = self.seg_fuse(torch.cat([half, *upsampled], dim=1))
        fused = F.interpolate(fused, size=full.shape[-2:], mode="bilinear")
        logits = self.seg_out(torch.cat([full, fused], dim=1))
        if logits.shape[-2:] != size:
            logits = F.interpolate(logits, size=size, mode="bilinear")
        return logits


def state_dict_sha256(state_dict: dict[str, Tensor]) -> str:
    """A SHA-256 over names, dtypes, shapes and bytes of every tensor, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def reference_path(name: str) -> Path:
    """The weights file of the reference network `name`."""
    # .pth, not .pt: the repository ignores *.pt, and hatch leaves ignored files out of the wheel.
    return WEIGHTS_DIR / f"{name}.pth"


def load_reference(name: str) -> ReferenceNetwork:
    """The shipped reference network `name` (e.g. "shapes"), in eval mode on the CPU.

    The file holds ``{"config": constructor args, "state_dict": ..., "sha256": ...,
    "metrics": ...}``; it is read with ``weights_only=True`` and its hash is checked.

    Raises:
        UserError: the file is missing or does not match its recorded hash.
    """
    regenerate = f"regenerate it with `python -m mtlrun.quality.train_reference {name}`"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise UserError(f"reference network name {name!r} must be letters, digits, _ or -")
    path = reference_path(name)
    if not path.is_file():
        raise UserError(f"reference network weights {path} not found; {regenerate}")
    saved: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if state_dict_sha256(saved["state_dict"]) != saved["sha256"]:
        raise UserError(f"reference network weights {path} fail their SHA-256 check; {regenerate}")
    network = ReferenceNetwork(**saved["config"])
    network.load_state_dict(saved["state_dict"])
    return network.eval()


def inception_path() -> Path:
    """Where torchvision keeps the Inception-v3 ImageNet weights in the local hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


class InceptionFeatures(nn.Module):
    """Inception-v3 2048-d pool features of images resized to 299 x 299.

    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016;
    torchvision's IMAGENET1K_V1 weights, read from the torch hub cache and never downloaded.

    Raises:
        UserError: the checkpoint is not in the cache.
    """

    mean: Tensor
    std: Tensor

    def __init__(self) -> None:
        super().__init__()
        path = inception_path()
        if not path.is_file():
            raise UserError(
                f"Inception-v3 weights {path} not found; on a machine with internet run "
                '`python -c "import torchvision; '
                "torchvision.models.inception_v3(weights='IMAGENET1K_V1')\"` "
                f"and copy the file it writes to {path}"
            )
        # transform_input=True is how torchvision builds these weights: they expect Google's
        # [-1, 1] scaling, which the model derives from ImageNet-normalised input.
        model = torchvision.models.inception_v3(
            weights=None, aux_logits=True, transform_input=True, init_weights=False
        )
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.aux_logits = False
        model.AuxLogits = None
        model.fc = nn.Identity()  # the 2048-d average-pooled features come out instead
        self.model = model.eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        """Pool features, [B, 2048], of images [B, 3, H, W] in [0, 1]."""
        images = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        return self.model((images - self.mean) / self.std)


def feature_network(name: str) -> nn.Module:
    """The feature extractor `name`: "inception" or a shipped reference name ("shapes")."""
    if name == "inception":
        return InceptionFeatures().eval()
    return load_reference(name)

"""`SampleQuality`: FID, KID, precision and recall of generated images, batch by batch."""

import torch
from torch import Tensor, nn

from mtlrun.quality.fid import frechet_distance, kernel_inception_distance
from mtlrun.quality.precision_recall import precision_recall

DIRECTIONS = {"fid": "min", "kid": "min", "precision": "max", "recall": "max"}


class SampleQuality:
    """Accumulates features of real and generated images and computes sample-quality metrics.

    Features come from a fixed feature module (see `mtlrun.quality.features`), never from the
    model being trained, so values stay comparable across steps and runs. They are kept on the
    CPU in float64: 10,000 samples of 2048-d Inception features take 160 MB.

    Args:
        feature_module: maps images [B, 3, H, W] in [0, 1] to features [B, D]; it is put in
            eval mode and run without gradients on the device its parameters live on.
        k: neighbourhood size of precision and recall.
        kid_subsets: subset rounds of KID.
        kid_subset_size: samples per set per KID round (clipped to the smaller set).
        seed: seed of KID's subset draws.
    """

    def __init__(
        self,
        feature_module: nn.Module,
        k: int = 3,
        kid_subsets: int = 10,
        kid_subset_size: int = 100,
        seed: int = 0,
    ) -> None:
        self.feature_module = feature_module.eval()
        self.k = k
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.seed = seed
        parameter = next(feature_module.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self._real: list[Tensor] = []
        self._fake: list[Tensor] = []

    @torch.no_grad()
    def _features(self, images: Tensor) -> Tensor:
        features = self.feature_module(images.detach().to(self.device, torch.float32))
        return features.to(device="cpu", dtype=torch.float64)

    def update_real(self, images: Tensor) -> None:
        """Add a batch of real images [B, 3, H, W] in [0, 1]."""
        self._real.append(self._features(images))

    def update_fake(self, images: Tensor) -> None:
        """Add a batch of generated images [B, 3, H, W] in [0, 1]."""
        self._fake.append(self._features(images))

    def reset(self) -> None:
        """Forget all accumulated features."""
        self._real.clear()
        self._fake.clear()

    def compute(self) -> dict[str, float]:
        """`fid`, `kid` (the mean over subsets), `precision` and `recall` of all added images.

        Needs more than `k` real and more than `k` generated images.
        """
        if not self._real or not self._fake:
            raise ValueError(
                "SampleQuality.compute needs images from update_real and update_fake first; "
                f"got {'no' if not self._real else 'some'} real and "
                f"{'no' if not self._fake else 'some'} generated"
            )
        real, fake = torch.cat(self._real), torch.cat(self._fake)
        kid, _ = kernel_inception_distance(
            real, fake, self.kid_subsets, self.kid_subset_size, self.seed
        )
        precision, recall = precision_recall(real, fake, self.k)
        return {
            "fid": frechet_distance(real, fake),
            "kid": kid,
            "precision": precision,
            "recall": recall,
        }

"""`gen`: image generation: reconstruct the input (autoencoder) or also sample (VAE)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import make_grid

from mtlrun.data import DatasetInfo
from mtlrun.errors import UserError
from mtlrun.models.decoders import UpsampleDecoder
from mtlrun.tasks.base import Direction, Task
from mtlrun.tasks.metrics import Mean
from mtlrun.tasks.pictures import side_by_side


class GenerationHead(nn.Module):
    """Shared features -> image in [0, 1].

    With `variational`, a 1x1 conv gives the mean and log-variance of a spatial latent
    (latent_channels x H/stride x W/stride); a sample of it is decoded (Kingma & Welling
    2014). `sample(n)` decodes latents drawn from the standard normal prior.
    """

    def __init__(
        self, in_channels: int, hidden: int, stride: int, variational: bool, latent_channels: int,
        image_size: tuple[int, int],
    ) -> None:  # fmt: skip
        super().__init__()
        self.variational = variational
        self.latent_shape = (latent_channels, image_size[0] // stride, image_size[1] // stride)
        decoder_in = in_channels
        if variational:
            self.to_latent = nn.Conv2d(in_channels, 2 * latent_channels, 1)
            decoder_in = latent_channels
        self.decoder = UpsampleDecoder(decoder_in, hidden, 3, stride)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        if not self.variational:
            return {"image": torch.sigmoid(self.decoder(features))}
        mean, log_variance = self.to_latent(features).chunk(2, dim=1)
        log_variance = log_variance.clamp(-10, 10)
        latent = mean
        if self.training:
            latent = mean + torch.randn_like(mean) * torch.exp(0.5 * log_variance)
        image = torch.sigmoid(self.decoder(latent))
        return {"image": image, "mean": mean, "log_variance": log_variance}

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator) -> Tensor:
        device = next(self.parameters()).device
        latent = torch.randn(count, *self.latent_shape, generator=generator).to(device)
        return torch.sigmoid(self.decoder(latent))


def kl_per_sample(mean: Tensor, log_variance: Tensor) -> Tensor:
    """KL(N(mean, exp(log_variance)) || N(0, I)), summed over latent elements, per sample."""
    kl = 0.5 * (mean.float() ** 2 + log_variance.float().exp() - 1 - log_variance.float())
    return kl.flatten(1).sum(1)


class GenerationTask(Task):
    """Reconstruction (`variant: ae`) or VAE (`variant: vae`) on the shared features.

    Loss: mean squared error per pixel; for `vae` plus `beta` times the KL divergence
    divided by the number of image values, so that `beta` is on the same per-pixel scale.
    Metrics: `psnr` (dB, per image, averaged; higher-better) and for `vae` also `kl`
    (per image, lower-better).
    """

    # Every metric this task type can report, for readers that do not build the task
    # (mtlrun-report); an instance narrows it to its variant's metrics.
    metric_directions = {"psnr": Direction.MAX, "kl": Direction.MIN}
    main_metric = "psnr"

    def __init__(
        self,
        name: str,
        info: DatasetInfo,
        in_channels: int,
        stride: int,
        target: str = "gen",
        variant: str = "ae",
        hidden: int = 64,
        latent_channels: int = 16,
        beta: float = 1.0,
    ) -> None:
        super().__init__(name, target, info)
        if variant not in ("ae", "vae"):
            raise UserError(
                f"tasks.{name}.variant must be 'ae' or 'vae', got '{variant}'; for a GAN select "
                "the gan task instead, e.g. 'tasks=[cls,seg,gan]'"
            )
        self.variational = variant == "vae"
        self.head = GenerationHead(
            in_channels, hidden, stride, self.variational, latent_channels, info.image_size
        )
        self.beta = beta
        self.values_per_image = 3 * info.image_size[0] * info.image_size[1]
        self.metric_directions = {"psnr": Direction.MAX}
        if self.variational:
            self.metric_directions["kl"] = Direction.MIN
        self.psnr, self.kl = Mean(), Mean()

    def loss(self, output: dict[str, Tensor], target: Tensor) -> Tensor:
        loss = F.mse_loss(output["image"].float(), target.float())
        if self.variational:
            kl = kl_per_sample(output["mean"], output["log_variance"]).mean()
            loss = loss + self.beta * kl / self.values_per_image
        return loss

    def reset_metrics(self) -> None:
        self.psnr.reset()
        self.kl.reset()

    def update_metrics(self, output: dict[str, Tensor], target: Tensor) -> None:
        error = (output["image"].float() - target.float()).pow(2).flatten(1).mean(1)
        self.psnr.update(-10 * torch.log10(error.clamp(min=1e-10)))
        if self.variational:
            self.kl.update(kl_per_sample(output["mean"], output["log_variance"]))

    def compute_metrics(self) -> dict[str, float]:
        metrics = {"psnr": self.psnr.compute()}
        if self.variational:
            metrics["kl"] = self.kl.compute()
        return metrics

    def pictures(
        self, images: Tensor, output: dict[str, Tensor], target: Tensor
    ) -> dict[str, Tensor]:
        pictures = {"input_vs_reconstruction": side_by_side(target, output["image"])}
        if self.variational:
            generator = torch.Generator().manual_seed(0)  # the same noise at every evaluation
            samples = self.head.sample(len(images), generator)
            pictures["samples"] = make_grid(samples.float().cpu(), nrow=4, padding=1, pad_value=1.0)
        return pictures

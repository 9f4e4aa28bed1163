"""`gen`: image generation: reconstruct the input (autoencoder) or also sample (VAE), with an
optional adversarial term on the reconstructions (VAE-GAN, Larsen et al. 2016)."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import make_grid

from mtlrun.data import DatasetInfo
from mtlrun.errors import UserError
from mtlrun.models.adversarial_losses import LOSSES, discriminator_loss, generator_loss
from mtlrun.models.decoders import UpsampleDecoder
from mtlrun.models.gan import Discriminator
from mtlrun.players import ModelForward, Player
from mtlrun.tasks.base import Direction, Task
from mtlrun.tasks.metrics import Mean
from mtlrun.tasks.pictures import enlarged, titled_columns


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

    With `adversarial` > 0 an own spectral-normalised discriminator (a second player, see
    `mtlrun.players`) learns to tell the images from their reconstructions, and the loss
    adds `adversarial` times the generator's adversarial loss on the reconstructions, for
    sharper images than the squared error alone gives (Larsen et al. 2016).
    """

    # Every metric this task type can report, for readers that do not build the task
    # (mtlrun-report); an instance narrows it to its variant's metrics.
    metric_directions = {"psnr": Direction.MAX, "kl": Direction.MIN}
    main_metric = "psnr"
    head: GenerationHead

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
        adversarial: float = 0.0,
        adversarial_loss: str = "hinge",
        discriminator_hidden: int = 64,
        discriminator_lr: float = 4e-4,
    ) -> None:
        super().__init__(name, target, info)
        if adversarial < 0 or adversarial_loss not in LOSSES:
            raise UserError(
                f"tasks.{name}: adversarial must be >= 0 and adversarial_loss one of "
                f"{', '.join(LOSSES)}, got {adversarial} and '{adversarial_loss}'"
            )
        self.adversarial, self.adversarial_loss = adversarial, adversarial_loss
        self.discriminator = (
            Discriminator(info.image_size, discriminator_hidden) if adversarial > 0 else None
        )
        self.discriminator_lr = discriminator_lr
        self.reconstruction: Tensor | None = None  # this step's, for the discriminator
        self.latest: dict[str, Tensor] = {}
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
        if self.discriminator is not None:
            self.reconstruction = output["image"].detach()
            fake_logits = self.discriminator(output["image"])
            self.latest = {"d_fake": fake_logits.detach().float().mean()}
            loss = loss + self.adversarial * generator_loss(self.adversarial_loss, fake_logits)
        return loss

    def players(self, tasks: dict[str, Task]) -> list[Player]:
        if self.discriminator is None:
            return []
        return [ReconstructionCritic(self, self.discriminator)]

    def train_scalars(self) -> dict[str, Tensor]:
        return self.latest

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
        """Input | reconstruction under column titles; for `vae` also samples from noise."""
        grid = titled_columns(["input", "reconstruction"], target, output["image"])
        pictures = {"input_vs_reconstruction": grid}
        if self.variational:
            generator = torch.Generator().manual_seed(0)  # the same noise at every evaluation
            samples = enlarged(self.head.sample(len(images), generator).float().cpu())
            pictures["samples"] = make_grid(samples, nrow=4, padding=1, pad_value=1.0)
        return pictures


class ReconstructionCritic(Player):
    """The discriminator of `gen` with `adversarial` > 0: real images vs this step's
    reconstructions (taken from the model's step, so no second forward pass)."""

    def __init__(self, task: GenerationTask, discriminator: Discriminator) -> None:
        self.generation = task
        self.task, self.name = task.name, f"{task.name}_discriminator"
        self.module = discriminator
        self.settings = {"lr": task.discriminator_lr, "betas": (0.0, 0.9)}

    def loss(
        self, model: ModelForward, images: Tensor, target: Any
    ) -> tuple[Tensor, dict[str, Tensor]]:
        reconstruction = self.generation.reconstruction
        if reconstruction is None:  # cannot happen: the model's step always comes first
            raise RuntimeError("the discriminator stepped before any reconstruction")
        real_logits, fake_logits = self.module(target), self.module(reconstruction)
        loss = discriminator_loss(self.generation.adversarial_loss, real_logits, fake_logits)
        return loss, {"d_real": real_logits.detach().float().mean()}

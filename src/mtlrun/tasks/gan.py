"""`gen` with `variant: gan`: a generator trained against a discriminator, judged by sample
quality (FID, KID, precision/recall in a fixed reference network's features).

Two ways to place the discriminator (`discriminator`):

- `shared`: the run's backbone *is* the discriminator's trunk. The model step trains it on
  every supervised task (real images) and on the real/fake loss of this task's head (real
  and generated images pass through the trunk together), all through the run's weighting.
  The generator is the second player (`mtlrun.players`): its loss is the adversarial term
  of the real/fake head on its images plus, with a condition, the losses of the run's own
  heads for the conditioned target on those images (the `cls` head as an auxiliary
  classifier, AC-GAN, Odena et al. 2017; the `seg` head recovering the input layout, in the
  spirit of OASIS, Schönfeld et al. 2021), times `semantic_weight`.
- `own`: a separate SNGAN-style discriminator (Miyato et al. 2018) is the second player; the
  generator sits in the model as this task's head (it reads no shared features) and its
  adversarial loss is this task's loss. Nothing is shared with the other tasks.

Which losses each player's update sees:

    player          shared discriminator                      own discriminator
    model step      supervised losses + D loss (+ lazy R1)    supervised losses + G loss
                    (the run's weighting)
    second player   G loss + semantic terms (own Adam)        D loss + lazy R1 (own Adam)

Conditions (`condition`): `class` (a class embedding beside the noise and class-conditional
BatchNorm in the generator; projection discriminator, Miyato & Koyama 2018, with `own`, plus
an AC-GAN auxiliary classifier in it with `auxiliary_weight` > 0, Odena et al. 2017),
`layout` (SPADE generator, Park et al. 2019, from the dataset's segmentation map; the layout
is given to an own discriminator). `mode_seeking` > 0 adds Mao et al.'s term (2019) to the
generator's loss, against drawing one image per condition. The generator's EMA copy
(`ema_decay`) makes the evaluation samples and pictures.
"""

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn
from torchvision.utils import make_grid

from mtlrun.data import DatasetInfo
from mtlrun.errors import UserError
from mtlrun.models.adversarial_losses import (
    LOSSES,
    discriminator_loss,
    generator_loss,
    r1_penalty,
)
from mtlrun.models.ema import ModelEMA
from mtlrun.models.gan import Discriminator, Generator, RealFakeHead
from mtlrun.players import ModelForward, Player
from mtlrun.quality.features import ReferenceNetwork, load_reference, reference_path
from mtlrun.quality.sample_quality import SampleQuality
from mtlrun.tasks.base import Direction, Task
from mtlrun.tasks.metrics import ConfusionMatrix
from mtlrun.tasks.pictures import colourise, from_pil, label_font

CONDITIONS = ("none", "class", "layout")
DISCRIMINATORS = ("shared", "own")
# Two time-scale update rule (Heusel et al. 2017): the discriminator learns faster.
TTUR = {"generator": 1e-4, "discriminator": 4e-4}
EVAL_SEED = 0  # the same noise at every evaluation, so that values and pictures compare


class GeneratorHead(nn.Module):
    """The generator as the model's head (`discriminator: own`): it reads no features, and
    exists in the model so that the model's optimizer trains it."""

    reads_features = False  # a model whose heads all read nothing skips its trunk

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, features: Tensor) -> Tensor:
        return features.new_zeros(len(features), 0)


class CountedDiscriminator(nn.Module):
    """An own discriminator with a step counter (a buffer, so checkpoints carry it) for the
    lazy R1 schedule."""

    def __init__(self, network: Discriminator) -> None:
        super().__init__()
        self.network = network
        self.steps: Tensor
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


@dataclass
class Condition:
    """What the generator is conditioned on, from the batch's targets."""

    kind: str
    target: str | None  # the batch target holding it
    classes: int  # classes of that target (0: none)


class GANTask(Task):
    """A GAN (see the module docstring for the two placements of the discriminator).

    Metrics (on `num_samples` generated vs real validation images, in the features of the
    reference network named by `quality_features`): `fid`, `kid` (lower-better),
    `precision`, `recall` (higher-better); with `condition: class` also `class_accuracy`
    (the reference classifier's accuracy on generated images for their conditioned class)
    and `class_accuracy_real` (on the real ones); with `layout`, `layout_miou` and
    `layout_miou_real` (the reference segmenter's mIoU against the input layouts).
    `val/<name>/loss` is the discriminator's loss on real validation images vs samples.
    """

    metric_directions = {
        "fid": Direction.MIN,
        "kid": Direction.MIN,
        "precision": Direction.MAX,
        "recall": Direction.MAX,
        "class_accuracy": Direction.MAX,
        "class_accuracy_real": Direction.MAX,
        "layout_miou": Direction.MAX,
        "layout_miou_real": Direction.MAX,
    }
    main_metric = "fid"
    discriminator: "CountedDiscriminator | None"  # the own one; None when it is the trunk

    def __init__(
        self,
        name: str,
        info: DatasetInfo,
        in_channels: int,
        stride: int,
        target: str = "gen",
        discriminator: str = "shared",
        loss: str = "hinge",
        condition: str = "none",
        class_target: str = "cls",
        layout_target: str = "seg",
        noise_dim: int = 128,
        hidden: int = 256,
        discriminator_hidden: int = 128,
        spectral_norm: bool = True,
        n_critic: int = 1,
        r1_gamma: float = 0.0,
        r1_every: int = 16,
        semantic_weight: float = 1.0,
        auxiliary_weight: float = 0.0,
        mode_seeking: float = 0.0,
        player_lr: float | None = None,
        player_betas: tuple[float, float] = (0.0, 0.9),
        ema_decay: float = 0.99,
        ema_warmup: int = 100,
        quality_features: str = "auto",
        num_samples: int = 1000,
    ) -> None:
        super().__init__(name, target, info)
        check_choices(name, discriminator=(discriminator, DISCRIMINATORS), loss=(loss, LOSSES),
                      condition=(condition, CONDITIONS))  # fmt: skip
        check_counts(name, n_critic, r1_every, num_samples, mode_seeking)
        self.condition = self.find_condition(condition, class_target, layout_target)
        self.shared, self.kind, self.n_critic = discriminator == "shared", loss, n_critic
        self.needs_shared_trunk = self.shared
        self.r1_gamma, self.r1_every, self.semantic_weight = r1_gamma, r1_every, semantic_weight
        self.auxiliary_weight = self.check_auxiliary(auxiliary_weight)
        self.mode_seeking, self.num_samples = mode_seeking, num_samples
        self.generator = Generator(info.image_size, noise_dim, hidden, **self.conditioning())
        self.head, self.discriminator = self.discriminator_side(
            in_channels, discriminator_hidden, spectral_norm
        )
        player = "generator" if self.shared else "discriminator"
        self.player_settings = {"lr": player_lr or TTUR[player], "betas": tuple(player_betas)}
        self.ema = ModelEMA(self.generator, ema_decay, ema_warmup)
        self.reference = self.find_reference(quality_features)
        self.metric_directions = self.reported_directions()
        self.start_state()

    def start_state(self) -> None:
        """What the task keeps between calls besides its configuration."""
        # The run's seed is set before tasks are built: the noise stream follows it.
        self.noise = torch.Generator().manual_seed(torch.initial_seed())
        self.eval_noise = torch.Generator().manual_seed(EVAL_SEED)
        self.latest: dict[str, Tensor] = {}  # the latest training step's scalars
        self.penalised: Tensor | None = None  # this step's real images under R1 (shared)
        self.quality: SampleQuality | None = None  # made afresh at each evaluation
        # The reference network's verdict on generated and on real images against the
        # condition: classes (accuracy) or layouts (mean IoU over the pooled pixels).
        self.judged = {key: ConfusionMatrix(self.condition.classes) for key in ("fake", "real")}

    # --- set-up ------------------------------------------------------------------------

    def find_condition(self, kind: str, class_target: str, layout_target: str) -> Condition:
        """The conditioning target, checked against what the dataset provides."""
        if kind == "none":
            return Condition(kind, None, 0)
        key = class_target if kind == "class" else layout_target
        if key not in self.info.targets or key not in self.info.num_classes:
            raise UserError(
                f"tasks.{self.name}.condition={kind} needs the class-valued target '{key}', "
                f"which dataset '{self.info.name}' does not provide (it has: "
                f"{', '.join(sorted(self.info.targets))}); set tasks.{self.name}."
                f"{kind}_target or condition=none"
            )
        return Condition(kind, key, self.info.num_classes[key])

    def check_auxiliary(self, weight: float) -> float:
        """The AC-GAN weight, which needs an own discriminator and a class condition."""
        if weight > 0 and (self.shared or self.condition.kind != "class"):
            raise UserError(
                f"tasks.{self.name}.auxiliary_weight needs discriminator=own and "
                "condition=class; with a shared discriminator the run's own class head is "
                "the auxiliary classifier (semantic_weight)"
            )
        return weight

    def conditioning(self) -> dict[str, int]:
        """The class counts a conditional generator or discriminator is built with."""
        classes = self.condition.classes
        return {
            "num_classes": classes if self.condition.kind == "class" else 0,
            "layout_classes": classes if self.condition.kind == "layout" else 0,
        }

    def discriminator_side(
        self, in_channels: int, hidden: int, spectral_norm: bool
    ) -> tuple[nn.Module, "CountedDiscriminator | None"]:
        """The model's head for this task and the own discriminator, if any: a real/fake
        head on the shared trunk, or the generator as the head and a separate network."""
        if self.shared:
            head = RealFakeHead(in_channels, spectral_norm=spectral_norm, pooling="mean")
            return head, None
        auxiliary = self.condition.classes if self.auxiliary_weight > 0 else 0
        network = Discriminator(
            self.info.image_size, hidden, spectral_norm=spectral_norm,
            auxiliary_classes=auxiliary, **self.conditioning(),
        )  # fmt: skip
        return GeneratorHead(self.generator), CountedDiscriminator(network)

    def find_reference(self, setting: str) -> ReferenceNetwork | None:
        """The fixed network whose features judge samples (never the run's own backbone)."""
        name = self.info.name if setting == "auto" else setting
        if setting == "none" or (setting == "auto" and not reference_path(name).is_file()):
            return None
        return load_reference(name)

    def reported_directions(self) -> dict[str, Direction]:
        if self.reference is None:
            return {}
        keys = ["fid", "kid", "precision", "recall"]
        if self.condition.kind == "class":
            keys += ["class_accuracy", "class_accuracy_real"]
        if self.condition.kind == "layout":
            keys += ["layout_miou", "layout_miou_real"]
        return {key: type(self).metric_directions[key] for key in keys}

    def players(self, tasks: dict[str, Task]) -> list[Player]:
        if not self.shared:
            assert self.discriminator is not None
            return [DiscriminatorPlayer(self, self.discriminator)]
        semantic = [
            task
            for task in tasks.values()
            if task is not self and self.condition.target is not None
            and task.target == self.condition.target
        ]  # fmt: skip
        return [GeneratorPlayer(self, semantic)]

    # --- training -----------------------------------------------------------------------

    def select_target(self, targets: dict[str, Any]) -> dict[str, Tensor]:
        selected = {"image": targets[self.target]}
        if self.condition.target is not None:
            selected["condition"] = targets[self.condition.target]
        return selected

    def generate(self, target: dict[str, Tensor], network: Generator | None = None) -> Tensor:
        """Images from fresh noise for the conditions in `target` (one per real image)."""
        network = network or self.generator
        images = target["image"]
        noise = self.draw_noise(len(images), network.noise_dim, images.device)
        return network(noise, **self.condition_arguments(target.get("condition")))

    def generate_for_generator(self, target: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """Images for the generator's step, and the mode-seeking term (None when it is off).

        Mode seeking (Mao et al., "Mode Seeking Generative Adversarial Networks for Diverse
        Image Synthesis", CVPR 2019): a quarter of the conditions are drawn a second time from
        fresh noise, in the same pass, and the term is weight / (d_img / d_z + 1e-5), with d
        the mean absolute difference between the twins' images and between their noises. It
        stops a conditional generator from drawing one image per condition whatever its
        noise, which an embedded class invites: MNIST digits with recall 0.
        """
        if self.mode_seeking == 0:
            return self.generate(target), None
        images = target["image"]
        count, extra = len(images), max(1, len(images) // 4)
        noise = self.draw_noise(count + extra, self.generator.noise_dim, images.device)
        condition = target.get("condition")
        if condition is not None:
            condition = torch.cat([condition, condition[:extra]])
        drawn = self.generator(noise, **self.condition_arguments(condition))
        image_gap = (drawn[count:] - drawn[:extra]).abs().float().mean()
        noise_gap = (noise[count:] - noise[:extra]).abs().mean()
        return drawn[:count], self.mode_seeking / (image_gap / noise_gap + 1e-5)

    def draw_noise(self, count: int, size: int, device: torch.device) -> Tensor:
        """Noise for `count` images, from the task's own random stream (saved in checkpoints).

        Training draws the noise of the whole global batch and keeps this process's rows, so
        that N data-parallel processes train exactly like one on the same global batch.
        Evaluation (the generator in eval mode, on rank 0 alone) draws from a stream of its
        own, restarted at every evaluation, so that evaluating leaves training untouched.
        """
        if not self.generator.training:
            return torch.randn(count, size, generator=self.eval_noise).to(device)
        rank, world_size = process_slot()
        rows = torch.randn(count * world_size, size, generator=self.noise)
        return rows[rank * count : (rank + 1) * count].to(device)

    def condition_arguments(self, condition: Tensor | None) -> dict[str, Tensor | None]:
        if self.condition.kind == "class":
            return {"labels": condition}
        if self.condition.kind == "layout":
            return {"layout": condition}
        return {}

    def discriminate(
        self, images: Tensor, condition: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """The own discriminator's logits and its auxiliary class logits (None without)."""
        assert self.discriminator is not None
        return self.discriminator.network.judge(images, **self.condition_arguments(condition))

    def auxiliary_loss(self, class_logits: Tensor, condition: Tensor | None) -> Tensor:
        """AC-GAN's term: the auxiliary classifier's cross-entropy against the condition
        (a class condition: the classifier exists only with one), times `auxiliary_weight`."""
        assert condition is not None
        loss = torch.nn.functional.cross_entropy(class_logits.float(), condition)
        return self.auxiliary_weight * loss

    def extra_inputs(self, target: dict[str, Tensor]) -> Tensor | None:
        """Generated images for the shared trunk to judge; on R1 steps also a copy of the real
        images that requires grad, so that `loss` can take the gradient of their logits."""
        if not self.shared:
            return None
        with torch.no_grad():
            fake = self.generate(target)
        self.penalised = None
        # The step count is the EMA's, which counts every training step taken (checkpointed).
        training = self.generator.training and torch.is_grad_enabled()
        if self.r1_gamma > 0 and training and self.ema.updates % self.r1_every == 0:
            self.penalised = target["image"].detach().clone().requires_grad_(True)
            fake = torch.cat([fake, self.penalised])
        return fake.contiguous(memory_format=torch.channels_last)

    def loss(self, output: Tensor, target: dict[str, Tensor]) -> Tensor:
        if not self.shared:  # the model trains the generator against the own discriminator
            condition = target.get("condition")
            fake, diversity = self.generate_for_generator(target)
            fake_logits, classes = self.discriminate(fake, condition)
            self.latest = {"d_fake": fake_logits.detach().float().mean()}
            loss = generator_loss(self.kind, fake_logits)
            if diversity is not None:
                self.latest["g_mode_seeking"] = diversity.detach()
                loss = loss + diversity
            if classes is not None:
                auxiliary = self.auxiliary_loss(classes, condition)
                self.latest["g_auxiliary"] = auxiliary.detach()
                loss = loss + auxiliary
            return loss
        count = len(target["image"])
        penalised = self.penalised if len(output) > 2 * count else None
        real, fake = output[:count], output[count : 2 * count]
        self.latest = {
            "d_real": real.detach().float().mean(),
            "d_fake": fake.detach().float().mean(),
        }
        loss = discriminator_loss(self.kind, real, fake)
        if penalised is not None:  # lazy R1 on the shared trunk, as on an own discriminator
            penalty = r1_penalty(output[2 * count :], penalised)
            self.latest["r1"] = penalty.detach()
            loss = loss + self.r1_gamma / 2 * self.r1_every * penalty
        return loss

    def after_step(self) -> None:
        self.ema_beside_generator()
        self.ema.update(self.generator)

    def train_scalars(self) -> dict[str, Tensor]:
        return self.latest

    def ema_beside_generator(self) -> Generator:
        """The EMA copy on the live generator's device and in its memory format (it was
        copied before the run moved the generator and made it channels-last)."""
        weight, copy = self.generator.to_rgb.weight, self.ema.module.to_rgb.weight
        channels_last = weight.is_contiguous(memory_format=torch.channels_last)
        if copy.device == weight.device and channels_last == copy.is_contiguous(
            memory_format=torch.channels_last
        ):
            return self.ema.module  # the usual case: moved once, at the first step
        self.ema.module.to(weight.device)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return self.ema.module.to(memory_format=layout)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict(), "noise": self.noise.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "noise" in state:
            self.noise.set_state(state["noise"])
        if "ema" in state:
            self.ema_beside_generator()
            self.ema.load_state_dict(state["ema"])

    # --- evaluation ---------------------------------------------------------------------

    def reset_metrics(self) -> None:
        self.eval_noise = torch.Generator().manual_seed(EVAL_SEED)
        self.seen = 0
        if self.reference is not None:
            self.quality = SampleQuality(self.reference)
        for confusion in self.judged.values():
            confusion.reset()

    @torch.no_grad()
    def update_metrics(self, output: Tensor, target: dict[str, Tensor]) -> None:
        """Samples of the EMA generator for the first `num_samples` validation images'
        conditions, compared with those images."""
        if self.quality is None or self.reference is None or self.seen >= self.num_samples:
            return
        count = min(len(target["image"]), self.num_samples - self.seen)
        self.seen += count
        real = target["image"][:count].float()
        condition = target.get("condition")
        condition = condition[:count] if condition is not None else None
        fake = self.sample(count, condition, self.eval_noise)
        self.reference.to(real.device)
        self.quality.update_real(real)
        self.quality.update_fake(fake)
        if condition is not None:
            classify = self.condition.kind == "class"
            judge = self.reference.classify if classify else self.reference.segment
            for key, images in (("fake", fake), ("real", real)):
                self.judged[key].update(judge(images).argmax(1), condition)

    def compute_metrics(self) -> dict[str, float]:
        if self.quality is None or self.seen <= 3:
            return {}
        metrics = self.quality.compute()
        fake, real = self.judged["fake"], self.judged["real"]
        if self.condition.kind == "class":
            metrics["class_accuracy"] = fake.accuracy()
            metrics["class_accuracy_real"] = real.accuracy()
        if self.condition.kind == "layout":
            metrics["layout_miou"] = fake.mean_iou()
            metrics["layout_miou_real"] = real.mean_iou()
        return metrics

    def sample(self, count: int, condition: Tensor | None, noise: torch.Generator) -> Tensor:
        """`count` images of the EMA generator from noise drawn from `noise`."""
        network = self.ema_beside_generator()
        inputs = network.sample_inputs(count, noise)
        return network(inputs, **self.condition_arguments(condition)).float()

    def pictures(
        self, images: Tensor, output: Tensor, target: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Samples from fixed noise: a grid (unconditional), one row per class (`class`), or
        layout | generated | real rows (`layout`)."""
        noise = torch.Generator().manual_seed(EVAL_SEED)
        columns = 8
        if self.condition.kind == "class":
            classes = self.condition.classes
            device = target["image"].device
            labels = torch.arange(classes, device=device).repeat_interleave(columns)
            samples = self.sample(len(labels), labels, noise)
            assert self.condition.target is not None
            names = self.info.class_names.get(self.condition.target) or [
                str(label) for label in range(classes)
            ]
            return {"samples_by_class": labelled_grid(samples, columns, names)}
        if self.condition.kind == "layout":
            layout = target["condition"]
            samples = self.sample(len(layout), layout, noise)
            rows = torch.cat(
                [colourise(layout.cpu()), samples.cpu(), target["image"].float().cpu()]
            )
            names = ["layout", "generated", "real"]
            return {"layout_generated_real": labelled_grid(rows, len(layout), names)}
        return {"samples": grid(self.sample(4 * columns, None, noise), columns)}


GRID_PADDING = 2
LABEL_FONT_SIZE = 14


def grid(images: Tensor, columns: int) -> Tensor:
    """A picture grid with tiles of at least 64 px (nearest-neighbour: pixels stay sharp),
    so that small samples read at a glance."""
    images = images.float().cpu().clamp(0, 1)
    scale = max(1, -(-64 // min(images.shape[-2:])))
    images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    return make_grid(images, nrow=columns, padding=GRID_PADDING, pad_value=1.0)


def labelled_grid(images: Tensor, columns: int, row_names: list[str]) -> Tensor:
    """`grid` with one name per row written in a white column on its left (the class a row
    was generated for, or what a row shows), so the picture reads without a legend."""
    picture = grid(images, columns)
    rows = len(row_names)
    row_height = (picture.shape[1] - GRID_PADDING) // rows - GRID_PADDING
    font = label_font(LABEL_FONT_SIZE)
    width = max(int(font.getbbox(name)[2]) for name in row_names) + 2 * GRID_PADDING + 6
    column = Image.new("RGB", (width, picture.shape[1]), "white")
    draw = ImageDraw.Draw(column)
    for row, name in enumerate(row_names):
        middle = GRID_PADDING + row * (row_height + GRID_PADDING) + row_height // 2
        draw.text((4, middle), name, fill="black", font=font, anchor="lm")
    return torch.cat([from_pil(column), picture], dim=2)


def process_slot() -> tuple[int, int]:
    """This process's rank and the number of data-parallel processes (0, 1 when alone)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def generated_rows(value: Any, start: int) -> Any:
    """A head's output for the rows from `start` on (tensors, or dicts of them)."""
    if isinstance(value, dict):
        return {key: generated_rows(item, start) for key, item in value.items()}
    return value[start:]


def check_choices(name: str, **settings: tuple[str, tuple[str, ...]]) -> None:
    for key, (value, allowed) in settings.items():
        if value not in allowed:
            raise UserError(
                f"tasks.{name}.{key} must be one of {', '.join(allowed)}, got '{value}'"
            )


def check_counts(
    name: str, n_critic: int, r1_every: int, num_samples: int, mode_seeking: float
) -> None:
    if n_critic < 1 or r1_every < 1 or num_samples < 4 or mode_seeking < 0:
        raise UserError(
            f"tasks.{name}: n_critic and r1_every must be >= 1, num_samples >= 4, mode_seeking >= 0"
        )


class GeneratorPlayer(Player):
    """The generator against a shared discriminator (the model): the adversarial term of the
    task's real/fake head plus the semantic terms of the run's heads for the condition."""

    def __init__(self, gan: GANTask, semantic: list[Task]) -> None:
        self.gan, self.semantic = gan, semantic
        self.task, self.name = gan.name, f"{gan.name}_generator"
        self.module = gan.generator
        self.settings = gan.player_settings
        self.every, self.repeats = gan.n_critic, 1

    def loss(
        self, model: ModelForward, images: Tensor, target: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        fake, diversity = self.gan.generate_for_generator(target)
        fake = fake.contiguous(memory_format=torch.channels_last)
        # Real and generated images pass through the trunk together, as in the model's step,
        # so that its BatchNorm layers judge both with the same batch statistics there and
        # here; the real half only steadies those statistics.
        _, outputs = model(torch.cat([images.detach(), fake]))
        outputs = {name: generated_rows(value, len(images)) for name, value in outputs.items()}
        fake_logits = outputs[self.gan.name]
        adversarial = generator_loss(self.gan.kind, fake_logits)
        reported = {
            "g_adversarial": adversarial.detach(),
            "d_fake_g": fake_logits.detach().float().mean(),
        }
        loss = adversarial
        if diversity is not None:
            reported["g_mode_seeking"] = diversity.detach()
            loss = loss + diversity
        for task in self.semantic:
            term = task.loss(outputs[task.name], target["condition"])
            reported[f"semantic_{task.name}"] = term.detach()
            loss = loss + self.gan.semantic_weight * term
        return loss, reported


class DiscriminatorPlayer(Player):
    """An own discriminator: its loss on real images vs the generator's, plus R1 on the real
    images every `r1_every` of its steps, scaled by `r1_every` (lazy regularisation,
    Karras et al. 2020) and `r1_gamma / 2` (Mescheder et al. 2018)."""

    module: CountedDiscriminator

    def __init__(self, gan: GANTask, discriminator: CountedDiscriminator) -> None:
        self.gan = gan
        self.task, self.name = gan.name, f"{gan.name}_discriminator"
        self.module = discriminator
        self.settings = gan.player_settings
        self.every, self.repeats = 1, gan.n_critic

    def loss(
        self, model: ModelForward, images: Tensor, target: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        gan, counter = self.gan, self.module.steps
        with torch.no_grad():
            fake = gan.generate(target)
        real = target["image"]
        regularise = gan.r1_gamma > 0 and int(counter) % gan.r1_every == 0
        if regularise:
            real = real.detach().requires_grad_(True)
        condition = target.get("condition")
        real_logits, real_classes = gan.discriminate(real, condition)
        fake_logits, fake_classes = gan.discriminate(fake, condition)
        loss = discriminator_loss(gan.kind, real_logits, fake_logits)
        reported = {
            "d_real": real_logits.detach().float().mean(),
            "d_fake": fake_logits.detach().float().mean(),
        }
        if real_classes is not None:
            # AC-GAN's L_C (Odena et al. 2017): the classifier learns the condition of real
            # and of generated images; trained on real ones alone, it gave the generator
            # no class signal it could follow (MNIST: 12% of samples in their class).
            assert fake_classes is not None  # one network judged both
            auxiliary = gan.auxiliary_loss(real_classes, condition)
            auxiliary = auxiliary + gan.auxiliary_loss(fake_classes, condition)
            reported["d_auxiliary"] = auxiliary.detach()
            loss = loss + auxiliary
        if regularise:
            penalty = r1_penalty(real_logits, real)
            reported["r1"] = penalty.detach()
            loss = loss + gan.r1_gamma / 2 * gan.r1_every * penalty
        counter += 1
        return loss, reported

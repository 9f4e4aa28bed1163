"""Section 7, GANs: a GAN step (both players) of mtlrun ÷ a bare hand-written PyTorch GAN
loop, per placement of the discriminator; and what a FID evaluation costs per 1,000 samples.

The step: two builds of `experiment=gan 'tasks=[gan]'` (same seed, so the same initial
weights) at batch 64, 32 × 32. One trains through mtlrun's own `train_epoch` (the model's
step, then `step_players`, the EMA update and logging at its defaults); the other's networks
are trained by the loop written out below, which does the same math with no runner around
it: the same networks, the same batches, the same optimizers (the model's AdamW settings for
the player inside the model, Adam on the task's TTUR settings for the second player), the
hinge loss, the lazy R1 penalty of `experiment=gan` (every `r1_every` discriminator steps, on
the real images made to require grad), `requires_grad` toggling of the other player, and the
generator's EMA. The two alternate epoch by epoch in one process; no checkpoint is timed.

FID: `SampleQuality` in the shipped shapes reference network's features
(`load_reference('shapes')`) on 1,000 generated and 1,000 real images (features, then FID,
KID and precision/recall), and, apart from it, the EMA generator drawing 1,000 images, both
in batches of the run's batch size as an evaluation does.
"""

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from mtlrun.data import DataSource
from mtlrun.engine import Run
from mtlrun.quality import SampleQuality
from mtlrun.quality.features import load_reference
from mtlrun.tasks.gan import GANTask
from speed.common import (
    PROGRESS_MODE,
    Rounds,
    Section,
    Settings,
    base_overrides,
    built_run,
    compose_config,
    format_ratio,
    median,
    now,
    verdict,
)
from speed.loops import EngineLoop, alternate

GOAL = 0.97
SPREAD_LIMIT = 1.1
NOISY = " They spread by more than 10%: the machine was busy; rerun when it is quiet."
PLACEMENTS = ("shared", "own")
BATCH_SIZE, IMAGE_SIZE = 64, 32
FID_SAMPLES = 1000
EVAL_SEED = 0


def gan_config(settings: Settings, placement: str, steps: int) -> DictConfig:
    """`experiment=gan 'tasks=[gan]'` with the discriminator at `placement`, `steps` training
    batches of 64 images of 32 × 32 per epoch and 1,000 validation images."""
    cfg = compose_config(
        [
            *base_overrides(settings),
            "experiment=gan",
            "tasks=[gan]",
            f"tasks.gan.discriminator={placement}",
            f"trainer.batch_size={BATCH_SIZE}",
            f"dataset.image_size={IMAGE_SIZE}",
        ]
    )
    cfg.dataset.train_size = steps * BATCH_SIZE
    cfg.dataset.val_size = FID_SAMPLES
    return cfg


def set_requires_grad(parameters: list[nn.Parameter], value: bool) -> None:
    for parameter in parameters:
        parameter.requires_grad_(value)


def hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1 - real.float()).mean() + F.relu(1 + fake.float()).mean()


def hinge_g(fake: Tensor) -> Tensor:
    return -fake.float().mean()


def r1(real_logits: Tensor, real: Tensor) -> Tensor:
    """E_x ||grad_x D(x)||^2, kept differentiable for D's step."""
    (gradient,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return gradient.float().square().flatten(1).sum(1).mean()


class BareGANLoop:
    """A GAN training loop as one would write it by hand, on the networks of a built run.

    shared: the discriminator is the backbone (trunk) plus the real/fake head. D step on
    cat(real, G(z) without gradients), hinge (+ lazy R1 on the real half), AdamW; then, with
    D's parameters' requires_grad
    off, the G step on cat(real, G(z')) (the real half only steadies BatchNorm), Adam.
    own: G step through the own discriminator (its requires_grad off), AdamW; then the D step
    on real and G(z') without gradients, hinge (+ lazy R1), Adam. Both: the EMA of G after
    the step.
    """

    def __init__(self, run: Run, cfg: DictConfig, data: DataSource) -> None:
        task = run.tasks["gan"]
        assert isinstance(task, GANTask)
        self.shared, self.data, self.device = task.shared, data, run.device
        self.channels_last = run.trainer.channels_last
        self.generator = task.generator
        model_optimizer: dict[str, Any] = dict(
            lr=float(cfg.optimizer.lr),
            betas=tuple(cfg.optimizer.betas),
            weight_decay=float(cfg.optimizer.weight_decay),
        )
        if self.shared:
            self.trunk, self.head = run.model.backbone, run.model.heads["gan"]
            self.d_parameters = [*self.trunk.parameters(), *self.head.parameters()]
            self.d_optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                self.d_parameters, **model_optimizer
            )
            self.g_optimizer: torch.optim.Optimizer = torch.optim.Adam(
                self.generator.parameters(), **task.player_settings
            )
        else:
            assert task.discriminator is not None
            self.discriminator = task.discriminator.network
            self.d_parameters = list(self.discriminator.parameters())
            self.g_optimizer = torch.optim.AdamW(self.generator.parameters(), **model_optimizer)
            self.d_optimizer = torch.optim.Adam(self.d_parameters, **task.player_settings)
        self.r1_gamma, self.r1_every = task.r1_gamma, task.r1_every
        self.d_steps = 0
        self.ema_decay = float(cfg.tasks.gan.ema_decay)
        self.ema_warmup = int(cfg.tasks.gan.ema_warmup)
        self.ema_updates = 0
        ema = task.ema.module.to(run.device)
        self.ema_parameters = list(ema.parameters())
        self.live_parameters = list(self.generator.parameters())
        self.ema_buffers = list(ema.buffers())
        self.live_buffers = list(self.generator.buffers())
        self.epochs_done = 0

    def fake(self, count: int) -> Tensor:
        noise = torch.randn(count, self.generator.noise_dim, device=self.device)
        return self.generator(noise)

    def step(self, real: Tensor) -> None:
        (self.step_shared if self.shared else self.step_own)(real)
        self.update_ema()

    def regularised(self, real: Tensor) -> tuple[Tensor, bool]:
        """`real`, made to require grad on the discriminator steps that take R1."""
        regularise = self.r1_gamma > 0 and self.d_steps % self.r1_every == 0
        self.d_steps += 1
        return (real.detach().requires_grad_(True), True) if regularise else (real, False)

    def with_r1(self, loss: Tensor, real_logits: Tensor, real: Tensor, regularise: bool) -> Tensor:
        if not regularise:
            return loss
        return loss + self.r1_gamma / 2 * self.r1_every * r1(real_logits, real)

    def step_shared(self, real: Tensor) -> None:
        count = len(real)
        with torch.no_grad():
            fake = self.fake(count).contiguous(memory_format=torch.channels_last)
        judged, regularise = self.regularised(real)
        logits = self.head(self.trunk(torch.cat([judged, fake])))
        d_loss = hinge_d(logits[:count], logits[count:])
        d_loss = self.with_r1(d_loss, logits[:count], judged, regularise)
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optimizer.step()
        set_requires_grad(self.d_parameters, False)
        fake = self.fake(count).contiguous(memory_format=torch.channels_last)
        logits = self.head(self.trunk(torch.cat([real, fake])))
        g_loss = hinge_g(logits[count:])
        self.g_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_optimizer.step()
        set_requires_grad(self.d_parameters, True)

    def step_own(self, real: Tensor) -> None:
        count = len(real)
        set_requires_grad(self.d_parameters, False)
        g_loss = hinge_g(self.discriminator(self.fake(count)))
        self.g_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_optimizer.step()
        set_requires_grad(self.d_parameters, True)
        with torch.no_grad():
            fake = self.fake(count)
        judged, regularise = self.regularised(real)
        real_logits = self.discriminator(judged)
        d_loss = hinge_d(real_logits, self.discriminator(fake))
        d_loss = self.with_r1(d_loss, real_logits, judged, regularise)
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optimizer.step()

    @torch.no_grad()
    def update_ema(self) -> None:
        """p_ema = decay * p_ema + (1 - decay) * p (a copy while warming up); buffers copied."""
        if self.ema_updates < self.ema_warmup:
            torch._foreach_copy_(self.ema_parameters, self.live_parameters)
        else:
            torch._foreach_mul_(self.ema_parameters, self.ema_decay)
            torch._foreach_add_(
                self.ema_parameters, torch._foreach_mul(self.live_parameters, 1 - self.ema_decay)
            )
        for average, live in zip(self.ema_buffers, self.live_buffers, strict=True):
            average.copy_(live)
        self.ema_updates += 1

    def epoch(self, limit: int | None = None) -> float:
        """One epoch of the data (or its first `limit` batches); images per second."""
        self.generator.train()
        for module in (self.trunk, self.head) if self.shared else (self.discriminator,):
            module.train()
        images = 0
        start = now(self.device)
        for index, batch in enumerate(self.data.train_batches(self.epochs_done)):
            if limit is not None and index >= limit:
                break
            real = batch["image"]
            if self.channels_last:
                real = real.contiguous(memory_format=torch.channels_last)
            self.step(real)
            images += len(real)
        finished = now(self.device)
        self.epochs_done += 1
        return images / max(finished - start, 1e-9)


def measure(settings: Settings) -> list[Section]:
    """The step rows (both placements) and the FID cost rows."""
    steps = settings.pick(3, 10)
    warm_up = settings.pick(1, 2)
    rounds = settings.pick(Rounds(2, 2, 0.0), Rounds(3, 5, 20.0))
    step_rows: dict[str, dict[str, list[float]]] = {}
    fid: dict[str, list[float]] = {}
    for placement in PLACEMENTS:
        step_rows[placement], times = measure_placement(
            settings, placement, steps, warm_up, rounds, with_fid=placement == "shared"
        )
        fid = times or fid
    return [summarise_steps(settings, steps, warm_up, step_rows), summarise_fid(settings, fid)]


def measure_placement(
    settings: Settings, placement: str, steps: int, warm_up: int, rounds: Rounds, with_fid: bool
) -> tuple[dict[str, list[float]], dict[str, list[float]] | None]:
    """mtlrun's and the bare loop's throughputs, alternating; then, if asked, the FID cost
    with the trained run's EMA generator."""
    cfg = gan_config(settings, placement, steps)
    with built_run(cfg) as run, built_run(cfg) as twin:
        engine = EngineLoop(run)
        bare = BareGANLoop(twin, cfg, run.data)
        engine.warm_up(warm_up)
        bare.epoch(limit=warm_up)
        values = alternate(
            {"mtlrun": lambda: engine.epoch().throughput, "bare": bare.epoch}, rounds
        )
        return values, measure_fid(settings, run) if with_fid else None


def chunks(total: int, size: int) -> Iterator[int]:
    for begin in range(0, total, size):
        yield min(size, total - begin)


def measure_fid(settings: Settings, run: Run) -> dict[str, list[float]]:
    """Alternate: the EMA generator sampling 1,000 images; SampleQuality on 1,000 + 1,000."""
    task = run.tasks["gan"]
    assert isinstance(task, GANTask)
    device = run.device
    reference = load_reference("shapes").to(device)
    real = torch.cat([batch["image"] for batch in run.data.val_batches()])[:FID_SAMPLES]
    sizes = list(chunks(FID_SAMPLES, BATCH_SIZE))
    times: dict[str, list[float]] = {"sampling": [], "features": [], "compute": []}
    fake_images: list[Tensor] = []

    @torch.no_grad()
    def sampling() -> float:
        noise = torch.Generator().manual_seed(EVAL_SEED)
        start = now(device)
        fake_images[:] = [task.sample(size, None, noise) for size in sizes]
        times["sampling"].append(now(device) - start)
        return times["sampling"][-1]

    def quality() -> float:
        start = now(device)
        metrics = SampleQuality(reference)
        for real_batch, fake_batch in zip(real.split(BATCH_SIZE), fake_images, strict=True):
            metrics.update_real(real_batch)
            metrics.update_fake(fake_batch)
        featured = now(device)
        metrics.compute()
        finished = now(device)
        times["features"].append(featured - start)
        times["compute"].append(finished - featured)
        return finished - start

    sampling()  # warm-up, and the images the first quality round judges
    quality()
    for values in times.values():
        values.clear()
    rounds = settings.pick(Rounds(1, 1, 0.0), Rounds(3, 5, 15.0))
    measures: dict[str, Callable[[], float]] = {"sampling": sampling, "quality": quality}
    alternate(measures, rounds)
    return times


def summarise_steps(
    settings: Settings, steps: int, warm_up: int, values: dict[str, dict[str, list[float]]]
) -> Section:
    on_cpu = settings.device.type == "cpu"
    rows: list[list[str]] = []
    data: dict[str, object] = {
        "steps_per_epoch": steps,
        "batch_size": BATCH_SIZE,
        "image_size": IMAGE_SIZE,
        "progress": PROGRESS_MODE,
        "goal": GOAL,
    }
    spreads: list[str] = []
    for placement, timed in values.items():
        mtlrun, bare = median(timed["mtlrun"]), median(timed["bare"])
        ratio = mtlrun / bare
        paired = [a / b for a, b in zip(timed["mtlrun"], timed["bare"], strict=True)]
        rows += [
            [f"{placement}: mtlrun GAN steps (img/s, median)", f"{mtlrun:.1f}", "", ""],
            [f"{placement}: bare PyTorch GAN loop (img/s, median)", f"{bare:.1f}", "", ""],
            [
                f"{placement}: mtlrun ÷ bare GAN loop",
                format_ratio(ratio),
                f"≥ {GOAL} on CPU",
                verdict(ratio >= GOAL) if on_cpu else "no goal on GPU",
            ],
        ]
        spreads.append(
            f"{placement} per-round ratios: {min(paired):.3f} .. {max(paired):.3f} "
            f"(median {median(paired):.3f})."
            + (NOISY if max(paired) > SPREAD_LIMIT * min(paired) else "")
        )
        data[placement] = {
            "mtlrun_images_per_s": timed["mtlrun"],
            "bare_images_per_s": timed["bare"],
            "ratio": ratio,
            "paired_ratios": paired,
        }
    rounds = len(next(iter(values.values()))["mtlrun"])
    notes = [
        "experiment=gan 'tasks=[gan]' (backbone cnn, weighting sum, hinge, n_critic 1, "
        f"spectral norm, EMA), shapes {IMAGE_SIZE}×{IMAGE_SIZE}, batch {BATCH_SIZE}, "
        f"{steps} GAN steps (a D and a G step each) per epoch; {rounds} alternating rounds "
        f"(A B A B ...) after {warm_up} warm-up steps each; img/s counts real images.",
        f"mtlrun: train_epoch with trainer.progress={PROGRESS_MODE} and logging at the "
        "experiment's defaults, no checkpoint. tasks.gan.discriminator=shared: the model's "
        "step is D (trunk + real/fake head), the generator is the second player; own: the "
        "model's step is G (the backbone is skipped: no head reads it), the own "
        "SNGAN discriminator is the second player.",
        "bare loop: the networks of a second build (same initial weights), same batches, "
        "AdamW/Adam on the same settings, hinge, lazy R1 at the experiment's r1_gamma and "
        "r1_every (on the real images themselves, where mtlrun's shared trunk judges a third, "
        "grad-requiring copy), requires_grad toggling, foreach EMA; fresh noise for each "
        "player's step, as mtlrun draws it.",
        *spreads,
    ]
    return Section(
        "7. GAN step: mtlrun vs a bare PyTorch GAN loop",
        ["measure", "value", "goal", "verdict"],
        rows,
        notes,
        data,
    )


def summarise_fid(settings: Settings, times: dict[str, list[float]]) -> Section:
    per_thousand = 1000 / FID_SAMPLES
    sampling = median(times["sampling"]) * per_thousand
    features = median(times["features"]) * per_thousand
    compute = median(times["compute"])
    quality = [f + c for f, c in zip(times["features"], times["compute"], strict=True)]
    rows = [
        ["EMA generator: sample 1,000 images (s, median)", f"{sampling:.3f}"],
        [
            "SampleQuality: features of 1,000 generated + 1,000 real (s, median)",
            f"{features:.3f}",
        ],
        ["SampleQuality.compute: FID, KID, precision/recall (s, median)", f"{compute:.3f}"],
        [
            "FID evaluation per 1,000 samples: features + compute (s, median)",
            f"{median(quality):.3f}",
        ],
        [
            "… with the sampling: a whole evaluation's GAN metrics (s, median)",
            f"{median(quality) + sampling:.3f}",
        ],
    ]
    notes = [
        f"on {settings.device.type}: the shipped shapes reference network "
        "(load_reference('shapes'), 128-d features), images 32×32 in batches of "
        f"{BATCH_SIZE}; FID, KID (10 subsets of 100) and precision/recall (k=3) on "
        f"{FID_SAMPLES} + {FID_SAMPLES} samples; the EMA generator of the shared-placement "
        f"run above; {len(times['sampling'])} alternating rounds after one warm-up each.",
        "real images are made beforehand (data generation is not counted).",
    ]
    data = {
        "samples": FID_SAMPLES,
        "sampling_s": times["sampling"],
        "features_s": times["features"],
        "compute_s": times["compute"],
        "quality_s": quality,
    }
    return Section("7b. FID evaluation cost", ["measure", "value"], rows, notes, data)

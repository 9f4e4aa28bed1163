"""GAN building blocks: generator and discriminator shapes, ranges and conditioning; the
adversarial losses against hand-computed values; R1; spectral norm; bf16 autocast and
channels_last; the generator EMA; and a tiny GAN that measurably learns."""

import math
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from mtlrun.errors import UserError
from mtlrun.models.adversarial_losses import (
    LOSSES,
    discriminator_loss,
    generator_loss,
    r1_penalty,
)
from mtlrun.models.ema import ModelEMA
from mtlrun.models.gan import Discriminator, Generator, RealFakeHead

NOISE = 16
CLASSES = 5
LAYOUT_CLASSES = 4
# (num_classes, layout_classes): unconditional, class-conditional, SPADE, both.
CONDITIONINGS = [(0, 0), (CLASSES, 0), (0, LAYOUT_CLASSES), (CLASSES, LAYOUT_CLASSES)]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These networks are tiny: one thread avoids OpenMP contention on a busy 2-core box
    (measured: the toy GAN ran 30x slower with two threads while other tests ran)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conditions(
    batch: int, size: tuple[int, int], num_classes: int, layout_classes: int, seed: int = 0
) -> tuple[Tensor | None, Tensor | None]:
    """Random labels and layout (with some -1 'ignore' pixels) for the given conditioning."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (batch,), generator=generator) if num_classes else None
    layout = None
    if layout_classes:
        layout = torch.randint(-1, layout_classes, (batch, *size), generator=generator)
    return labels, layout


@pytest.mark.parametrize("size", [(32, 32), (64, 64)])
@pytest.mark.parametrize(("num_classes", "layout_classes"), CONDITIONINGS)
def test_generator_and_discriminator_shapes_and_ranges(
    size: tuple[int, int], num_classes: int, layout_classes: int
) -> None:
    generator = Generator(size, NOISE, 32, num_classes, layout_classes)
    discriminator = Discriminator(size, 32, num_classes, layout_classes)
    labels, layout = conditions(3, size, num_classes, layout_classes)
    images = generator(generator.sample_inputs(3, torch.Generator().manual_seed(0)), labels, layout)
    assert images.shape == (3, 3, *size)
    assert images.min() >= 0 and images.max() <= 1
    logits = discriminator(images, labels, layout)
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def test_non_square_images() -> None:
    images = Generator((32, 48), NOISE, 32)(torch.randn(2, NOISE))
    assert images.shape == (2, 3, 32, 48)
    assert Discriminator((32, 48), 32)(images).shape == (2,)


def test_generator_rejects_sizes_not_divisible_by_8() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        Generator((30, 32))


def test_conditional_players_need_their_conditions() -> None:
    with pytest.raises(ValueError, match="labels"):
        Generator((32, 32), NOISE, 32, num_classes=CLASSES)(torch.randn(2, NOISE))
    with pytest.raises(ValueError, match="layout"):
        Generator((32, 32), NOISE, 32, layout_classes=2)(torch.randn(2, NOISE))
    with pytest.raises(ValueError, match="layout"):
        Discriminator((32, 32), 32, layout_classes=2)(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="labels"):
        Discriminator((32, 32), 32, num_classes=CLASSES)(torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("num_classes", [0, CLASSES])
def test_real_fake_head_on_a_shared_trunk(num_classes: int) -> None:
    head = RealFakeHead(24, num_classes)
    labels = torch.tensor([0, 1, 2]) if num_classes else None
    logits = head(torch.randn(3, 24, 4, 6), labels)
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def test_sample_inputs_are_reproducible() -> None:
    generator = Generator((32, 32), NOISE, 32)
    first = generator.sample_inputs(4, torch.Generator().manual_seed(7))
    second = generator.sample_inputs(4, torch.Generator().manual_seed(7))
    assert first.shape == (4, NOISE) and torch.equal(first, second)
    with pytest.raises(ValueError, match="labels"):
        generator.sample_inputs(4, torch.Generator(), labels=torch.zeros(3, dtype=torch.long))


def test_changing_only_the_label_changes_the_output() -> None:
    generator = Generator((32, 32), NOISE, 32, num_classes=CLASSES)
    # Random class gains and biases: at initialisation they are all identity transforms.
    for module in generator.modules():
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 1.0, 0.5)
    generator.eval()  # running statistics: each sample's output depends on itself only
    noise = torch.randn(2, NOISE)
    with torch.no_grad():
        before = generator(noise, torch.tensor([0, 1]))
        after = generator(noise, torch.tensor([3, 1]))
    assert (before[0] - after[0]).abs().max() > 1e-3
    torch.testing.assert_close(before[1], after[1])


def test_an_untrained_generator_already_draws_each_class_differently() -> None:
    # The class embedding concatenated to the noise gives the class a say from the first
    # step; class-conditional BatchNorm alone starts as the same transform for every class.
    generator = Generator((32, 32), NOISE, 32, num_classes=CLASSES).eval()
    noise = torch.randn(1, NOISE).expand(CLASSES, -1)
    with torch.no_grad():
        images = generator(noise, torch.arange(CLASSES))
    gaps = (images[:, None] - images[None]).abs().flatten(2).amax(2)
    assert gaps[~torch.eye(CLASSES, dtype=torch.bool)].min() > 1e-3
    generator.class_embedding = None  # the BatchNorm path alone: one image for every class
    generator.project = nn.Linear(NOISE, generator.project.out_features, bias=False)
    with torch.no_grad():
        images = generator(noise, torch.arange(CLASSES))
    torch.testing.assert_close(images, images[:1].expand_as(images))


def test_changing_only_the_layout_changes_the_output() -> None:
    generator = Generator((32, 32), NOISE, 32, layout_classes=LAYOUT_CLASSES).eval()
    noise = torch.randn(2, NOISE)
    layout = torch.zeros(2, 32, 32, dtype=torch.long)
    changed = layout.clone()
    changed[0, :16] = 2
    with torch.no_grad():
        before, after = generator(noise, layout=layout), generator(noise, layout=changed)
    assert (before[0] - after[0]).abs().max() > 1e-3
    torch.testing.assert_close(before[1], after[1])
    # -1 (ignore) is drawn as the background class 0.
    with torch.no_grad():
        ignored = generator(noise, layout=torch.full_like(layout, -1))
    torch.testing.assert_close(ignored, before)


REAL = torch.tensor([2.0, -2.0])
FAKE = torch.tensor([-2.0, 2.0])


def softplus(value: float) -> float:
    return math.log1p(math.exp(value))


# Hand-computed with REAL = (2, -2) and FAKE = (-2, 2).
EXPECTED = {
    # D: mean(relu(1-2), relu(1+2)) + mean(relu(1-2), relu(1+2)) = 1.5 + 1.5; G: -mean(-2, 2).
    "hinge": (3.0, 0.0),
    # D: mean(sp(-2), sp(2)) + mean(sp(-2), sp(2)); G: mean(sp(2), sp(-2)).
    "nonsaturating": (softplus(-2) + softplus(2), (softplus(2) + softplus(-2)) / 2),
    # D: 0.5 * mean(1, 9) + 0.5 * mean(4, 4) = 2.5 + 2; G: 0.5 * mean(9, 1).
    "least_squares": (4.5, 2.5),
}


@pytest.mark.parametrize("kind", LOSSES)
def test_losses_equal_hand_computed_values(kind: str) -> None:
    d_expected, g_expected = EXPECTED[kind]
    assert discriminator_loss(kind, REAL, FAKE).item() == pytest.approx(d_expected, abs=1e-6)
    assert generator_loss(kind, FAKE).item() == pytest.approx(g_expected, abs=1e-6)


@pytest.mark.parametrize("kind", LOSSES)
def test_losses_push_real_logits_up_and_fake_logits_down(kind: str) -> None:
    # At an undecided 0.5, where every loss has a non-zero slope (least squares' fake
    # target is 0, so 0 itself would be flat there).
    real = torch.full((4,), 0.5, requires_grad=True)
    fake = torch.full((4,), 0.5, requires_grad=True)
    discriminator_loss(kind, real, fake).backward()
    # Descent raises real logits and lowers fake ones: D's loss falls as they separate.
    assert (real.grad < 0).all() and (fake.grad > 0).all()
    fake_for_generator = torch.full((4,), 0.5, requires_grad=True)
    generator_loss(kind, fake_for_generator).backward()
    assert (fake_for_generator.grad < 0).all()
    separated = discriminator_loss(kind, torch.ones(4), torch.zeros(4))
    assert separated < discriminator_loss(kind, real.detach(), fake.detach())


@pytest.mark.parametrize("kind", LOSSES)
def test_losses_are_float32_under_bf16_logits(kind: str) -> None:
    real, fake = REAL.bfloat16(), FAKE.bfloat16()
    assert discriminator_loss(kind, real, fake).dtype == torch.float32
    assert generator_loss(kind, fake).dtype == torch.float32


def test_unknown_loss_is_a_one_line_user_error() -> None:
    with pytest.raises(UserError) as raised:
        discriminator_loss("wasserstein", REAL, FAKE)
    message = str(raised.value)
    assert "\n" not in message and all(kind in message for kind in LOSSES)
    with pytest.raises(UserError):
        generator_loss("wasserstein", FAKE)


def test_r1_of_a_linear_discriminator_is_the_squared_weight_norm() -> None:
    weight = torch.randn(3 * 4 * 4, requires_grad=True)
    images = torch.rand(5, 3, 4, 4, requires_grad=True)
    logits = images.flatten(1) @ weight  # D(x) = w . x, so grad_x D = w for every image
    penalty = r1_penalty(logits, images)
    assert penalty.item() == pytest.approx(weight.square().sum().item(), rel=1e-5)
    penalty.backward()  # create_graph: the penalty trains D; d||w||^2/dw = 2w
    torch.testing.assert_close(weight.grad, 2 * weight.detach())


def spectral_norms(module: nn.Module) -> list[float]:
    """Largest singular value of every parametrized weight, reshaped to [out, -1]."""
    return [
        torch.linalg.matrix_norm(child.weight.detach().flatten(1), ord=2).item()
        for child in module.modules()
        if parametrize.is_parametrized(child, "weight")
    ]


def test_spectral_norm_bounds_every_discriminator_weight() -> None:
    torch.manual_seed(0)
    discriminator = Discriminator((32, 32), 32, num_classes=CLASSES).train()
    images, labels = torch.rand(1, 3, 32, 32), torch.tensor([4])
    with torch.no_grad():
        for _ in range(30):  # each training forward pass runs one power iteration
            discriminator(images, labels)
    norms = spectral_norms(discriminator)
    # Every conv, the linear layer and the embedding. Power iteration approaches sigma from
    # below, so the normalised weight's norm is at least 1; after 15 (at construction) + 30
    # iterations it stayed under 1.04 for 30 seeds.
    assert len(norms) == 10
    assert all(0.999 < norm < 1.05 for norm in norms), norms
    assert spectral_norms(Discriminator((32, 32), 32, spectral_norm=False)) == []


@pytest.mark.parametrize(("num_classes", "layout_classes"), CONDITIONINGS)
def test_bf16_autocast_and_channels_last(num_classes: int, layout_classes: int) -> None:
    generator = Generator((32, 32), NOISE, 32, num_classes, layout_classes)
    discriminator = Discriminator((32, 32), 32, num_classes, layout_classes)
    generator.to(memory_format=torch.channels_last)
    discriminator.to(memory_format=torch.channels_last)
    labels, layout = conditions(2, (32, 32), num_classes, layout_classes)
    real = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    real.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = generator(torch.randn(2, NOISE), labels, layout)
        real_logits = discriminator(real, labels, layout)
        d_loss = discriminator_loss("hinge", real_logits, discriminator(fake, labels, layout))
        d_loss = d_loss + r1_penalty(real_logits, real)
    d_loss.backward()
    assert torch.isfinite(d_loss)
    for network in (generator, discriminator):
        for parameter in network.parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all()


def real_halves(count: int, generator: torch.Generator) -> Tensor:
    """8x8 images whose left half is bright (0.8) and right half dark (0.2), plus noise."""
    images = torch.full((count, 3, 8, 8), 0.2)
    images[..., :4] = 0.8
    return (images + 0.05 * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def left_minus_right(images: Tensor) -> float:
    return (images[..., :4].mean() - images[..., 4:].mean()).item()


def test_a_tiny_gan_learns_the_bright_left_half() -> None:
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(0)
    generator, discriminator = Generator((8, 8), 8, 16), Discriminator((8, 8), 16)
    g_optimizer = torch.optim.Adam(generator.parameters(), 1e-3, betas=(0.5, 0.999))
    d_optimizer = torch.optim.Adam(discriminator.parameters(), 1e-3, betas=(0.5, 0.999))
    fixed_noise = generator.sample_inputs(256, data)
    with torch.no_grad():
        assert abs(left_minus_right(generator.eval()(fixed_noise))) < 0.1
    generator.train()
    for _ in range(200):
        fake = generator(torch.randn(32, 8, generator=data))
        real_logits = discriminator(real_halves(32, data))
        d_loss = discriminator_loss("hinge", real_logits, discriminator(fake.detach()))
        d_optimizer.zero_grad()
        d_loss.backward()
        d_optimizer.step()
        g_loss = generator_loss("hinge", discriminator(fake))
        g_optimizer.zero_grad()
        g_loss.backward()
        g_optimizer.step()
    with torch.no_grad():
        learned = left_minus_right(generator.eval()(fixed_noise))
    target = left_minus_right(real_halves(256, data))  # about 0.6
    assert abs(learned - target) < 0.15, (learned, target)


def test_ema_update_is_the_formula_exactly() -> None:
    live = nn.Linear(4, 3)
    ema = ModelEMA(live, decay=0.9)
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        live.weight.add_(torch.randn_like(live.weight))
    ema.update(live)
    assert torch.equal(ema.module.weight, 0.9 * before + (1 - 0.9) * live.weight.detach())
    assert ema.updates == 1 and not ema.module.weight.requires_grad
    assert not ema.module.training


def test_ema_warmup_copies_then_averages_and_copies_buffers() -> None:
    live = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = ModelEMA(live, decay=0.5, warmup_steps=2)
    for _ in range(2):
        with torch.no_grad():
            live[0].weight.add_(1.0)
        live(torch.randn(8, 4))  # moves the BatchNorm's running statistics
        ema.update(live)
        assert torch.equal(ema.module[0].weight, live[0].weight)
        assert torch.equal(ema.module[1].running_mean, live[1].running_mean)
    with torch.no_grad():
        live[0].weight.add_(1.0)
    ema.update(live)
    torch.testing.assert_close(ema.module[0].weight, live[0].weight - 0.5)


def test_ema_state_dict_round_trips() -> None:
    live = Generator((8, 8), 8, 16)
    ema = ModelEMA(live, decay=0.5)
    with torch.no_grad():
        for parameter in live.parameters():
            parameter.add_(1.0)
    ema.update(live)
    restored = ModelEMA(Generator((8, 8), 8, 16), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1
    for (name, mine), theirs in zip(
        restored.module.state_dict().items(), ema.module.state_dict().values(), strict=True
    ):
        assert torch.equal(mine, theirs), name


def test_ema_of_a_spectral_norm_discriminator_runs() -> None:
    live = Discriminator((32, 32), 32, num_classes=CLASSES)
    ema = ModelEMA(live, decay=0.99)
    images, labels = torch.rand(2, 3, 32, 32), torch.tensor([1, 2])
    live(images, labels).sum().backward()  # a training pass moves the power-iteration vectors
    ema.update(live)
    assert spectral_norms(ema.module)  # the parametrizations came along with the deepcopy
    with torch.no_grad():
        logits = ema.module(images, labels)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    # The copy is independent: its weights do not alias the live ones.
    live_original = live.trunk[0].parametrizations.weight.original
    ema_original = ema.module.trunk[0].parametrizations.weight.original
    assert live_original.data_ptr() != ema_original.data_ptr()


def test_the_auxiliary_classifier_reads_the_same_pass() -> None:
    """`judge` gives the real/fake logits `forward` gives, plus class logits from the same
    features; without auxiliary classes there are none."""
    torch.manual_seed(0)
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    plain = Discriminator((32, 32), 32, num_classes=CLASSES).eval()
    assert plain.judge(images, labels)[1] is None
    discriminator = Discriminator((32, 32), 32, num_classes=CLASSES, auxiliary_classes=CLASSES)
    discriminator.eval()
    logits, classes = discriminator.judge(images, labels)
    assert classes is not None and classes.shape == (4, CLASSES)
    assert torch.equal(logits, discriminator(images, labels))
    assert classes.std(dim=0).gt(0).all()  # it reads each image, not a constant
    assert any("classifier" in name for name, _ in discriminator.named_parameters())

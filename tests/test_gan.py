"""The GAN task in the loop: each player's step leaves the other untouched (bit-exact),
checkpoints hold both players, both optimizers and the EMA copy and resume exactly, a
non-finite step skips both players, and bad settings are one line."""

from pathlib import Path

import pytest
import torch

from mtlrun.engine import fit, forward_losses, prepare_images, step_players, update
from mtlrun.errors import UserError
from mtlrun.players import frozen
from mtlrun.run import Progress, Run
from mtlrun.tasks.gan import GANTask
from mtlrun.weighting import StepContext

GAN = (
    "tasks.gan.quality_features=none",
    "tasks.gan.hidden=32",
    "tasks.gan.discriminator_hidden=16",
)
SHARED = ("tasks=[cls,seg,gan]", *GAN)
VAE_GAN = ("tasks=[cls,gen]", "tasks.gen.adversarial=0.1", "tasks.gen.discriminator_hidden=16")
OWN = (
    "tasks=[cls,gan]",
    "tasks.gan.discriminator=own",
    "tasks.gan.r1_gamma=1",
    "tasks.gan.r1_every=1",
    *GAN,
)


def snapshot(module: torch.nn.Module, buffers: bool = False) -> dict[str, torch.Tensor]:
    """Parameters (and buffers if asked) as copies: a step of one player may move the
    other's BatchNorm statistics (it runs it), never its parameters."""
    items = module.state_dict() if buffers else dict(module.named_parameters())
    return {key: value.detach().clone() for key, value in items.items()}


def same(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    now = module.state_dict()
    return all(torch.equal(value, now[key]) for key, value in before.items())


def first_batch(run: Run) -> tuple[torch.Tensor, dict]:
    batch = next(iter(run.data.train_batches(0)))
    targets = {name: task.select_target(batch["targets"]) for name, task in run.tasks.items()}
    return prepare_images(batch["image"], run.trainer), targets


def model_step(run: Run, images: torch.Tensor, targets: dict) -> None:
    with frozen([player.module for player in run.players]):
        features, losses = forward_losses(run, images, targets)
    context = StepContext(run.model.shared_parameters(), features, step=0)
    update(run, losses, context)


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


@pytest.mark.parametrize("placement", [SHARED, OWN, VAE_GAN], ids=["shared", "own", "vae-gan"])
def test_each_players_step_leaves_the_other_untouched(build_tiny_run, tmp_path, placement):
    run = build_tiny_run(tmp_path, *placement)
    (player,) = run.players
    images, targets = first_batch(run)
    player_before, model_before = snapshot(player.module), snapshot(run.model)
    model_step(run, images, targets)
    assert same(player_before, player.module)  # the model step moved no player weight
    assert not same(model_before, run.model)
    assert all(p.grad is None for p in player.module.parameters())
    player_before, model_before = snapshot(player.module), snapshot(run.model)
    run.optimizer.zero_grad(set_to_none=True)
    step_players(run, Progress(), images, targets)
    assert not same(player_before, player.module)
    assert same(model_before, run.model)  # the player's step moved no model weight
    assert all(p.grad is None for p in run.model.parameters())  # nor left it a gradient
    # Each optimizer holds state for its own player's parameters only.
    player_parameters = set(player.module.parameters())
    assert set(run.player_optimizers[0].state) <= player_parameters
    assert not set(run.optimizer.state) & player_parameters


def test_shared_discriminator_trunk_sees_generated_images(build_tiny_run, tmp_path):
    run = build_tiny_run(tmp_path, *SHARED)
    images, targets = first_batch(run)
    features, _ = forward_losses(run, images, targets)
    # Real and generated images pass through the trunk together.
    assert len(features) == 2 * len(images)


def test_semantic_terms_come_from_the_runs_heads_for_the_condition(build_tiny_run, tmp_path):
    run = build_tiny_run(tmp_path, *SHARED, "tasks.gan.condition=layout")
    (player,) = run.players
    assert [task.name for task in player.semantic] == ["seg"]
    images, targets = first_batch(run)
    _, reported = player.loss(run.forward, images, targets["gan"])
    assert "semantic_seg" in reported and torch.isfinite(reported["semantic_seg"])


def finish(build_tiny_run, folder: Path, *overrides: str) -> tuple[Run, dict]:
    run = build_tiny_run(folder, *overrides)
    return run, fit(run)


@pytest.mark.slow
@pytest.mark.parametrize("placement", [SHARED, OWN], ids=["shared", "own"])
def test_resume_continues_both_players_and_the_ema_exactly(build_tiny_run, tmp_path, placement):
    settings = (*placement, "trainer.epochs=2", "tasks.gan.ema_warmup=1", "tasks.gan.n_critic=2")
    whole, whole_metrics = finish(build_tiny_run, tmp_path / "whole", *settings)
    half = tmp_path / "half"
    finish(build_tiny_run, half, *placement, "trainer.epochs=1", "tasks.gan.ema_warmup=1",
           "tasks.gan.n_critic=2")  # fmt: skip
    resumed, resumed_metrics = finish(build_tiny_run, half, *settings, f"resume={half}")
    assert resumed_metrics["step"] == whole_metrics["step"]
    for a, b in (
        (whole.model, resumed.model),
        (whole.players[0].module, resumed.players[0].module),
    ):
        assert same(snapshot(a), b)
    whole_gan, resumed_gan = whole.tasks["gan"], resumed.tasks["gan"]
    assert isinstance(whole_gan, GANTask) and isinstance(resumed_gan, GANTask)
    assert whole_gan.ema.updates == resumed_gan.ema.updates
    assert same(snapshot(whole_gan.ema.module, buffers=True), resumed_gan.ema.module)
    for a, b in zip(whole.player_optimizers, resumed.player_optimizers, strict=True):
        assert torch.equal(
            a.state_dict()["state"][0]["exp_avg"], b.state_dict()["state"][0]["exp_avg"]
        )


@pytest.mark.slow
def test_a_nonfinite_step_moves_neither_player(build_tiny_run, tmp_path, monkeypatch):
    run = build_tiny_run(tmp_path, *SHARED, "trainer.nonfinite=skip")
    gan = run.tasks["gan"]
    real_loss = GANTask.loss

    def poisoned(self, output, target):
        return real_loss(self, output, target) * float("nan")

    monkeypatch.setattr(GANTask, "loss", poisoned)
    (player,) = run.players
    model_before, player_before = snapshot(run.model), snapshot(player.module)
    ema_before = snapshot(gan.ema.module)
    fit(run)
    assert same(model_before, run.model) and same(player_before, player.module)
    assert same(ema_before, gan.ema.module)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tasks.gan.condition=class", None),
        ("tasks.gan.class_target=nothing", "condition=class needs the class-valued target"),
        ("tasks.gan.loss=wasserstein", "tasks.gan.loss must be one of hinge"),
        ("tasks.gan.discriminator=both", "tasks.gan.discriminator must be one of shared, own"),
        ("tasks.gan.n_critic=0", "n_critic and r1_every must be >= 1"),
        ("tasks.gan.mode_seeking=-1", "mode_seeking >= 0"),
        ("tasks.gan.quality_features=nowhere", "reference network weights"),
        ("tasks.gan.auxiliary_weight=1", "auxiliary_weight needs discriminator=own"),
    ],
)
def test_bad_gan_settings_are_one_line(build_tiny_run, tmp_path, override, message):
    overrides = (
        (*SHARED, override) if message is None else (*SHARED, "tasks.gan.condition=class", override)
    )
    if message is None:
        build_tiny_run(tmp_path, *overrides)  # a valid setting builds
        return
    if "quality_features" in override:
        overrides = tuple(item for item in overrides if not item.startswith("tasks.gan.quality"))
        overrides = (*overrides, override)
    with pytest.raises(UserError, match=message) as raised:
        build_tiny_run(tmp_path, *overrides)
    assert "\n" not in str(raised.value)


def test_the_vae_gan_term_adds_the_adversarial_loss_on_reconstructions(build_tiny_run, tmp_path):
    plain = build_tiny_run(tmp_path / "plain", "tasks=[gen]")
    adversarial = build_tiny_run(
        tmp_path / "adversarial", "tasks=[gen]", "tasks.gen.adversarial=0.5"
    )
    assert plain.players == [] and len(adversarial.players) == 1
    adversarial.model.load_state_dict(plain.model.state_dict(), strict=False)
    images, targets = first_batch(plain)
    task = adversarial.tasks["gen"]
    task.discriminator.eval()  # spectral norm's power iteration would move between the calls
    _, outputs = adversarial.model(images)
    mse = plain.tasks["gen"].loss(outputs["gen"], targets["gen"])
    total = task.loss(outputs["gen"], targets["gen"])
    logits = task.discriminator(outputs["gen"]["image"])
    assert torch.allclose(total, mse + 0.5 * -logits.mean())  # the hinge generator loss


def test_lazy_r1_on_the_shared_trunk_adds_the_penalty_on_its_steps(build_tiny_run, tmp_path):
    run = build_tiny_run(tmp_path, *SHARED, "tasks.gan.r1_gamma=2", "tasks.gan.r1_every=3")
    gan = run.tasks["gan"]
    images, targets = first_batch(run)
    features, losses = forward_losses(run, images, targets)  # step 0: an R1 step
    assert len(features) == 3 * len(images)  # real, generated, real again (requiring grad)
    penalty = gan.latest["r1"]
    assert penalty > 0
    hinge_part = losses["gan"] - 2 / 2 * 3 * penalty  # gamma / 2 * every * R1 on top
    assert 0 <= hinge_part.item() <= 4  # a hinge loss of logits this small lies near 2
    gan.ema.updates = 1  # not a multiple of r1_every: no penalty, no extra rows
    features, losses = forward_losses(run, images, targets)
    assert len(features) == 2 * len(images) and "r1" not in gan.latest


def test_a_shared_discriminator_refuses_a_model_that_shares_nothing(build_tiny_run, tmp_path):
    with pytest.raises(UserError, match="need a backbone shared with the other tasks") as raised:
        build_tiny_run(tmp_path, *SHARED, "model.sharing=soft")
    assert "\n" not in str(raised.value)
    build_tiny_run(tmp_path / "own", *OWN, "model.sharing=soft")  # an own one needs none


def test_conditioned_samples_are_judged_like_real_images(build_tiny_run, tmp_path, monkeypatch):
    """With samples equal to the real images, the reference network's verdict on them
    (layout mIoU, class accuracy) equals its verdict on the real ones, pooled over pixels or
    images as a segmentation or classification metric is."""
    for condition, metric in (("layout", "layout_miou"), ("class", "class_accuracy")):
        run = build_tiny_run(
            tmp_path / condition, "tasks=[gan]", "tasks.gan.quality_features=shapes",
            f"tasks.gan.condition={condition}", "tasks.gan.num_samples=8",
        )  # fmt: skip
        gan = run.tasks["gan"]
        batch = next(iter(run.data.val_batches()))
        target = gan.select_target(batch["targets"])
        images = target["image"]
        monkeypatch.setattr(gan, "sample", lambda count, _, __, images=images: images[:count])
        gan.reset_metrics()
        gan.update_metrics(torch.empty(0), target)
        metrics = gan.compute_metrics()
        assert metrics[metric] == metrics[f"{metric}_real"]
        assert 0.5 < metrics[metric] <= 1  # the shipped reference reads real shapes well


def label_column(picture: torch.Tensor, grid_width: int) -> torch.Tensor:
    """The white column left of the sample grid, where the row names are written."""
    return picture[:, :, : picture.shape[2] - grid_width]


@pytest.mark.parametrize("condition", ["class", "layout"])
def test_conditional_pictures_name_their_rows(build_tiny_run, tmp_path, condition):
    """One row per class (or layout | generated | real), each named on its left in dark
    text on white, so a reader sees which digit or shape a row was asked for."""
    run = build_tiny_run(
        tmp_path, "tasks=[gan]", *GAN, f"tasks.gan.condition={condition}",
        "trainer.monitor=val/gan/loss",
    )  # fmt: skip
    gan = run.tasks["gan"]
    batch = next(iter(run.data.val_batches()))
    target = gan.select_target(batch["targets"])
    (_, picture), *_ = gan.pictures(batch["image"], torch.empty(0), target).items()
    rows = gan.condition.classes if condition == "class" else 3
    columns = 8 if condition == "class" else len(target["image"])
    tile = 64 + 2  # 32 px samples drawn at 64 px, plus the padding
    assert picture.shape[1] == rows * tile + 2
    text = label_column(picture, columns * tile + 2)
    assert 20 < text.shape[2] < 120  # as wide as the longest name, no wider
    ink = (text < 0.5).any(dim=0)  # dark pixels: the written names
    row_ink = [ink[2 + row * tile : (row + 1) * tile].sum().item() for row in range(rows)]
    assert all(count > 5 for count in row_ink)  # every row has its name
    assert ink[:2].sum() == 0 and ink[-2:].sum() == 0  # nothing spills past the grid
    # Different names are written differently (the column is not one repeated stamp).
    first, second = (text[:, 2 + row * tile : (row + 1) * tile] for row in (0, 1))
    assert not torch.equal(first, second)


def test_the_trunk_is_skipped_only_when_no_head_reads_it(build_tiny_run, tmp_path):
    """A GAN with its own discriminator reads nothing from the backbone: alone it trains
    without running it; beside a task that reads it, the trunk runs as before."""
    for tasks, runs_trunk in (("[gan]", False), ("[cls,gan]", True)):
        run = build_tiny_run(
            tmp_path / tasks, f"tasks={tasks}", *OWN[1:], "trainer.monitor=val/gan/loss"
        )
        calls = []
        run.model.backbone.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        images, targets = first_batch(run)
        generator_before = snapshot(run.model.heads["gan"])
        model_step(run, images, targets)
        assert bool(calls) == runs_trunk
        assert not same(generator_before, run.model.heads["gan"])  # the generator still trains


def test_the_auxiliary_classifier_term_is_the_cross_entropy_of_each_side(build_tiny_run, tmp_path):
    """AC-GAN with an own discriminator: its classifier learns the condition of real and
    generated images (the discriminator's loss gains weight x the cross-entropy on each),
    and the generator is asked to make images it classifies as their condition (its loss
    gains the same term on its own images)."""
    run = build_tiny_run(
        tmp_path, *OWN, "tasks.gan.condition=class", "tasks.gan.auxiliary_weight=0.5"
    )
    gan, (player,) = run.tasks["gan"], run.players
    player.module.eval()  # spectral norm without power iterations: every pass is the same
    images, targets = first_batch(run)
    target = targets["gan"]
    labels = target["condition"]
    noise_state = gan.noise.get_state()
    _, reported = player.loss(run.forward, images, target)  # (R1 needs gradients)
    gan.noise.set_state(noise_state)
    with torch.no_grad():
        fake = gan.generate(target)
        _, real_classes = player.module.network.judge(target["image"], labels)
        _, fake_classes = player.module.network.judge(fake, labels)
    assert real_classes is not None and real_classes.shape == (len(labels), gan.condition.classes)
    assert fake_classes is not None
    cross_entropy = torch.nn.functional.cross_entropy
    expected = 0.5 * (cross_entropy(real_classes, labels) + cross_entropy(fake_classes, labels))
    torch.testing.assert_close(reported["d_auxiliary"], expected)
    # The generator's side: its adversarial loss plus the term on its images.
    with torch.no_grad():
        noise_state = gan.noise.get_state()
        generator_side = gan.loss(torch.empty(0), target)
        gan.noise.set_state(noise_state)
        fake = gan.generate(target)
        fake_logits, fake_classes = player.module.network.judge(fake, labels)
    assert fake_classes is not None
    auxiliary = 0.5 * torch.nn.functional.cross_entropy(fake_classes, labels)
    torch.testing.assert_close(gan.latest["g_auxiliary"], auxiliary)
    torch.testing.assert_close(generator_side, -fake_logits.mean() + auxiliary)


def test_reconstruction_pictures_are_titled_and_enlarged(build_tiny_run, tmp_path):
    """`gen` shows input | reconstruction under column titles, at least 96 px a tile, and
    the VAE's samples at the same size."""
    run = build_tiny_run(tmp_path, "tasks=[gen]", "tasks.gen.variant=vae")
    gen = run.tasks["gen"]
    batch = next(iter(run.data.val_batches()))
    images = batch["image"][:2]
    target = gen.select_target(batch["targets"])[:2]
    _, output = run.model(images)
    pictures = gen.pictures(images, output["gen"], target)
    columns = pictures["input_vs_reconstruction"]
    assert columns.shape[1:] == (16 + 2 * 97 + 1, 2 * 97 + 1)  # a title band, two 96 px rows
    assert (columns[:, :16] < 0.5).any()  # the titles are written
    assert pictures["samples"].shape[-1] >= 2 * 96


@pytest.mark.parametrize("placement", ["own", "shared"])
def test_mode_seeking_twins_share_conditions_and_punish_ignored_noise(
    build_tiny_run, tmp_path, placement
):
    settings = OWN if placement == "own" else SHARED
    run = build_tiny_run(
        tmp_path, *settings, "tasks.gan.condition=class", "tasks.gan.mode_seeking=2"
    )
    gan = run.tasks["gan"]
    assert isinstance(gan, GANTask)
    _, targets = first_batch(run)
    target = targets["gan"]
    count = len(target["image"])
    extra = count // 4
    drawn_noise = torch.randn(count + extra, gan.generator.noise_dim)
    gan.draw_noise = lambda total, size, device: drawn_noise[:total]  # type: ignore[method-assign]
    images, term = gan.generate_for_generator(target)
    # By hand: one pass over the batch plus its first quarter's conditions again.
    labels = torch.cat([target["condition"], target["condition"][:extra]])
    twins = gan.generator(drawn_noise, labels=labels)
    torch.testing.assert_close(images, twins[:count])
    image_gap = (twins[count:] - twins[:extra]).abs().mean()
    noise_gap = (drawn_noise[count:] - drawn_noise[:extra]).abs().mean()
    assert term is not None
    torch.testing.assert_close(term, 2 / (image_gap / noise_gap + 1e-5))
    # The term's gradient pushes the twins apart: one step on it alone widens their gap.
    optimizer = torch.optim.SGD(gan.generator.parameters(), lr=0.05)
    term.backward()
    optimizer.step()
    wider = gan.generator(drawn_noise, labels=labels)
    assert (wider[count:] - wider[:extra]).abs().mean() > image_gap
    # A generator that ignores its noise draws identical twins: the term is ~weight / 1e-5.
    with torch.no_grad():
        gan.generator.project.weight[:, : gan.generator.noise_dim] = 0
    assert gan.generate_for_generator(target)[1] > 1e4


def test_mode_seeking_is_off_by_default(build_tiny_run, tmp_path):
    run = build_tiny_run(tmp_path, *OWN)
    gan = run.tasks["gan"]
    assert isinstance(gan, GANTask)
    _, targets = first_batch(run)
    assert gan.generate_for_generator(targets["gan"])[1] is None

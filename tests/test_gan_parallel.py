"""The GAN task data-parallel (torchrun, gloo, 2 CPU processes) and under bf16 autocast.

Data-parallel: each rank draws its own rows of the global batch's noise from the task's
seeded stream, a second player's BatchNorms normalise over the global batch and evaluation
leaves the players untouched, so

- both ranks end with the same weights and buffers (model, second player, EMA) and finite,
  equal losses;
- a 2-process run equals a 1-process ddp run on the same global batches (final checkpoint),
  as tests/test_ddp.py checks for the plain model;
- the ranks' generated images differ.

This file is also the program torchrun starts for those runs (see `plant`, and the end of
the file): `python test_gan_parallel.py engine <dump folder> <mtlrun arguments ...>`.
"""

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from mtlrun import checkpoint, engine
from mtlrun.tasks.gan import GANTask
from processes import Started
from test_ddp import ARGUMENTS, TOLERANCE, TORCHRUN, assert_succeeded

RUNNER = Path(__file__)
GAN = (
    "tasks.gan.quality_features=none",
    "tasks.gan.hidden=32",
    "tasks.gan.discriminator_hidden=16",
    "tasks.gan.ema_warmup=1",  # then a true average, so the EMA is compared, not copied
    "tasks.gan.ema_decay=0.5",
)
SHARED = ("tasks=[cls,gan]", *GAN)
OWN = ("tasks=[cls,gan]", "tasks.gan.discriminator=own", "tasks.gan.r1_gamma=1",
       "tasks.gan.r1_every=2", *GAN)  # fmt: skip
SAME_ACROSS_RANKS = 1e-6


# --- the program torchrun starts --------------------------------------------------------


def plant(mode: str, dump_folder: Path) -> None:
    """Record each rank's losses, first generated images and final state (into
    `dump_folder/rank<r>.pt`); the run itself is the engine's, unchanged (`mode` "engine"),
    in float64 with `mode` "engine_float64"."""
    if mode == "engine_float64":
        torch.set_default_dtype(torch.float64)
    records: dict[str, Any] = {"losses": [], "player_losses": [], "first_fake": None}
    original_forward_losses, original_player_loss = engine.forward_losses, engine.player_loss
    original_generate, original_fit = GANTask.generate, engine.fit

    def forward_losses(run: Any, images: Any, targets: Any) -> Any:
        features, losses = original_forward_losses(run, images, targets)
        records["losses"].append({name: float(loss.detach()) for name, loss in losses.items()})
        return features, losses

    def player_loss(run: Any, player: Any, images: Any, targets: Any) -> Any:
        loss, reported = original_player_loss(run, player, images, targets)
        records["player_losses"].append(float(loss.detach()))
        return loss, reported

    def generate(self: GANTask, target: dict, network: Any = None) -> torch.Tensor:
        fake = original_generate(self, target, network)
        if records["first_fake"] is None:
            records["first_fake"] = fake.detach().float().cpu().clone()
        return fake

    def fit(run: Any) -> Any:
        try:
            return original_fit(run)
        finally:
            gan = run.tasks["gan"]
            state = {
                "buffers": {
                    "model": [name for name, _ in run.model.named_buffers()],
                    "player": [name for name, _ in run.players[0].module.named_buffers()],
                    "ema": [name for name, _ in gan.ema.module.named_buffers()],
                },
                "model": run.model.state_dict(),
                "player": run.players[0].module.state_dict(),
                "ema": gan.ema.module.state_dict(),
                **records,
            }
            state = {key: detached(value) for key, value in state.items()}
            torch.save(state, dump_folder / f"rank{run.distributed.rank}.pt")

    engine.forward_losses, engine.player_loss, engine.fit = forward_losses, player_loss, fit
    GANTask.generate = generate  # type: ignore[method-assign]


def detached(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: detached(item) for key, item in value.items()}
    if isinstance(value, list):
        return [detached(item) for item in value]
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value


# --- launching and comparing ------------------------------------------------------------


def start(folder: Path, processes: int, mode: str, *overrides: str) -> Started:
    """`mtlrun trainer.strategy=ddp` under torchrun with `processes` processes (1 or 2), on
    tests/test_ddp.py's arguments (4 SGD steps of a global batch of 8, contiguous memory)."""
    folder.mkdir(parents=True, exist_ok=True)
    launcher = (*TORCHRUN[:-1], f"--nproc_per_node={processes}", str(RUNNER), mode, str(folder))
    return Started(
        [*launcher, *ARGUMENTS, "trainer.strategy=ddp", *overrides,
         f"hydra.run.dir={folder / 'run'}"],
        folder,
    )  # fmt: skip


def saved_state(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The final checkpoint's model, second player and EMA generator."""
    saved = checkpoint.load(folder / "run" / "checkpoints" / "last.pt")
    return {
        "model": saved["model"],
        "player": saved["players"][0]["module"],
        "ema": saved["tasks"]["gan"]["ema"]["module"],
    }


def largest_differences(
    expected: dict[str, dict[str, torch.Tensor]], got: dict[str, dict[str, torch.Tensor]]
) -> dict[str, tuple[float, str]]:
    """Per part: the largest absolute difference over its tensors, and where it is."""
    worst: dict[str, tuple[float, str]] = {}
    for part in ("model", "player", "ema"):
        assert expected[part].keys() == got[part].keys(), part
        differences = [
            ((expected[part][key].double() - got[part][key].double()).abs().max().item(), key)
            for key in expected[part]
            if expected[part][key].numel()
        ]
        worst[part] = max(differences)
    return worst


def finite_state(state: dict[str, dict[str, torch.Tensor]]) -> bool:
    return all(
        torch.isfinite(tensor.double()).all()
        for part in ("model", "player", "ema")
        for tensor in state[part].values()
    )


# Each 2-process run of the unchanged engine is shared by the tests that read it.
RANK_RUNS: dict[str, list[dict[str, Any]]] = {}
PLACEMENTS = {
    "shared_class": (*SHARED, "tasks.gan.condition=class"),
    "own_r1": OWN,
    "shared": SHARED,
}


def two_ranks(tmp_path_factory: pytest.TempPathFactory, name: str) -> list[dict[str, Any]]:
    """Each rank's dump after a 2-process run of the engine as it is, with `PLACEMENTS[name]`."""
    if name not in RANK_RUNS:
        folder = tmp_path_factory.mktemp(f"ranks-{name}")
        assert_succeeded(start(folder, 2, "engine", *PLACEMENTS[name]).finish())
        RANK_RUNS[name] = [
            torch.load(folder / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)
        ]
    return RANK_RUNS[name]


def rank_differences(dumps: list[dict[str, Any]], buffers: bool) -> dict[str, float]:
    """`part key` -> how far apart the ranks end, over parameters (or over buffers)."""
    rank0, rank1 = dumps
    apart = {}
    for part in ("model", "player", "ema"):
        assert rank0[part].keys() == rank1[part].keys()
        for key, value in rank0[part].items():
            if (key in rank0["buffers"][part]) == buffers:
                difference = (value.double() - rank1[part][key].double()).abs().max().item()
                apart[f"{part} {key}"] = difference
    return apart


# --- data-parallel ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shared_class", "own_r1"])
def test_ranks_end_with_the_same_weights_and_finite_losses(tmp_path_factory, name: str) -> None:
    dumps = two_ranks(tmp_path_factory, name)
    apart = rank_differences(dumps, buffers=False)
    assert max(apart.values()) <= SAME_ACROSS_RANKS, max(apart.items(), key=lambda kv: kv[1])
    model_buffers = {key: value for key, value in rank_differences(dumps, buffers=True).items()
                     if key.startswith("model ")}  # fmt: skip
    assert max(model_buffers.values()) <= SAME_ACROSS_RANKS  # BatchNorms synchronised
    for dump in dumps:
        assert finite_state(dump)
        assert len(dump["losses"]) == 4 and len(dump["player_losses"]) == 4
        assert all(math.isfinite(value) for step in dump["losses"] for value in step.values())
        assert all(math.isfinite(value) for value in dump["player_losses"])
    assert dumps[0]["losses"] == dumps[1]["losses"]  # global means, alike on every rank


@pytest.mark.slow
@pytest.mark.parametrize("name", ["shared_class", "own_r1"])
def test_ranks_end_with_the_same_player_buffers(tmp_path_factory, name: str) -> None:
    """Evaluation (rank 0 alone) puts the players in eval mode, and a generator that is a
    second player normalises over the global batch, so no buffer drifts between ranks."""
    apart = rank_differences(two_ranks(tmp_path_factory, name), buffers=True)
    assert max(apart.values()) <= SAME_ACROSS_RANKS, max(apart.items(), key=lambda kv: kv[1])


@pytest.mark.slow
def test_ranks_draw_different_noise(tmp_path_factory) -> None:
    """Each rank generates its own rows of the global batch's noise."""
    rank0, rank1 = two_ranks(tmp_path_factory, "shared")
    assert not torch.equal(rank0["first_fake"], rank1["first_fake"])


@pytest.mark.parametrize("placement", [SHARED, OWN], ids=["shared", "own"])
def test_evaluation_leaves_the_players_as_they_were(build_tiny_run, tmp_path, placement) -> None:
    """Evaluating changes no player's state, so how often a run evaluates does not change
    how it trains."""
    run = build_tiny_run(tmp_path, *placement)
    (player,) = run.players
    gan = run.tasks["gan"]
    before = {key: value.clone() for key, value in player.module.state_dict().items()}
    noise_before = gan.noise.get_state()
    engine.evaluate(run, 0)
    now = player.module.state_dict()
    changed = [key for key, value in before.items() if not torch.equal(value, now[key])]
    assert not changed
    assert torch.equal(noise_before, gan.noise.get_state())  # the training noise stream too
    assert player.module.training  # and the player is back in training mode


# The shared discriminator is compared in float64. In float32 the two runs drift apart from
# the second step on (1e-3 relative in the trunk's gradients, then Adam turns the generator's
# near-zero gradients into whole ±lr steps: 4e-4 after 4 steps), because the discriminator's
# gradient there is a small difference of the real and the generated rows' large terms, and
# summing 4 + 4 rows per rank rounds differently from summing 8. In float64 the same runs
# agree to 1e-14: the data-parallel computation is exact, float32 only cannot show it.
# The own discriminator has no such cancellation and is compared in float32.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("placement", "mode"),
    [
        pytest.param(SHARED, "engine_float64", id="shared_float64"),
        pytest.param(OWN, "engine", id="own"),
    ],
)
def test_two_processes_train_the_gan_like_one(
    tmp_path: Path, placement: tuple[str, ...], mode: str
) -> None:
    single = start(tmp_path / "single", 1, mode, *placement)
    ddp = start(tmp_path / "ddp", 2, mode, *placement)
    assert_succeeded(single.finish())
    assert_succeeded(ddp.finish())
    expected, got = saved_state(tmp_path / "single"), saved_state(tmp_path / "ddp")
    assert finite_state(expected) and finite_state(got)
    worst = largest_differences(expected, got)
    assert all(value <= TOLERANCE for value, _ in worst.values()), worst


# --- bf16 autocast --------------------------------------------------------------------------


def recording_losses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every model and player loss the loop computes from now on."""
    seen: list[float] = []

    def wrap(original: Callable[..., Any], pick: Callable[[Any], list[Any]]) -> Callable:
        def wrapped(*args: Any) -> Any:
            result = original(*args)
            seen.extend(float(value.detach()) for value in pick(result))
            return result

        return wrapped

    monkeypatch.setattr(
        engine, "forward_losses", wrap(engine.forward_losses, lambda out: list(out[1].values()))
    )
    monkeypatch.setattr(engine, "player_loss", wrap(engine.player_loss, lambda out: [out[0]]))
    return seen  # fmt: skip


def finite_module(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(value.double()).all() for value in module.state_dict().values())


@pytest.mark.slow
@pytest.mark.parametrize(
    "placement",
    [(*SHARED, "tasks.gan.condition=class"), OWN],
    ids=["shared_class", "own_r1"],
)
def test_amp_gan_trains_finite_and_resumes(
    build_tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, placement
) -> None:
    amp = (*placement, "trainer.amp=true", "tasks.gan.r1_every=1")
    losses = recording_losses(monkeypatch)
    folder = tmp_path / "run"
    first = build_tiny_run(folder, *amp)
    first_metrics = engine.fit(first)
    assert first_metrics["step"] == 2
    assert len(losses) == 2 * (2 + 1)  # per step: cls and gan, then the player
    assert all(math.isfinite(value) for value in losses)
    gan = first.tasks["gan"]
    assert isinstance(gan, GANTask)
    for module in (first.model, first.players[0].module, gan.ema.module):
        assert finite_module(module)
    assert all(math.isfinite(value) for value in first_metrics.values() if
               isinstance(value, float))  # fmt: skip
    resumed = build_tiny_run(folder, *amp, "trainer.epochs=2", f"resume={folder}")
    resumed_metrics = engine.fit(resumed)
    assert resumed_metrics["step"] == 4
    assert len(losses) == 4 * 3 and all(math.isfinite(value) for value in losses)
    whole = build_tiny_run(tmp_path / "whole", *amp, "trainer.epochs=2")
    engine.fit(whole)
    # The resumed run continues exactly where the uninterrupted one went.
    whole_gan, resumed_gan = whole.tasks["gan"], resumed.tasks["gan"]
    assert isinstance(whole_gan, GANTask) and isinstance(resumed_gan, GANTask)
    assert resumed_gan.ema.updates == whole_gan.ema.updates == 4
    for a, b in (
        (whole.model, resumed.model),
        (whole.players[0].module, resumed.players[0].module),
        (whole_gan.ema.module, resumed_gan.ema.module),
    ):
        assert finite_module(b)
        expected, got = a.state_dict(), b.state_dict()
        assert all(torch.equal(expected[key], got[key]) for key in expected)


if __name__ == "__main__":
    runner_mode, dump, *arguments = sys.argv[1:]
    plant(runner_mode, Path(dump))
    from mtlrun import cli

    sys.argv = ["mtlrun", *arguments]
    cli.main()

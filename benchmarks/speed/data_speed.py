"""Section 2, data: `shapes` generation throughput, and the loop's time waiting for data."""

import torch
from hydra.utils import instantiate

from mtlrun.data.shapes import ShapesData
from speed.common import (
    Rounds,
    Section,
    Settings,
    base_overrides,
    built_run,
    compose_config,
    median,
    now,
    verdict,
)
from speed.loops import EngineLoop, TimedData, alternate

GENERATION_BATCH = 256
SIZES = (32, 64)
WAIT_GOAL = 0.05


def measure(settings: Settings) -> Section:
    rates = generation_rates(settings)
    waits, steps = wait_share(settings)
    share = sum(waits) / sum(steps)
    rows = [
        [
            f"shapes generation {size}×{size} (img/s, median)",
            f"{median(rates[str(size)]):,.0f}",
            "",
            "",
        ]
        for size in SIZES
    ]
    rows.append(
        [
            "time in the batch iterator's next ÷ step time (real loop)",
            f"{100 * share:.1f}%",
            f"≤ {100 * WAIT_GOAL:.0f}%",
            verdict(share <= WAIT_GOAL),
        ]
    )
    notes = [
        f"generation: ShapesData.generate on batches of {GENERATION_BATCH} on "
        f"{settings.device.type}, the sizes alternating, after 2 warm-up batches each.",
        f"waiting: {len(steps)} steps of the default run (batch 64, 32×32, tasks cls,seg,gen) "
        "through mtlrun's train_epoch; the time inside next() includes generating the batch"
        + (
            " (clocks synchronise the GPU at every step)."
            if settings.device.type == "cuda"
            else "."
        ),
    ]
    data = {
        "generation_images_per_s": rates,
        "wait_s": waits,
        "step_s": steps,
        "wait_share": share,
        "wait_goal": WAIT_GOAL,
    }
    return Section("2. Data", ["measure", "value", "goal", "verdict"], rows, notes, data)


def generation_rates(settings: Settings) -> dict[str, list[float]]:
    """Images per second of `generate` at each size, one batch per measurement."""
    measures = {str(size): generator(settings, size) for size in SIZES}
    for measure in measures.values():  # warm-up
        measure()
        measure()
    rounds = settings.pick(Rounds(3, 3, 0.0), Rounds(5, 40, 8.0))
    return alternate(measures, rounds)


def generator(settings: Settings, size: int) -> "GenerationTimer":
    cfg = compose_config([*base_overrides(settings), f"dataset.image_size={size}"])
    data: ShapesData = instantiate(cfg.dataset)(
        batch_size=GENERATION_BATCH, shuffle_seed=0, device=settings.device
    )
    return GenerationTimer(data, settings.device)


class GenerationTimer:
    """Generates the next batch of training indices each call; returns images per second."""

    def __init__(self, data: ShapesData, device: torch.device) -> None:
        self.data, self.device, self.calls = data, device, 0

    def __call__(self) -> float:
        begin = self.calls * GENERATION_BATCH
        indices = torch.arange(begin, begin + GENERATION_BATCH, device=self.device)
        self.calls += 1
        start = now(self.device)
        self.data.generate("train", indices)
        return GENERATION_BATCH / (now(self.device) - start)


def wait_share(settings: Settings) -> tuple[list[float], list[float]]:
    """Per-step (wait, step) seconds of the real loop, after a short warm-up."""
    steps = settings.pick(6, 24)
    cfg = compose_config(base_overrides(settings))
    cfg.dataset.train_size = steps * int(cfg.trainer.batch_size)
    with built_run(cfg) as run:
        engine = EngineLoop(run)
        engine.warm_up(2)
        timed = TimedData(run.data, run.device)
        engine.timed_epoch(timed)
    return timed.waits, timed.steps

"""Section 1, runner overhead: mtlrun's training throughput ÷ a bare PyTorch loop's.

Both train the same architecture (two builds of the default config with the same seed) on
the same batches, in the same process, in alternating epochs. mtlrun's epoch is the real
engine's `train_epoch` plus `save_checkpoints`, with logging at its defaults.
"""

from omegaconf import DictConfig

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
    verdict,
)
from speed.loops import BareLoop, EngineLoop, alternate

GOAL = 0.97
SPREAD_LIMIT = 1.1
NOISY = " They spread by more than 10%: the machine was busy; rerun when it is quiet."


def measure(settings: Settings) -> Section:
    """Alternate mtlrun epochs and bare-loop epochs; compare their median throughputs."""
    steps = settings.pick(8, 40)
    warm_up = settings.pick(2, 4)
    rounds = settings.pick(Rounds(2, 2, 0.0), Rounds(3, 7, 120.0))
    cfg = compose_config(base_overrides(settings))
    cfg.dataset.train_size = steps * int(cfg.trainer.batch_size)
    checkpoint_shares: list[float] = []
    with built_run(cfg) as run, built_run(cfg) as twin:
        engine = EngineLoop(run)
        bare = BareLoop.from_run(twin, run.data, cfg)
        engine.warm_up(warm_up)
        bare.epoch(limit=warm_up)

        def engine_epoch() -> float:
            timing = engine.epoch(checkpoint=True)
            checkpoint_shares.append(timing.checkpoint_s / (timing.train_s + timing.checkpoint_s))
            return timing.throughput

        values = alternate(
            {"mtlrun": engine_epoch, "bare": lambda: bare.epoch().throughput}, rounds
        )
    return summarise(settings, cfg, values, checkpoint_shares, warm_up)


def summarise(
    settings: Settings,
    cfg: DictConfig,
    values: dict[str, list[float]],
    checkpoint_shares: list[float],
    warm_up: int,
) -> Section:
    mtlrun, bare = median(values["mtlrun"]), median(values["bare"])
    ratio = mtlrun / bare
    paired = [a / b for a, b in zip(values["mtlrun"], values["bare"], strict=True)]
    on_cpu = settings.device.type == "cpu"
    size, batch = int(cfg.dataset.image_size), int(cfg.trainer.batch_size)
    steps = int(cfg.dataset.train_size) // batch
    rows = [
        ["mtlrun throughput (img/s, median)", f"{mtlrun:.1f}", "", ""],
        ["bare PyTorch loop throughput (img/s, median)", f"{bare:.1f}", "", ""],
        [
            "mtlrun ÷ bare loop",
            format_ratio(ratio),
            f"≥ {GOAL} on CPU",
            verdict(ratio >= GOAL) if on_cpu else "no goal on GPU",
        ],
        [
            "checkpoint share of an mtlrun epoch (median)",
            f"{100 * median(checkpoint_shares):.1f}%",
            "",
            "",
        ],
    ]
    notes = [
        f"backbone {cfg.backbone._target_.rsplit('.', 1)[-1]}, tasks {','.join(cfg.tasks)}, "
        f"weighting sum, shapes {size}×{size}, batch {batch}, {steps} steps per epoch; "
        f"{len(paired)} alternating rounds (A B A B ...) after {warm_up} warm-up steps each.",
        f"mtlrun: trainer.progress={PROGRESS_MODE}, TensorBoard logging every "
        f"{cfg.trainer.log_every_n_steps} steps, a checkpoint per epoch (timed with the epoch).",
        "bare loop: same architecture and initial weights, same batches, channels_last="
        f"{cfg.trainer.channels_last}, AdamW; forward -> sum of losses -> backward -> step.",
        f"per-round ratios: {min(paired):.3f} .. {max(paired):.3f}."
        + (NOISY if max(paired) > SPREAD_LIMIT * min(paired) else ""),
    ]
    data = {
        "mtlrun_images_per_s": values["mtlrun"],
        "bare_images_per_s": values["bare"],
        "ratio": ratio,
        "paired_ratios": paired,
        "checkpoint_shares": checkpoint_shares,
        "steps_per_epoch": steps,
        "batch_size": batch,
        "image_size": size,
        "progress": PROGRESS_MODE,
        "goal": GOAL,
    }
    return Section("1. Runner overhead", ["measure", "value", "goal", "verdict"], rows, notes, data)

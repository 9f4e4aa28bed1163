"""Section 6, fast paths: each switch's effect as the throughput ratio on ÷ off, measured in
alternating epochs in one process after warm-up (torch.compile in a fresh process with an
empty compile cache, so that its first-compile cost is a cold one)."""

import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from mtlrun.data import Batch, DataSource, move_batch
from mtlrun.errors import first_line
from speed.common import (
    Rounds,
    Section,
    Settings,
    base_overrides,
    built_run,
    compose_config,
    format_ratio,
    median,
)
from speed.loops import EngineLoop, TimedData, alternate
from speed.workers import run_worker

TITLE = "6. Fast paths"
WORKER = "compile"
NO_GPU = "not measured (no GPU)"


def measure(settings: Settings) -> Section:
    data: dict[str, Any] = {}
    rows = [switch_row(settings, key, data) for key in ("trainer.amp", "trainer.channels_last")]
    rows += [
        compile_row(settings, data),
        data_on_device_row(settings, data),
        pinned_memory_row(settings),
        cudnn_row(settings, data),
    ]
    notes = [
        f"on ÷ off: median throughput of {steps(settings)}-step epochs of the default run "
        "(tasks cls,seg,gen, 32×32, batch 64) through train_epoch, the two sides alternating "
        "in one process after warm-up; the default config has channels_last=true, amp=false, "
        "compile=false."
    ]
    return Section(TITLE, ["fast path", "on ÷ off", "note"], rows, notes, data)


def steps(settings: Settings) -> int:
    return settings.pick(4, 12)


def rounds(settings: Settings) -> Rounds:
    return settings.pick(Rounds(2, 2, 0.0), Rounds(3, 5, 60.0))


def config(settings: Settings, *overrides: str) -> DictConfig:
    cfg = compose_config([*base_overrides(settings), *overrides])
    cfg.dataset.train_size = steps(settings) * int(cfg.trainer.batch_size)
    return cfg


def compare(settings: Settings, sides: dict[str, DictConfig]) -> dict[str, list[float]]:
    """Throughputs of runs built from each config, in alternating epochs after warm-up."""
    with ExitStack() as stack:
        loops = {
            name: EngineLoop(stack.enter_context(built_run(cfg))) for name, cfg in sides.items()
        }
        return alternate_loops(settings, loops)


def alternate_loops(
    settings: Settings, loops: dict[str, EngineLoop], before: Callable[[str], None] | None = None
) -> dict[str, list[float]]:
    """Warm each loop up, then alternate their epochs; `before(name)` runs before each."""

    def epoch(name: str) -> float:
        if before is not None:
            before(name)
        return loops[name].epoch().throughput

    for name, loop in loops.items():
        if before is not None:
            before(name)
        loop.warm_up(settings.pick(1, 2))
    return alternate({name: lambda name=name: epoch(name) for name in loops}, rounds(settings))


def ratio_cell(values: dict[str, list[float]]) -> str:
    return format_ratio(median(values["on"]) / median(values["off"]))


def switch_row(settings: Settings, key: str, data: dict[str, Any]) -> list[str]:
    values = compare(
        settings, {"on": config(settings, f"{key}=true"), "off": config(settings, f"{key}=false")}
    )
    data[key] = values
    note = f"on {median(values['on']):.0f} img/s, off {median(values['off']):.0f} img/s"
    if key == "trainer.amp":
        note += f"; bf16 autocast on {settings.device.type}"
    return [key, ratio_cell(values), note]


def compile_row(settings: Settings, data: dict[str, Any]) -> list[str]:
    if settings.quick:
        return ["trainer.compile", "skipped in --quick", "a cold compile takes a minute or more"]
    with tempfile.TemporaryDirectory(prefix="mtlrun-bench-inductor-") as cache:
        env = {"TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": cache}
        spec = {"device": settings.device.type, "quick": settings.quick}
        result = run_worker(WORKER, spec, timeout_s=600, env=env)
    data["trainer.compile"] = result
    if "error" in result:
        return ["trainer.compile", "failed", result["error"]]
    note = (
        f"first compile {result['compile_s']:.1f} s (cold cache); on "
        f"{median(result['on']):.0f} img/s, off {median(result['off']):.0f} img/s"
    )
    return ["trainer.compile", ratio_cell(result), note]


def compile_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """torch.compile on vs off, and the first compile's cost; runs in its own process."""
    settings = Settings(torch.device(spec["device"]), bool(spec["quick"]))
    with (
        built_run(config(settings, "trainer.compile=true")) as compiled_run,
        built_run(config(settings, "trainer.compile=false")) as eager_run,
    ):
        compiled, eager = EngineLoop(compiled_run), EngineLoop(eager_run)
        first = TimedData(compiled_run.data, compiled_run.device, limit=3)
        try:
            compiled.timed_epoch(first)
        except Exception as error:  # any compiler failure is a result to report
            return {"error": error_line(error)}
        compile_s = first.steps[0] - median(first.steps[1:])
        eager.warm_up(settings.pick(1, 2))
        values = alternate(
            {"on": lambda: compiled.epoch().throughput, "off": lambda: eager.epoch().throughput},
            rounds(settings),
        )
    return {**values, "compile_s": compile_s, "first_step_s": first.steps[0]}


def error_line(error: Exception) -> str:
    """The error's type, its first line and (where the cause is told last) its last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    last = f" … {lines[-1][:200]}" if len(lines) > 1 else ""
    return f"{type(error).__name__}: {first_line(error)}{last}"


class HostMadeData:
    """The run's dataset generated on the CPU, each batch then copied to `device`."""

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        self.data: DataSource = instantiate(cfg.dataset)(
            batch_size=int(cfg.trainer.batch_size), shuffle_seed=int(cfg.trainer.seed), device="cpu"
        )
        self.info, self.device = self.data.info, device

    def num_train_batches(self) -> int:
        return self.data.num_train_batches()

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        for batch in self.data.train_batches(epoch):
            yield move_batch(batch, self.device)

    def val_batches(self) -> Iterator[Batch]:
        for batch in self.data.val_batches():
            yield move_batch(batch, self.device)


def data_on_device_row(settings: Settings, data: dict[str, Any]) -> list[str]:
    name = "shapes generated on the training device"
    if settings.device.type == "cpu":
        return [name, "n/a on CPU", "the data is generated where the model is"]
    cfg = config(settings)
    with built_run(cfg) as on_run, built_run(cfg) as off_run:
        off_run.data = HostMadeData(cfg, off_run.device)
        values = alternate_loops(settings, {"on": EngineLoop(on_run), "off": EngineLoop(off_run)})
    data["data_on_device"] = values
    return [name, ratio_cell(values), "off: generated on the CPU, copied per batch"]


def pinned_memory_row(settings: Settings) -> list[str]:
    """File datasets pin their batches and copy them without blocking only on CUDA, where a
    host-to-device copy exists to overlap."""
    name = "pinned memory + non_blocking copies (file datasets)"
    if settings.device.type != "cuda":
        return [name, "n/a on CPU", "batches are already where the model is"]
    return [name, "not measured", "always on for file datasets on CUDA"]


def cudnn_row(settings: Settings, data: dict[str, Any]) -> list[str]:
    name = "torch.backends.cudnn.benchmark"
    if settings.device.type != "cuda":
        return [name, NO_GPU, ""]
    previous = torch.backends.cudnn.benchmark

    def select(side: str) -> None:
        torch.backends.cudnn.benchmark = side == "on"

    try:
        with built_run(config(settings)) as run:
            loop = EngineLoop(run)
            values = alternate_loops(settings, {"on": loop, "off": loop}, before=select)
    finally:
        torch.backends.cudnn.benchmark = previous
    data["cudnn.benchmark"] = values
    return [name, ratio_cell(values), "one run, the flag flipped before each epoch"]

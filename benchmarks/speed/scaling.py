"""Sections 5, scaling and memory: step time for 1..5 tasks × image sizes, each configuration
trained through mtlrun's engine in a fresh process that also reports its peak memory (peak
RSS on CPU, peak allocated CUDA memory on GPU)."""

import resource
import time
from typing import Any

import torch

from mtlrun.cli import config_dir
from speed.common import Section, Settings, base_overrides, built_run, compose_config, median
from speed.loops import EngineLoop, TimedData
from speed.workers import run_worker

TASK_ORDER = ("cls", "seg", "gen", "depth", "det", "inst")
WORKER = "scaling"
BUDGET_S = 240.0  # for the whole section (full mode); configurations past it are skipped


def available_tasks() -> tuple[list[str], list[str]]:
    """The tasks of TASK_ORDER that have a config file, and those that do not (yet)."""
    folder = config_dir() / "tasks"
    present = [name for name in TASK_ORDER if (folder / f"{name}.yaml").exists()]
    return present, [name for name in TASK_ORDER if name not in present]


def plan(settings: Settings) -> list[tuple[list[str], int]]:
    """(tasks, image size) of every configuration to measure."""
    present, _ = available_tasks()
    task_sets = [present[:count] for count in range(1, len(present) + 1)]
    sizes = settings.pick((32, 64), (32, 64, 128))
    if settings.quick:
        task_sets = [task_sets[0], task_sets[-1]]
    # Smaller images first: if the time budget runs out, the costly configurations go.
    return [(tasks, size) for size in sizes for tasks in task_sets]


def measure(settings: Settings) -> list[Section]:
    budget_s = settings.pick(float("inf"), BUDGET_S)
    started = time.perf_counter()
    results = []
    for tasks, size in plan(settings):
        spec = {
            "tasks": tasks,
            "image_size": size,
            "device": settings.device.type,
            "quick": settings.quick,
        }
        if time.perf_counter() - started > budget_s:
            results.append({**spec, "skipped": f"over the section's {budget_s:.0f} s budget"})
            continue
        results.append({**spec, **run_worker(WORKER, spec, timeout_s=600)})
    return [scaling_section(settings, results), memory_section(settings, results)]


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration for a few timed steps; runs in its own process."""
    settings = Settings(torch.device(spec["device"]), bool(spec["quick"]))
    size = int(spec["image_size"])
    skip = 1 if size > 64 else 2  # warm-up steps
    least, most, budget_s = settings.pick((2, 2, 0.0), (2, 20, 5.0))
    cfg = compose_config(
        [
            *base_overrides(settings),
            f"tasks=[{','.join(spec['tasks'])}]",
            f"dataset.image_size={size}",
        ]
    )
    batch = int(cfg.trainer.batch_size)
    cfg.dataset.train_size = batch * (skip + most)
    with built_run(cfg) as run:
        if settings.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(settings.device)
        timed = TimedData(run.data, run.device, skip=skip, least=least, budget_s=budget_s)
        EngineLoop(run).timed_epoch(timed)
    step_s = median(timed.measured())
    return {
        "batch_size": batch,
        "warm_up_steps": skip,
        "step_s": timed.measured(),
        "ms_per_step": 1000 * step_s,
        "images_per_s": batch / step_s,
        "peak_memory_mib": peak_memory_mib(settings.device),
    }


def peak_memory_mib(device: torch.device) -> float:
    """Peak allocated CUDA memory on GPU; the process's peak resident set size otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def grid(
    results: list[dict[str, Any]], sizes: list[int], cells: list[tuple[str, str]]
) -> tuple[list[str], list[list[str]]]:
    """Rows per task set, a column per (size, cell); `cells` are (heading, format) of keys."""
    columns = ["tasks"] + [f"{size}px {heading}" for size in sizes for heading, _ in cells]
    rows: list[list[str]] = []
    by_key = {(",".join(r["tasks"]), r["image_size"]): r for r in results}
    for tasks in dict.fromkeys(",".join(result["tasks"]) for result in results):
        row = [tasks]
        for size in sizes:
            result = by_key.get((tasks, size), {"skipped": ""})
            failed = next((key for key in ("error", "skipped") if key in result), None)
            row += [failed or pattern.format(**result) for _, pattern in cells]
        rows.append(row)
    return columns, rows


def scaling_section(settings: Settings, results: list[dict[str, Any]]) -> Section:
    sizes = sorted({result["image_size"] for result in results})
    columns, rows = grid(
        results, sizes, [("ms/step", "{ms_per_step:.0f}"), ("img/s", "{images_per_s:.0f}")]
    )
    _, missing = available_tasks()
    notes = [
        "each configuration in a fresh process: the default config with those tasks and "
        "image size, trained through train_epoch; median step time after warm-up steps "
        f"({settings.pick('2 timed steps', 'at least 2 timed steps, up to 5 s or 20 steps')}); "
        "batch 64; 1 warm-up step above 64px, 2 otherwise."
    ]
    if missing:
        notes.append(f"not measured (no conf/tasks/<name>.yaml yet): {', '.join(missing)}.")
    notes += [
        f"{','.join(r['tasks'])} at {r['image_size']}px: {r.get('error') or r['skipped']}"
        for r in results
        if "error" in r or "skipped" in r
    ]
    return Section("5. Scaling", columns, rows, notes, {"configurations": results})


def memory_section(settings: Settings, results: list[dict[str, Any]]) -> Section:
    sizes = sorted({result["image_size"] for result in results})
    kind = "peak allocated CUDA memory" if settings.device.type == "cuda" else "peak RSS"
    columns, rows = grid(results, sizes, [("MiB", "{peak_memory_mib:.0f}")])
    notes = [
        f"{kind} of each scaling process (MiB)"
        + (", imports and the Python runtime included." if kind == "peak RSS" else ".")
    ]
    return Section("5b. Memory", columns, rows, notes)

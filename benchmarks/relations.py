"""Cost of measuring the task-relation matrix (`trainer.relations_every_n_steps`).

For T = 2, 3 and 5 tasks on the `cnn` backbone (cls, seg, gen; T = 5 adds a second cls and
seg), one run is built and its training step is timed with and without the measurement
(what the engine does at a measured step: one extra backward pass per task, the cosine
matrix, TensorBoard scalars and heatmap, relations.json), the two kinds of step
alternating so that drift on a shared machine hits both alike. Reports the median measured
step over the median plain step, and the overhead spread over N steps, (ratio - 1) / N,
for N = the default `trainer.log_every_n_steps` (50).

Writes benchmarks/results/relations-<machine>-<date>.json (or into --out) and prints a
Markdown table. Goal: a measured step within (T + 1)x a plain one.

Usage:
    python benchmarks/relations.py [--quick] [--device auto|cpu|cuda] [--out DIR]
        [--tasks 2,3,5] [--rounds N] [--batch-size N] [--image-size N] [--threads N]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from speed.common import synchronize
from weighting import machine_name

from mtlrun.build import build
from mtlrun.cli import config_dir
from mtlrun.engine import Run, forward_losses, log_relations, prepare_images, update
from mtlrun.weighting import StepContext

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TASK_OVERRIDES = {
    2: ["tasks=[cls,seg]"],
    3: ["tasks=[cls,seg,gen]"],
    5: ["tasks=[cls,seg,gen]", "+tasks@tasks.cls2=cls", "+tasks@tasks.seg2=seg"],
}
SPREAD_OVER = 50  # steps between measurements the overhead is spread over


def build_run(tasks: int, args: argparse.Namespace, device: str, folder: Path) -> Run:
    overrides = [
        *TASK_OVERRIDES[tasks],
        "backbone=cnn",
        f"dataset.image_size={args.image_size}",
        f"dataset.train_size={args.batch_size * 2}",
        f"dataset.val_size={args.batch_size}",
        f"trainer.batch_size={args.batch_size}",
        f"trainer.device={device}",
        f"trainer.threads={args.threads}",
        "trainer.progress=none",
    ]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return build(cfg, folder / f"T{tasks}")


def train_step(run: Run, batch: dict[str, Any], step: int, measure: bool) -> float:
    """One step as the engine takes it, with or without the measurement; its seconds."""
    synchronize(run.device)
    started = time.perf_counter()
    images = prepare_images(batch["image"], run.trainer)
    features, losses = forward_losses(run, images, batch["targets"])
    shared = run.model.shared_parameters()
    if measure:
        log_relations(run, losses, shared, step)
    update(run, losses, StepContext(shared, features, step=step))
    synchronize(run.device)
    return time.perf_counter() - started


def time_tasks(tasks: int, args: argparse.Namespace, device: str, folder: Path) -> dict:
    run = build_run(tasks, args, device, folder)
    batches = [batch for _, batch in zip(range(2), run.data.train_batches(0), strict=False)]
    for step in range(2):  # warm-up, both kinds
        train_step(run, batches[step], step, measure=bool(step))
    times: dict[bool, list[float]] = {False: [], True: []}
    for round_index in range(args.rounds):
        order = (False, True) if round_index % 2 == 0 else (True, False)
        for measure in order:
            batch = batches[round_index % len(batches)]
            times[measure].append(train_step(run, batch, 2 + round_index, measure))
    for logger in run.loggers:
        logger.close()
    plain, measured = statistics.median(times[False]), statistics.median(times[True])
    ratio = measured / plain
    return {
        "tasks": tasks,
        "plain_ms": 1000 * plain,
        "measured_ms": 1000 * measured,
        "ratio": ratio,
        "goal": tasks + 1.0,
        f"overhead_every_{SPREAD_OVER}": (ratio - 1) / SPREAD_OVER,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"| T | plain step | measured step | ratio (goal) | overhead every {SPREAD_OVER} steps |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        mark = "" if row["ratio"] <= row["goal"] else " **over goal**"
        lines.append(
            f"| {row['tasks']} | {row['plain_ms']:.0f} ms | {row['measured_ms']:.0f} ms | "
            f"{row['ratio']:.2f}x ({row['goal']:g}x){mark} | "
            f"{100 * row[f'overhead_every_{SPREAD_OVER}']:.1f}% |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T=3 only, 6 rounds")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--tasks", default="2,3,5", help="task counts, of 2, 3, 5")
    parser.add_argument("--rounds", type=int, default=12, help="timed steps of each kind")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quick:
        args.tasks, args.rounds = "3", 6
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for count in (int(text) for text in args.tasks.split(",")):
            print(f"[relations] T={count} ...", file=sys.stderr, flush=True)
            rows.append(time_tasks(count, args, device, Path(folder)))
    table = markdown(rows)
    notes = (
        f"cnn backbone, hard sharing, batch {args.batch_size}, {args.image_size}x"
        f"{args.image_size} images, {args.rounds} steps of each kind (median), "
        f"{args.threads} torch thread(s) on {device}; a measured step includes the heatmap, "
        f"the TensorBoard writes and relations.json; total {time.perf_counter() - started:.0f} s"
    )
    machine, today = machine_name(torch.device(device)), date.today().isoformat()
    content = {
        "machine": machine,
        "date": today,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch": torch.__version__,
        "load_average": list(os.getloadavg()),
        "notes": notes,
        "rows": rows,
        "markdown": f"{table}\n\n{notes}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"relations-{machine}-{today}.json"
    path.write_text(json.dumps(content, indent=2) + "\n")
    print(f"{table}\n\n{notes}\nwritten: {path}")


if __name__ == "__main__":
    main()

"""mtlrun's speed benchmarks (`make bench`, `make bench ARGS=--quick`).

Writes benchmarks/results/<machine>-<date>.json and .md and prints the Markdown report.
Sections: runner overhead, data, start-up, weighting cost, scaling and memory, fast paths,
GANs (a GAN step vs a bare GAN loop; FID evaluation cost), file loaders (loaders.py: images/s
and the wait for data at the protocols' sizes).
Figures are ratios of two things timed side by side in one process, since absolute times
drift on shared machines. `--quick` shrinks everything for development (~2.5 minutes on a
quiet 2-core CPU); the full run takes about 10-12 minutes there (the GAN rows add ~1.5).

Usage:
    python benchmarks/run.py [--quick] [--device auto|cpu|cuda] [--out DIR] [--only a,b]
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import loaders
import torch
from speed import data_speed, fast_paths, gan, overhead, report, scaling, startup, weighting_table
from speed.common import BENCHMARKS_DIR, Section, Settings
from speed.workers import report as report_to_parent

SECTIONS = (
    "overhead", "data", "startup", "weighting", "scaling", "fast_paths", "gan", "loaders",
)  # fmt: skip
WORKERS = {"scaling": scaling.worker, "compile": fast_paths.compile_worker}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and configurations")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCHMARKS_DIR / "results",
        help="folder for the .json and .md results (default: %(default)s)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}",
    )
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("run.py: --device cuda, but no CUDA device is available")
    return torch.device(name)


def section_runners(settings: Settings) -> dict[str, Callable[[], list[Section]]]:
    return {
        "overhead": lambda: [overhead.measure(settings)],
        "data": lambda: [data_speed.measure(settings)],
        "startup": lambda: [startup.measure(settings)],
        "weighting": lambda: [weighting_table.measure(settings)],
        "scaling": lambda: scaling.measure(settings),
        "fast_paths": lambda: [fast_paths.measure(settings)],
        "gan": lambda: gan.measure(settings),
        "loaders": lambda: [loaders.measure(settings)],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        report_to_parent(WORKERS[args.worker](json.loads(args.spec)))
        return
    settings = Settings(resolve_device(args.device), args.quick)
    info = report.machine_info(settings.device)
    started = time.perf_counter()
    runners = section_runners(settings)
    chosen = [name for name in SECTIONS if name in args.only.split(",")]
    sections: list[Section] = []
    for name in chosen:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        section_start = time.perf_counter()
        sections += runners[name]()
        print(f"[bench] {name}: {time.perf_counter() - section_start:.0f} s", file=sys.stderr)
    info["load_average_at_end"] = list(os.getloadavg())
    today = date.today().isoformat()
    run = {
        "date": today,
        "quick": settings.quick,
        "sections_run": chosen,
        "wall_s": time.perf_counter() - started,
    }
    suffix = ("-quick" if settings.quick else "") + ("" if chosen == list(SECTIONS) else "-partial")
    stem = f"{report.slug(info)}-{today}{suffix}"
    json_path, md_path, text = report.write(args.out, stem, info, run, sections)
    print(text)
    print(f"written: {json_path} and {md_path}")


if __name__ == "__main__":
    main()

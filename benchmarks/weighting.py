"""Cost of every weighting method: training-step time and peak memory relative to `sum`.

For T = 2, 3 and 5 tasks on the `cnn` backbone (cls, seg, gen; T = 5 adds a second cls and
seg), every method in conf/weighting/ (plus MGDA-UB, `mgda` with `weighting.on=features`)
is built with the same model and data, and one training step (forward, losses, zero_grad,
weighting.backward, optimizer.step) is timed in alternating rounds (every method once per
round, the order rotating), the median per method divided by the median of `sum` from the
same rounds: absolute times drift on shared machines, ratios measured side by side much
less. Peak memory: on CUDA the peak allocated during two steps, in this process; on CPU the
growth of the peak resident set (VmHWM, i.e. ru_maxrss of the process
itself) over two steps, each method in a fresh subprocess for the tasks of `--memory-tasks`.

Peers, side by side in the same rounds: every method TorchJD (`torchjd`) or LibMTL shares
with mtlrun, run on the same model, batches and threads by a stand-in weighting that does
what those libraries do in a step -- TorchJD: `autojac.mtl_backward` (the Jacobian of the
losses on the shared parameters, by vmap) then `jac_to_grad` with the aggregator; LibMTL
1.1.5: its weighting's own `backward` (one backward pass per task, flattened in float32),
mixed into the model as LibMTL does. Their rows are "torchjd:<name>" / "libmtl:<name>";
the table's peer columns give each peer's step time over mtlrun's (> 1: mtlrun faster).
Methods whose mtlrun default works on the shared features (imtl, graddrop) are compared
with their `weighting.on=parameters` variant, where the peers work.

Writes benchmarks/results/weighting-<machine>-<date>.json (or into --out) and prints a
Markdown table. Goals: loss-based methods within 1.1x of `sum`, gradient-based within
(T+1)x, MGDA-UB within 1.3x; mtlrun at least as fast as each peer.

Usage:
    python benchmarks/weighting.py [--quick] [--device auto|cpu|cuda] [--out DIR]
        [--tasks 2,3,5] [--rounds N] [--batch-size N] [--image-size N] [--threads N]
        [--no-peers]
"""

import argparse
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from mtlrun.build import build
from mtlrun.cli import config_dir
from mtlrun.engine import Run
from mtlrun.errors import UserError
from mtlrun.weighting import StepContext, Weighting
from mtlrun.weighting.base import GradientWeighting

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TASK_OVERRIDES = {
    2: ["tasks=[cls,seg]"],
    3: ["tasks=[cls,seg,gen]"],
    5: ["tasks=[cls,seg,gen]", "+tasks@tasks.cls2=cls", "+tasks@tasks.seg2=seg"],
}


def gradient_based() -> set[str]:
    """The conf/weighting/ options whose class combines per-task gradients (subclasses
    `GradientWeighting`), found from the `_target_` of each file, not kept by hand."""
    names = set()
    for path in (config_dir() / "weighting").glob("*.yaml"):
        target = OmegaConf.load(path).get("_target_")
        if target and issubclass(get_class(str(target)), GradientWeighting):
            names.add(path.stem)
    return names


GRADIENT_BASED = gradient_based()


@dataclass(frozen=True)
class Settings:
    """What one invocation measures (written into the results)."""

    device: str
    tasks: tuple[int, ...]
    memory_tasks: int
    rounds: int
    batch_size: int
    image_size: int
    threads: int
    peers: bool = True


@dataclass(frozen=True)
class Method:
    """A row of the table: a config option and its overrides."""

    label: str
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.overrides[0].split("=", 1)[1]

    def goal(self, tasks: int) -> float:
        if self.label == "mgda-ub":
            return 1.3
        return tasks + 1.0 if self.name in GRADIENT_BASED else 1.1


def methods() -> list[Method]:
    names = sorted(path.stem for path in (config_dir() / "weighting").glob("*.yaml"))
    names.remove("sum")
    found = [Method(name, (f"weighting={name}",)) for name in ["sum", *names]]
    found.append(Method("mgda-ub", ("weighting=mgda", "weighting.on=features")))
    # The side of the peers (TorchJD, LibMTL), for the comparison.
    found.append(Method("imtl-parameters", ("weighting=imtl", "weighting.on=parameters")))
    found.append(Method("graddrop-parameters", ("weighting=graddrop", "weighting.on=parameters")))
    return found


def build_run(method: Method, tasks: int, settings: Settings, folder: Path) -> Run:
    overrides = [
        *TASK_OVERRIDES[tasks],
        *method.overrides,
        "backbone=cnn",
        f"dataset.image_size={settings.image_size}",
        f"dataset.train_size={settings.batch_size * 4}",
        f"dataset.val_size={settings.batch_size}",
        f"trainer.batch_size={settings.batch_size}",
        f"trainer.device={settings.device}",
        f"trainer.threads={settings.threads}",
        "trainer.progress=none",
    ]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return build(cfg, folder / f"{method.label}-{tasks}")


def train_step(run: Run, batch: dict[str, Any], step: int) -> None:
    """One step as the engine takes it (without its logging)."""
    images = batch["image"]
    if run.trainer.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.trainer.amp):
        features, outputs = run.model(images)
        losses = {
            name: task.loss(outputs[name], batch["targets"][task.target])
            for name, task in run.tasks.items()
        }
    run.optimizer.zero_grad(set_to_none=True)
    context = StepContext(run.model.shared_parameters(), features, step=step, epoch=0)
    run.weighting.backward(losses, context)
    run.optimizer.step()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- peers: TorchJD and LibMTL doing the same method's step --------------------------------------


class TorchJDStep(Weighting):
    """TorchJD's step: `mtl_backward` (heads get their own gradient, the shared parameters
    the Jacobian) then `jac_to_grad` with `aggregator`."""

    def __init__(self, aggregator: Any) -> None:
        super().__init__()
        self.aggregator = aggregator

    def backward(self, losses: dict[str, torch.Tensor], context: StepContext) -> dict[str, Any]:
        from torchjd.autojac import jac_to_grad, mtl_backward

        shared = context.shared_parameters
        mtl_backward([losses[name] for name in self.task_names], features=context.features,
                     shared_params=shared)  # fmt: skip
        jac_to_grad(shared, self.aggregator)
        return {}


class LibMTLStep(Weighting):
    """LibMTL 1.1.5's step: its weighting's `backward`, mixed into an object that gives it
    the model's shared parameters (LibMTL mixes it into the model itself)."""

    def __init__(self, name: str, kwargs: dict[str, Any], vector: bool = False) -> None:
        super().__init__()
        self.peer_name, self.kwargs, self.vector = name, kwargs, vector
        self.peer: Any = None

    def bind(self, shared: list[torch.nn.Parameter], device: torch.device) -> None:
        base = getattr(libmtl_weighting(), self.peer_name)

        class Harness(base):  # type: ignore[misc, valid-type]
            def get_share_params(self) -> list[torch.nn.Parameter]:
                return shared

            def zero_grad_share_params(self) -> None:
                for parameter in shared:
                    parameter.grad = torch.zeros_like(parameter)

            def _grad2vec(self) -> torch.Tensor:
                # LibMTL flattens with .view(-1), which channels-last gradients refuse.
                for parameter in shared:
                    if parameter.grad is not None:
                        parameter.grad = parameter.grad.contiguous()
                return super()._grad2vec()

        self.peer = Harness()
        self.peer.task_num, self.peer.device, self.peer.rep_grad = (
            len(self.task_names),
            device,
            False,
        )
        self.peer.task_name, self.peer.epoch = self.task_names, 1
        self.peer.train_loss_buffer = torch.ones(len(self.task_names), 1)
        self.peer.init_param()

    def backward(self, losses: dict[str, torch.Tensor], context: StepContext) -> dict[str, Any]:
        if self.peer is None:
            self.bind(context.shared_parameters, context.features.device)
        ordered = [losses[name] for name in self.task_names]
        self.peer.backward(torch.stack(ordered) if self.vector else ordered, **self.kwargs)
        return {}


def libmtl_weighting() -> Any:
    """LibMTL.weighting without the package's __init__ (broken with torchvision >= 0.13, see
    tests/test_weighting_crosscheck.py)."""
    import importlib
    import importlib.util
    import types

    if "LibMTL" not in sys.modules:
        spec = importlib.util.find_spec("LibMTL")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("LibMTL is not installed")
        package = types.ModuleType("LibMTL")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["LibMTL"] = package
    return importlib.import_module("LibMTL.weighting")


def torchjd_peers(tasks: int) -> dict[str, Any]:
    """mtlrun option (or variant label) -> TorchJD aggregator of the same method."""
    from torchjd import aggregation as tj

    peers = {
        "sum": tj.Sum(), "mean": tj.Mean(), "mgda": tj.MGDA(), "pcgrad": tj.PCGrad(),
        "cagrad": tj.CAGrad(c=0.4), "imtl-parameters": tj.IMTLG(),
        "nash_mtl": tj.NashMTL(n_tasks=tasks), "aligned_mtl": tj.AlignedMTL(),
        "graddrop-parameters": tj.GradDrop(), "upgrad": tj.UPGrad(), "dualproj": tj.DualProj(),
        "config": tj.ConFIG(), "gradvac": tj.GradVac(), "fairgrad": tj.FairGrad(alpha=1.0),
        "excess_mtl": tj.ExcessMTL(), "rgw": tj.Random(), "pcd": tj.PCD(),
    }  # fmt: skip
    if tasks >= 3:  # what mtlrun's krum and trimmed_mean need, too
        peers["krum"] = tj.Krum(n_byzantine=0)
        peers["trimmed_mean"] = tj.TrimmedMean(trim_number=1)
    return peers


def libmtl_peers(tasks: int) -> dict[str, LibMTLStep]:
    """mtlrun option -> LibMTL 1.1.5 weighting of the same method (its CAGrad: T = 3 only)."""
    peers = {
        "sum": LibMTLStep("EW", {}, vector=True), "mgda": LibMTLStep("MGDA", {"mgda_gn": "none"}),
        "pcgrad": LibMTLStep("PCGrad", {}), "gradvac": LibMTLStep("GradVac", {"beta": 0.5}),
        "imtl-parameters": LibMTLStep("IMTL", {}, vector=True),
        "gls": LibMTLStep("GLS", {}, vector=True), "uw": LibMTLStep("UW", {}, vector=True),
        "rlw": LibMTLStep("RLW", {"dist": "Normal"}, vector=True),
    }  # fmt: skip
    if tasks == 3:
        peers["cagrad"] = LibMTLStep("CAGrad", {"calpha": 0.4, "rescale": 0})
    return peers


def peer_runs(tasks: int, settings: Settings, folder: Path) -> dict[str, Run]:
    """One run per peer (built as `sum`, its weighting replaced by the peer's step)."""
    found: dict[str, Weighting] = {}
    try:
        found.update({f"torchjd:{k}": TorchJDStep(v) for k, v in torchjd_peers(tasks).items()})
    except ImportError as error:
        print(f"[weighting] no TorchJD peers: {error}", file=sys.stderr)
    try:
        libmtl_weighting()
        found.update({f"libmtl:{k}": v for k, v in libmtl_peers(tasks).items()})
    except ImportError as error:
        print(f"[weighting] no LibMTL peers: {error}", file=sys.stderr)
    runs = {}
    for label, weighting in found.items():
        run = build_run(
            Method(label.replace(":", "-"), ("weighting=sum",)), tasks, settings, folder
        )
        weighting.setup(list(run.tasks))
        run.weighting = weighting.to(run.device)
        runs[label] = run
    return runs


def time_methods(
    tasks: int, settings: Settings, folder: Path
) -> tuple[dict[str, float], dict[str, float]]:
    """Median step time (s) and, on CUDA, peak memory (MB) per method (and peer) label."""
    runs = {}
    for method in methods():
        try:
            runs[method.label] = build_run(method, tasks, settings, folder)
        except UserError as error:  # e.g. krum with too few tasks
            print(f"[weighting] {method.label}, T={tasks}: left out ({error})", file=sys.stderr)
    if settings.peers:
        runs.update(peer_runs(tasks, settings, folder))
    first = next(iter(runs.values()))
    batches = [batch for _, batch in zip(range(4), first.data.train_batches(0), strict=False)]
    memory: dict[str, float] = {}
    for label, run in runs.items():  # warm-up; on CUDA it also measures the peak memory
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(run.device)
            before = torch.cuda.memory_allocated(run.device)
        for step in range(2):
            train_step(run, batches[step], step)
        if run.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(run.device) - before
            memory[label] = peak / 2**20
    times: dict[str, list[float]] = {label: [] for label in runs}
    labels = list(runs)
    for round_index in range(settings.rounds):
        shift = round_index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            run = runs[label]
            synchronize(run.device)
            started = time.perf_counter()
            train_step(run, batches[round_index % len(batches)], 2 + round_index)
            synchronize(run.device)
            times[label].append(time.perf_counter() - started)
    for run in runs.values():
        for logger in run.loggers:
            logger.close()
    return {label: statistics.median(values) for label, values in times.items()}, memory


def memory_worker(label: str, tasks: int, settings: Settings) -> dict[str, float]:
    """In a fresh process: growth of the peak resident set over two steps, in MB."""
    method = next(method for method in methods() if method.label == label)
    with tempfile.TemporaryDirectory() as folder:
        run = build_run(method, tasks, settings, Path(folder))
        batches = [batch for _, batch in zip(range(2), run.data.train_batches(0), strict=False)]
        gc.collect()
        reset = reset_peak_memory()
        before = peak_resident_kib()
        for step, batch in enumerate(batches):
            train_step(run, batch, step)
        after = peak_resident_kib()
    return {"peak_growth_mb": (after - before) / 1024, "peak_reset": reset}


def reset_peak_memory() -> bool:
    """Lower the process's peak resident set to its current size (Linux).

    Otherwise the peak reached while importing and building, often higher than a small
    training step needs, would hide the step's memory from the difference.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_resident_kib() -> int:
    """The peak resident set in KiB: VmHWM where /proc has it, else ru_maxrss.

    ru_maxrss alone would do in a process started from a small parent, but Linux carries
    the parent's peak at fork into the child's ru_maxrss (not into VmHWM), and this
    script's parent holds every method's run.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        found = re.search(r"^VmHWM:\s*(\d+)\s*kB", status.read_text(), re.MULTILINE)
        if found:
            return int(found.group(1))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def cpu_memory(tasks: int, settings: Settings) -> dict[str, float]:
    """`memory_worker` for every method, two subprocesses at a time."""

    def measure(label: str) -> float:
        command = [
            sys.executable, __file__, "--memory-worker", label,
            "--settings", json.dumps(asdict(settings)), "--memory-tasks", str(tasks),
        ]  # fmt: skip
        finished = subprocess.run(command, capture_output=True, text=True, check=True)
        measured = json.loads(finished.stdout.strip().splitlines()[-1])
        if not measured["peak_reset"]:
            print(
                f"[weighting] {label}: peak RSS not resettable; growth may read low",
                file=sys.stderr,
            )
        return measured["peak_growth_mb"]

    labels = [method.label for method in methods()]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(labels, pool.map(measure, labels), strict=True))


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.is_file():
            models = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text())
            name = models[0] if models else name
        name = f"{name}-{os.cpu_count()}cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def markdown(rows: list[dict[str, Any]], settings: Settings) -> str:
    header = ["method", "goal"]
    for tasks in settings.tasks:
        header += [f"T={tasks}: time vs sum", f"T={tasks}: peer time / mtlrun time"]
    header += [f"T={settings.memory_tasks}: peak memory vs sum"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in dict.fromkeys(row["method"] for row in rows):
        mine = {row["tasks"]: row for row in rows if row["method"] == label}
        goals = sorted({row["goal"] for row in mine.values()})
        goal = "(T+1)x" if len(goals) > 1 else f"{goals[0]:g}x"
        cells = [label, goal]
        for tasks in settings.tasks:
            if tasks not in mine:
                cells += ["-", "-"]
                continue
            row = mine[tasks]
            mark = "" if row["time_ratio"] <= row["goal"] else " **over goal**"
            cells.append(f"{row['time_ratio']:.2f}x ({row['step_ms']:.0f} ms){mark}")
            peers = [
                f"{name} {row[key + '_ratio']:.2f}x"
                + ("" if row[key + "_ratio"] >= 1 else " **slower**")
                for key, name in (("torchjd", "TorchJD"), ("libmtl", "LibMTL"))
                if key + "_ratio" in row
            ]
            cells.append(", ".join(peers) or "-")
        row = mine.get(settings.memory_tasks, {})
        ratio, growth = row.get("memory_ratio"), row.get("memory_mb")
        cells.append("-" if ratio is None else f"{ratio:.2f}x ({growth:.0f} MB)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="T=3 only, 5 rounds (~1 minute)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--tasks", default="2,3,5", help="task counts, of 2, 3, 5")
    parser.add_argument("--memory-tasks", type=int, default=3, help="task count for memory")
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per method")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: steadier timings on a shared machine)",
    )
    parser.add_argument("--no-peers", action="store_true", help="leave out TorchJD and LibMTL")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_worker:
        settings = Settings(**{**json.loads(args.settings), "tasks": ()})
        print(json.dumps(memory_worker(args.memory_worker, args.memory_tasks, settings)))
        return
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tasks = (3,) if args.quick else tuple(int(count) for count in args.tasks.split(","))
    settings = Settings(
        device=device,
        tasks=tasks,
        memory_tasks=3 if args.quick else args.memory_tasks,
        rounds=5 if args.quick else args.rounds,
        batch_size=args.batch_size,
        image_size=args.image_size,
        threads=args.threads,
        peers=not args.no_peers,
    )
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for count in settings.tasks:
            print(f"[weighting] T={count} ...", file=sys.stderr, flush=True)
            step_times, memory = time_methods(count, settings, Path(folder))
            if device == "cpu" and count == settings.memory_tasks:
                print(f"[weighting] memory, T={count} ...", file=sys.stderr, flush=True)
                memory = cpu_memory(count, settings)
            for method in [method for method in methods() if method.label in step_times]:
                row = {
                    "method": method.label,
                    "tasks": count,
                    "goal": method.goal(count),
                    "step_ms": 1000 * step_times[method.label],
                    "time_ratio": step_times[method.label] / step_times["sum"],
                }
                if method.label in memory:
                    row["memory_mb"] = memory[method.label]
                    row["memory_ratio"] = memory[method.label] / max(memory["sum"], 1e-9)
                for peer in ("torchjd", "libmtl"):  # > 1: mtlrun's step is faster
                    theirs = step_times.get(f"{peer}:{method.label}")
                    if theirs is not None:
                        row[f"{peer}_ms"] = 1000 * theirs
                        row[f"{peer}_ratio"] = theirs / step_times[method.label]
                rows.append(row)
    table = markdown(rows, settings)
    notes = (
        f"cnn backbone, batch {settings.batch_size}, {settings.image_size}x"
        f"{settings.image_size} images, {settings.rounds} timed steps per method (median), "
        f"{settings.threads} torch thread(s) on {device}; time: median step / median step of "
        "sum, alternating rounds; memory: "
        + ("peak allocated over 2 steps" if device == "cuda" else "peak RSS growth over 2 steps")
        + f"; total {time.perf_counter() - started:.0f} s"
    )
    machine = machine_name(torch.device(device))
    today = date.today().isoformat()
    content = {
        "machine": machine,
        "date": today,
        "settings": asdict(settings),
        "torch": torch.__version__,
        "load_average": list(os.getloadavg()),
        "notes": notes,
        "rows": rows,
        "markdown": f"{table}\n\n{notes}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"weighting-{machine}-{today}.json"
    path.write_text(json.dumps(content, indent=2) + "\n")
    print(f"{table}\n\n{notes}\nwritten: {path}")


if __name__ == "__main__":
    main()

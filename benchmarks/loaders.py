"""Section 8, file loaders: images per second read by the file datasets at their protocol
sizes with 0, 2 and 4 loader processes, and the share of a training step spent waiting for
data with the protocol's model.

Two loaders, on files written into a temporary folder first (their content is random but
smooth, so JPEG and PNG compress as photographs do):

- `nyuv2`: the MTAN layout at 288 x 384 (image, label, depth, normal .npy per scene), read at
  full size with the protocol's scale-crop and flip, batch 2, with `experiment=nyuv2`'s model
  (dilated ResNet-50, ASPP, seg + depth + normal heads).
- `folder`: a manifest of 500 x 375 photographs (JPEG, then PNG), resized to 224 x 224, batch
  32, with `experiment=oxford_pets`'s model (ResNet-18 with an FPN neck) and its `cls` head.

Images per second: one whole training epoch of the data source alone (no model), from the
call to `train_batches` to its last batch, so the loader processes' start-up, paid at every
epoch, is in it; the median of alternating rounds (0, 2, 4, 0, 2, 4, ...) after a warm-up
epoch. In-process loading (0 processes) is also timed on one torch thread: the transforms are
many small tensor operations, which torch's intra-op threads slow down on a busy machine.

Waiting: the real loop (`train_epoch`) at the dataset's default number of
loader processes; a step lasts from one request for a batch to the next, its wait is the part
inside the iterator's `next`. The first step (the processes' start-up) is reported apart.

Run through `benchmarks/run.py --only loaders` (with `--quick` for a short run).
"""

import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from speed.common import (
    Rounds,
    Section,
    Settings,
    base_overrides,
    built_run,
    compose_config,
    median,
    verdict,
)
from speed.loops import EngineLoop, TimedData, alternate

NYU_SIZE = (288, 384)
PHOTO_SIZE = (375, 500)  # (height, width): a typical Oxford-IIIT Pet photograph
WORKERS = (0, 2, 4)
WAIT_GOAL = 0.05


def smooth(generator: np.random.Generator, size: tuple[int, int], channels: int) -> np.ndarray:
    """Random but smooth values in [0, 1]: coarse noise enlarged bilinearly, plus a little
    fine noise, so files compress like photographs rather than like static."""
    coarse = generator.uniform(0, 1, (size[0] // 16 + 1, size[1] // 16 + 1, channels))
    enlarged = torch.nn.functional.interpolate(
        torch.from_numpy(coarse).permute(2, 0, 1)[None].float(), size=size, mode="bilinear"
    )[0].permute(1, 2, 0)
    fine = generator.normal(0, 0.02, (*size, channels))
    return np.clip(enlarged.numpy() + fine, 0, 1).astype(np.float32)


def write_nyuv2(root: Path, count: int) -> Path:
    """`count` training and 2 validation scenes in the MTAN layout at 288 x 384."""
    generator = np.random.default_rng(0)
    for split, number in (("train", count), ("val", 2)):
        for index in range(number):
            image = smooth(generator, NYU_SIZE, 3)
            arrays = {
                "image": image,
                "label": np.floor(image[..., 0] * 13).clip(0, 12).astype(np.float32),
                "depth": (image[..., 1:2] * 9 + 0.5).astype(np.float32),
                "normal": image / np.linalg.norm(image, axis=-1, keepdims=True).clip(1e-6),
            }
            for folder, array in arrays.items():
                path = root / split / folder / f"{index}.npy"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, array.astype(np.float32))
    return root


def write_photos(root: Path, count: int, suffix: str) -> Path:
    """`count` 500 x 375 photographs `images/{i}.{suffix}` and manifest.csv (image, label)."""
    generator = np.random.default_rng(1)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["image,label"]
    for index in range(count):
        pixels = (smooth(generator, PHOTO_SIZE, 3) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{index}.{suffix}", quality=90)
        lines.append(f"images/{index}.{suffix},{'cat' if index % 2 else 'dog'}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def loader_config(settings: Settings, loader: str, root: Path, train: int) -> DictConfig:
    """The protocol's run on the files under `root`, reading `train` training samples."""
    overrides = {
        "nyuv2": ["experiment=nyuv2"],
        "folder": ["experiment=oxford_pets", "dataset=folder", "tasks=[cls]"],
    }[loader]
    return compose_config([
        *overrides, *base_overrides(settings), f"dataset.root={root}",
        f"dataset.train_size={train}", "trainer.epochs=1",
        *(["dataset.image_size=224", "trainer.batch_size=32"] if loader == "folder" else []),
    ])  # fmt: skip


def images_per_second(cfg: DictConfig, settings: Settings, workers: int) -> float:
    """One training epoch of the data source alone, start-up included."""
    cfg.dataset.num_workers = workers
    data = instantiate(cfg.dataset)(
        batch_size=int(cfg.trainer.batch_size), shuffle_seed=0, device=settings.device
    )
    started = time.perf_counter()
    images = sum(len(batch["image"]) for batch in data.train_batches(0))
    return images / (time.perf_counter() - started)


def waiting(cfg: DictConfig, steps: int) -> dict[str, float]:
    """The real loop's wait share after its first step, and that first step's wait."""
    with built_run(cfg) as run:
        engine = EngineLoop(run)
        engine.warm_up(1)
        timed = TimedData(run.data, run.device, limit=steps)
        engine.timed_epoch(timed)
    later_waits, later_steps = timed.waits[1:], timed.steps[1:]
    return {
        "share": sum(later_waits) / sum(later_steps),
        "first_wait_s": timed.waits[0],
        "step_s": median(later_steps),
        "workers": int(cfg.dataset.num_workers),
    }


def one_thread(measure: Callable[[], float]) -> float:
    """`measure()` with torch's intra-op threads set to 1 (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measure()
    finally:
        torch.set_num_threads(threads)


def measure_loader(
    settings: Settings, loader: str, root: Path, train: int, steps: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median images/s at each number of loader processes, and with none on one torch
    thread (after one warm-up epoch, in alternating rounds); the wait share at the default
    number of processes."""
    measures: dict[str, Callable[[], float]] = {
        str(workers): partial(
            images_per_second, loader_config(settings, loader, root, train), settings, workers
        )
        for workers in WORKERS
    }
    measures["0, 1 thread"] = partial(one_thread, measures["0"])
    measures["0"]()  # warm-up: the first epoch in a process pays one-off initialisation
    rates = alternate(measures, settings.pick(Rounds(2, 2, 0.0), Rounds(3, 5, 60.0)))
    medians = {name: median(values) for name, values in rates.items()}
    return medians, waiting(loader_config(settings, loader, root, train), steps)


def rows_of(name: str, rates: dict[str, float], wait: dict[str, float]) -> list[list[str]]:
    rate_text = " / ".join(f"{rates[str(workers)]:,.0f}" for workers in WORKERS)
    return [
        [f"{name}: images/s with 0 / 2 / 4 loader processes", rate_text, "", ""],
        [
            f"{name}: images/s with 0 processes on 1 torch thread",
            f"{rates['0, 1 thread']:,.0f}",
            "",
            "",
        ],
        [
            f"{name}: wait ÷ step, {wait['workers']} processes (the default; step "
            f"{wait['step_s']:.2f} s; first wait {wait['first_wait_s']:.2f} s)",
            f"{100 * wait['share']:.1f}%",
            f"≤ {100 * WAIT_GOAL:.0f}%",
            verdict(wait["share"] <= WAIT_GOAL),
        ],
    ]


def measure(settings: Settings) -> Section:
    scenes, photos = settings.pick(16, 48), 32 * settings.pick(4, 9)  # batches of 2 and 32
    steps = settings.pick(3, 8)  # timed steps of the real loop, after its first
    rows: list[list[str]] = []
    data: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="mtlrun-loaders-") as folder:
        base = Path(folder)
        jpeg, png = (write_photos(base / kind, photos, kind) for kind in ("jpg", "png"))
        cases: Sequence[tuple[str, str, Path, int]] = (
            ("nyuv2 288×384 .npy, batch 2", "nyuv2", write_nyuv2(base / "nyuv2", scenes), scenes),
            ("folder JPEG 500×375 → 224, batch 32", "folder", jpeg, photos),
            ("folder PNG 500×375 → 224, batch 32", "folder", png, photos),
        )
        for name, loader, root, count in cases:
            rates, wait = measure_loader(settings, loader, root, count, steps)
            rows += rows_of(name, rates, wait)
            data[name] = {"images_per_s": rates, "wait": wait}
    notes = [
        f"images/s: one epoch of the data source alone ({scenes} nyuv2 scenes, {photos} "
        "photographs), loader start-up included (paid at every epoch), with the protocols' "
        "training augmentation.",
        f"wait ÷ step: {steps} steps of the real loop after its first, with the protocol's "
        "model (nyuv2: experiment=nyuv2; folder: experiment=oxford_pets' ResNet-18 + FPN with "
        "a cls head); the first step's wait is the loader processes' start-up.",
    ]
    return Section("8. File loaders", ["measure", "value", "goal", "verdict"], rows, notes, data)

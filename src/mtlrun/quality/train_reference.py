"""Train a reference network and write its shipped weights file.

    python -m mtlrun.quality.train_reference shapes [--steps 600]
    python -m mtlrun.quality.train_reference mnist --set root=/path/holding/MNIST

The name is a dataset config of conf/dataset/ whose dataset has `cls` and `seg` targets; it
is built by that file's `_target_` (`mnist`: `mtlrun.data.mnist.MNISTData`) with that file's
parameters (the same images a run sees), overridable with --set. A dataset read from files
finds them under the file's `root` (`data`, relative to the working directory, as for a run)
unless `--set root=...` says where. The shipped references:

    shapes  600 steps of 128 (the defaults)
    mnist   600 steps of 128 on all 60000 training digits (the defaults), evaluated on the
            10000 test digits: `--set root=` the folder holding MNIST/raw/

The network learns image classes and per-pixel classes (cross-entropy on both) so that its
features know what the dataset's objects look like. Training is deterministic: fixed seed,
fixed thread count and deterministic algorithms, so the same command on the same software
writes the same weights. The file records the constructor arguments, a SHA-256 of the weights,
the validation accuracy and mIoU, and how it was trained.
"""

import argparse
import importlib
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor

from mtlrun.errors import UserError
from mtlrun.quality.features import ReferenceNetwork, reference_path, state_dict_sha256
from mtlrun.tasks.metrics import ConfusionMatrix

SEED = 0
THREADS = 1  # fixed, as reductions may round differently; one thread also wastes no time
# spinning when the CPU is shared (two threads took 3.5x the CPU time per step there)


@dataclass
class Recipe:
    """What one reference network trains on.

    Attributes:
        train_batches: yields (images, class labels, per-pixel labels), endlessly.
        val_batches: the same triples over the validation split.
        num_classes: classes of the image-level labels.
        seg_classes: classes of the per-pixel labels, background included.
        data: the dataset's parameters, recorded in the weights file.
    """

    train_batches: Iterator[tuple[Tensor, Tensor, Tensor]]
    val_batches: list[tuple[Tensor, Tensor, Tensor]]
    num_classes: int
    seg_classes: int
    data: dict[str, Any]


def dataset_recipe(name: str, batch_size: int, overrides: dict[str, Any]) -> Recipe:
    """The dataset of conf/dataset/<name>.yaml with that file's parameters (plus `overrides`),
    training on its `cls` and `seg` targets."""
    from mtlrun.cli import config_dir

    path = config_dir() / "dataset" / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"no dataset config {path}; reference networks train on a dataset of conf/")
    config = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(config, dict)
    module_name, _, class_name = str(config["_target_"]).rpartition(".")
    data_class = getattr(importlib.import_module(module_name), class_name)
    parameters = {str(key): value for key, value in config.items() if not str(key).startswith("_")}
    parameters.update(overrides)
    data = data_class(**parameters, batch_size=batch_size, shuffle_seed=SEED)
    if not {"cls", "seg"} <= data.info.targets:
        raise UserError(f"dataset {name} lacks a cls or seg target, which references train on")

    def triple(batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        return batch["image"], batch["targets"]["cls"], batch["targets"]["seg"]

    def train() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for epoch in itertools.count():
            yield from map(triple, data.train_batches(epoch))

    classes = data.info.num_classes
    val = [triple(batch) for batch in data.val_batches()]
    return Recipe(train(), val, classes["cls"], classes["seg"], parameters)


@torch.no_grad()
def evaluate(network: ReferenceNetwork, batches: list[tuple[Tensor, Tensor, Tensor]]) -> dict:
    """Validation classification accuracy and segmentation mIoU."""
    network.eval()
    classes = ConfusionMatrix(network.num_classes)
    pixels = ConfusionMatrix(network.seg_classes)
    for images, labels, seg in batches:
        classes.update(network.classify(images).argmax(dim=1), labels)
        pixels.update(network.segment(images).argmax(dim=1), seg)
    return {"val_cls_accuracy": classes.accuracy(), "val_seg_miou": pixels.mean_iou()}


def optimise(
    network: ReferenceNetwork,
    batches: Iterator[tuple[Tensor, Tensor, Tensor]],
    steps: int,
    learning_rate: float,
) -> float:
    """Train `network` on `steps` batches with cross-entropy on both outputs (AdamW, linear
    warm-up then cosine decay), printing the loss now and then; return the seconds taken."""
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    # Linear warm-up then cosine decay: stable from the first step, settled at the end.
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / steps))),
    )
    start = time.perf_counter()
    network.train()
    for step in range(steps):
        images, labels, seg = next(batches)
        class_logits, seg_logits = network.classify_and_segment(images)
        loss = F.cross_entropy(class_logits, labels) + F.cross_entropy(seg_logits, seg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(
                f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    return time.perf_counter() - start


def train(
    name: str,
    steps: int,
    batch_size: int,
    learning_rate: float,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the reference network `name`, write its weights file and return its metadata."""
    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    recipe = dataset_recipe(name, batch_size, overrides or {})
    network = ReferenceNetwork(recipe.num_classes, recipe.seg_classes)
    seconds = optimise(network, recipe.train_batches, steps, learning_rate)
    metrics = evaluate(network, recipe.val_batches)
    state_dict = {key: value.detach().clone() for key, value in network.state_dict().items()}
    saved = {
        "config": {"num_classes": recipe.num_classes, "seg_classes": recipe.seg_classes},
        "state_dict": state_dict,
        "sha256": state_dict_sha256(state_dict),
        "metrics": metrics,
        "training": {
            "dataset": name,
            "data": recipe.data,
            "steps": steps,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "seed": SEED,
            "threads": THREADS,
            "seconds": round(seconds, 1),
            "torch": str(
                torch.__version__
            ),  # a plain str: weights_only loading refuses TorchVersion
        },
    }
    path = reference_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(saved, path)
    print(
        f"{name}: val cls accuracy {metrics['val_cls_accuracy']:.4f}, "
        f"val seg mIoU {metrics['val_seg_miou']:.4f}, trained in {seconds:.0f} s; wrote {path}"
    )
    return saved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="a dataset of conf/dataset/ with cls and seg targets")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a dataset parameter, e.g. --set root=/data/mnist (repeatable)",
    )
    args = parser.parse_args(argv)
    dotlist = OmegaConf.to_container(OmegaConf.from_dotlist(args.set))
    assert isinstance(dotlist, dict)
    overrides = {str(key): value for key, value in dotlist.items()}
    try:
        train(args.name, args.steps, args.batch_size, args.learning_rate, overrides)
    except UserError as error:
        # Dataset errors name run overrides (dataset.root=...); here they are --set root=...
        message = str(error).replace("pass dataset.", "pass --set ")
        raise SystemExit(f"train_reference: error: {message}") from None


if __name__ == "__main__":
    main()

"""MultiMNIST on real digits (the subset committed in tests/data/multi_mnist: the first 2500
training and 500 test digits of MNIST): the loader reads the gzipped files, the LeNet of
Sener & Koltun 2018 is their model, class heads keep positions with `pool: flatten` (sized
for one input, checked before training), and `experiment=multi_mnist` learns both digits."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import BuildRun, compose_config
from fakes import write_mnist
from mtlrun.build import build
from mtlrun.data import DatasetInfo
from mtlrun.data.multi_mnist import MultiMNISTData
from mtlrun.engine import fit
from mtlrun.errors import UserError
from mtlrun.models.backbones import ConvNet, LeNet
from mtlrun.models.heads import CheckedFlatten
from mtlrun.tasks.classification import ClassificationTask

SUBSET = Path(__file__).parent / "data" / "multi_mnist"
RAW = SUBSET / "MNIST" / "raw"
DIGITS = DatasetInfo(
    name="multi_mnist",
    image_size=(28, 28),
    targets=frozenset({"left"}),
    num_classes={"left": 10},
)


def labels(prefix: str) -> list[int]:
    """A committed label file, read with nothing but gzip (header: 8 bytes)."""
    return list(gzip.decompress((RAW / f"{prefix}-labels-idx1-ubyte.gz").read_bytes())[8:])


def test_the_gzipped_subset_is_read_in_file_order() -> None:
    data = MultiMNISTData(str(SUBSET), num_workers=0, batch_size=100)
    assert (data.train_count, data.val_count) == (2500, 500)
    batches = list(data.val_batches())
    assert [int(x) for b in batches for x in b["targets"]["left"]] == labels("t10k")
    images = batches[0]["image"]
    assert images.shape == (100, 3, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.mean() > 0.05
    assert sum(path.stat().st_size for path in RAW.iterdir()) < 600_000


def test_gzipped_and_plain_files_give_the_same_images(tmp_path: Path) -> None:
    plain = write_mnist(tmp_path / "plain")
    zipped = tmp_path / "zipped" / "MNIST" / "raw"
    zipped.mkdir(parents=True)
    for path in (plain / "MNIST" / "raw").iterdir():
        (zipped / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))

    def first(root: Path) -> torch.Tensor:
        data = MultiMNISTData(str(root), num_workers=0, batch_size=2)
        return next(iter(data.val_batches()))["image"]

    assert torch.equal(first(plain), first(tmp_path / "zipped"))


def test_lenet_is_the_model_of_sener_and_koltun() -> None:
    """conv(3->10, 5x5), conv(10->20, 5x5), then 20 x 4 x 4 = 320 flattened values into the
    shared 50-unit layer at 28 x 28; any other size reaches the same 4 x 4 grid."""
    network = LeNet()
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(320, 50)]
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in convs] == [
        (3, 10, (5, 5)),
        (10, 20, (5, 5)),
    ]
    assert network(torch.rand(2, 3, 28, 28)).shape == (2, 50, 1, 1)
    assert network(torch.rand(2, 3, 40, 36)).shape == (2, 50, 1, 1)
    assert network.out_channels == 50


def test_lenet_keeps_where_things_are() -> None:
    """The same stroke on the left or on the right of the image gives different features
    (a pooled network would give the same)."""
    torch.manual_seed(0)
    network = LeNet().eval()
    left, right = torch.zeros(1, 3, 28, 28), torch.zeros(1, 3, 28, 28)
    left[..., 4:14, 4:8], right[..., 4:14, 20:24] = 1.0, 1.0
    assert not torch.allclose(network(left), network(right))


def test_flatten_head_is_sized_for_the_image_at_the_stride() -> None:
    task = ClassificationTask(
        "left", DIGITS, in_channels=8, stride=4, target="left", pool="flatten"
    )
    linear = next(m for m in task.head.modules() if isinstance(m, nn.Linear))
    assert linear.in_features == 8 * 7 * 7
    assert task.head(torch.rand(2, 8, 7, 7)).shape == (2, 10)
    with pytest.raises(UserError, match=r"7x7 features but got 8x8.*tasks\.left\.pool=avg"):
        task.head(torch.rand(2, 8, 8, 8))
    pooled = ClassificationTask("left", DIGITS, in_channels=8, stride=4, target="left")
    assert pooled.head(torch.rand(2, 8, 8, 8)).shape == (2, 10)  # avg: any size


def test_unknown_pool_is_one_line() -> None:
    with pytest.raises(UserError, match=r"tasks\.left\.pool=max is unknown.*avg, flatten"):
        ClassificationTask("left", DIGITS, in_channels=8, stride=4, target="left", pool="max")


def test_flatten_head_reads_the_position_pooling_loses() -> None:
    """A feature map that differs only by where its one active cell is: pooled, the two are
    the same vector; flattened, they are not."""
    flatten = CheckedFlatten((2, 2), "test", "none")
    first, second = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    first[..., 0, 0], second[..., 1, 1] = 1.0, 1.0
    assert torch.equal(first.mean((2, 3)), second.mean((2, 3)))
    assert not torch.equal(flatten(first), flatten(second))


def test_a_head_that_cannot_read_the_features_stops_the_build(
    build_tiny_run: BuildRun, tmp_path: Path
) -> None:
    """LeNet's one feature cell against a flatten head sized for 64 px at stride 32 (2 x 2):
    one line at build, before any training."""
    root = write_mnist(tmp_path / "data")
    with pytest.raises(UserError, match=r"tasks\.left \(pool=flatten.*2x2 features but got 1x1"):
        build_tiny_run(
            tmp_path / "run",
            "backbone=lenet",
            "tasks=[left,right]",
            "dataset=multi_mnist",
            f"dataset.root={root}",
            "dataset.num_workers=0",
            "dataset.image_size=64",
            "trainer.batch_size=2",
        )


def test_the_protocol_runs_on_cnn_features_with_flatten_heads(
    build_tiny_run: BuildRun, tmp_path: Path
) -> None:
    """The left/right options flatten by default; on the cnn backbone they are sized for its
    features at the tiny image size and build."""
    root = write_mnist(tmp_path / "data")
    run = build_tiny_run(
        tmp_path / "run",
        "tasks=[left,right]",
        "dataset=multi_mnist",
        f"dataset.root={root}",
        "dataset.num_workers=0",
        "trainer.batch_size=2",
    )
    assert isinstance(run.model.backbone, ConvNet)
    assert any(isinstance(m, CheckedFlatten) for m in run.model.heads["left"].modules())


# What shrinks the protocol to a CI check on the committed subset: 16 epochs of 2500 images
# at a constant, larger learning rate (about a minute on 2 CPU cores).
SUBSET_OVERRIDES = (
    "experiment=multi_mnist",
    f"dataset.root={SUBSET}",
    "dataset.num_workers=0",
    "trainer.epochs=16",
    "trainer.batch_size=32",
    "optimizer.lr=2e-3",
    "scheduler.step_size=100",
    "trainer.device=cpu",
    "trainer.progress=none",
    "trainer.threads=1",  # a network this small gains nothing from more, and CI shares cores
)


@pytest.mark.slow
def test_multi_mnist_learns_both_digits_of_real_images(tmp_path: Path) -> None:
    """The issue's bar: at least 0.80 left and right accuracy on real two-digit images (the
    pooled heads this replaced stayed near 0.3-0.5)."""
    run = build(compose_config(*SUBSET_OVERRIDES, tiny=False), tmp_path)
    assert isinstance(run.model.backbone, LeNet)
    metrics = fit(run)
    assert metrics["val/left/acc"] >= 0.80, metrics
    assert metrics["val/right/acc"] >= 0.80, metrics
    assert np.isfinite(metrics["val/left/loss"])

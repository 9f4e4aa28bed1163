"""`dataset=mnist` on the real MNIST subset committed in tests/data/mnist (the first 1000
training and 300 test digits, written by tests/data/make_mnist_subset.py): the batch
contract, targets that agree with the files and the image, a seeded order, one-line errors,
and real digits that a small classifier learns through this loader."""

import gzip
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mtlrun.data.mnist import MNISTData, read_idx
from mtlrun.errors import UserError

SUBSET = Path(__file__).parent / "data" / "mnist"
RAW = SUBSET / "MNIST" / "raw"
BATCH = 50


def open_mnist(root: Path = SUBSET, **settings: Any) -> MNISTData:
    return MNISTData(str(root), **{"num_workers": 0, "batch_size": BATCH, **settings})


def idx(name: str, dimensions: int) -> np.ndarray:
    """A committed file, read with nothing but gzip and numpy (header: 4 + 4 * dims bytes)."""
    raw = gzip.decompress((RAW / f"{name}.gz").read_bytes())
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dimensions)


def test_the_committed_subset_is_what_the_tests_expect() -> None:
    assert read_idx(RAW / "train-images-idx3-ubyte.gz", 3).shape == (1000, 28, 28)
    assert read_idx(RAW / "t10k-labels-idx1-ubyte.gz", 1).shape == (300,)
    assert sum(path.stat().st_size for path in RAW.iterdir()) < 600_000


@pytest.mark.parametrize(("image_size", "fit"), [(32, "pad"), (None, "pad"), (20, "resize")])
def test_batches_keep_the_contract(image_size: int | None, fit: str) -> None:
    data = open_mnist(image_size=image_size, fit=fit)
    side = image_size or 28
    assert data.info.image_size == (side, side)
    assert data.info.num_classes == {"cls": 10, "seg": 11}
    assert data.info.class_names["seg"] == ["background", *"0123456789"]
    assert (data.train_count, data.val_count, data.num_train_batches()) == (1000, 300, 20)
    for batch in [next(iter(data.train_batches(0))), *data.val_batches()]:
        images, targets = batch["image"], batch["targets"]
        assert set(targets) == {"cls", "seg", "gen"}
        assert images.dtype == torch.float32 and images.shape == (BATCH, 3, side, side)
        assert images.min() == 0.0 and images.max() <= 1.0 and images.max() > 0.9
        assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
        assert targets["cls"].dtype == torch.int64 and targets["cls"].shape == (BATCH,)
        assert targets["seg"].dtype == torch.int64 and targets["seg"].shape == (BATCH, side, side)
        assert torch.equal(targets["gen"], images)
        # the layout: digit + 1 exactly where the image is bright, background elsewhere
        bright = images[:, 0] > 0.5
        expected = torch.where(bright, targets["cls"][:, None, None] + 1, 0)
        assert torch.equal(targets["seg"], expected)
        assert bright.flatten(1).any(1).all()  # every digit has some ink


def test_values_are_the_files_digits_and_labels() -> None:
    images = idx("t10k-images-idx3-ubyte", 3).reshape(-1, 28, 28)
    labels = idx("t10k-labels-idx1-ubyte", 1)
    batches = list(open_mnist().val_batches())
    seen = torch.cat([batch["targets"]["cls"] for batch in batches])
    assert seen.tolist() == labels.tolist()  # in file order
    first = batches[0]["image"][:, 0]
    assert torch.equal(first[:, 2:30, 2:30], torch.from_numpy(images[:BATCH] / 255).float())
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (first[:, border] == 0).all()  # padded with black, white digit on it


def test_gunzipped_files_read_the_same(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in RAW.iterdir():
        (raw / path.stem).write_bytes(gzip.decompress(path.read_bytes()))
    ours = next(iter(open_mnist(tmp_path).val_batches()))
    theirs = next(iter(open_mnist().val_batches()))
    assert torch.equal(ours["image"], theirs["image"])
    assert torch.equal(ours["targets"]["seg"], theirs["targets"]["seg"])


def test_the_order_is_fixed_by_the_seed_and_epoch() -> None:
    def labels(seed: int, epoch: int) -> list[int]:
        data = open_mnist(shuffle_seed=seed, train_size=200)
        return torch.cat([b["targets"]["cls"] for b in data.train_batches(epoch)]).tolist()

    assert labels(0, 0) == labels(0, 0)
    assert labels(0, 0) != labels(1, 0) and labels(0, 0) != labels(0, 1)
    assert sorted(labels(0, 0)) == sorted(labels(1, 0))  # the same 200 digits, reordered


def one_line(make: Any, *named: str) -> None:
    with pytest.raises(UserError) as raised:
        make()
    message = str(raised.value)
    assert "\n" not in message
    for part in named:
        assert part in message, (part, message)


def test_missing_or_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    one_line(lambda: open_mnist(missing), str(missing), "MNIST/raw/", "Get it from")
    root = tmp_path / "copy"
    shutil.copytree(SUBSET, root)
    (root / "MNIST/raw/t10k-labels-idx1-ubyte.gz").unlink()
    one_line(lambda: open_mnist(root), "t10k-labels-idx1-ubyte", "not found")
    (root / "MNIST/raw/t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    one_line(lambda: open_mnist(root), "t10k-labels-idx1-ubyte.gz", "expected")
    one_line(lambda: open_mnist(image_size=20), "dataset.fit=resize")


def test_real_digits_are_learnable_through_the_loader() -> None:
    """A small CNN, 300 Adam steps on the 1000 committed training digits, classifies the 300
    committed test digits with >= 80% accuracy (0.92 measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a net this small only waits on a second thread
    try:
        accuracy = train_and_test_a_small_classifier(open_mnist(batch_size=50), epochs=15)
    finally:
        torch.set_num_threads(threads)
    print(f"mnist subset test accuracy after 300 steps: {accuracy:.3f}")
    assert accuracy >= 0.8


def train_and_test_a_small_classifier(data: MNISTData, epochs: int) -> float:
    """Train a two-convolution classifier on `data`'s training batches; its test accuracy."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(),  # 16 x 16
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),  # 8 x 8
        nn.Flatten(), nn.Linear(16 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(epochs):
        for batch in data.train_batches(epoch):
            loss = nn.functional.cross_entropy(model(batch["image"]), batch["targets"]["cls"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        right = sum(
            int((model(batch["image"]).argmax(1) == batch["targets"]["cls"]).sum())
            for batch in data.val_batches()
        )
    return right / data.val_count

"""Sample-quality metrics against independent numpy/scipy computations, and the shipped
reference network on real and degenerate ("collapsed generator") shapes images."""

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
from torch import nn

from mtlrun.data.shapes import ShapesData
from mtlrun.errors import UserError
from mtlrun.quality import (
    DIRECTIONS,
    InceptionFeatures,
    ReferenceNetwork,
    SampleQuality,
    feature_network,
    frechet_distance,
    kernel_inception_distance,
    load_reference,
    precision_recall,
)
from mtlrun.quality import features as features_module
from mtlrun.quality.features import INCEPTION_FILE, reference_path
from mtlrun.tasks.metrics import ConfusionMatrix

# What the shipped shapes reference measured on the validation split when it was trained,
# less a margin for other CPUs' rounding.
MIN_ACCURACY = 0.85  # measured 0.885 on all 2000 validation images
MIN_MIOU = 0.8  # measured 0.837


def feature_pair(n_real: int, n_fake: int, dim: int, seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    real = torch.randn(n_real, dim, generator=generator, dtype=torch.float64)
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64) / dim**0.5
    fake = torch.randn(n_fake, dim, generator=generator, dtype=torch.float64) @ mixing + 0.3
    return real, fake


def scipy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    mean_real, mean_fake = real.mean(axis=0), fake.mean(axis=0)
    cov_real, cov_fake = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(cov_real @ cov_fake).real
    return float(
        np.sum((mean_real - mean_fake) ** 2)
        + np.trace(cov_real)
        + np.trace(cov_fake)
        - 2 * np.trace(root)
    )


def loop_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² estimator written as its defining sums."""

    def kernel(a: np.ndarray, b: np.ndarray) -> float:
        return (float(a @ b) / len(a) + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(kernel(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
    xy = sum(kernel(x[i], y[j]) for i in range(m) for j in range(n))
    return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)


def brute_force_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple:
    def radii(points: np.ndarray) -> list[float]:
        result = []
        for i, point in enumerate(points):
            others = [np.linalg.norm(point - other) for j, other in enumerate(points) if j != i]
            result.append(sorted(others)[k - 1])
        return result

    def fraction_inside(queries: np.ndarray, references: np.ndarray) -> float:
        reference_radii = radii(references)
        inside = [
            any(
                np.linalg.norm(query - reference) <= radius
                for reference, radius in zip(references, reference_radii, strict=True)
            )
            for query in queries
        ]
        return sum(inside) / len(queries)

    return fraction_inside(fake, real), fraction_inside(real, fake)


@pytest.mark.parametrize(("n_real", "n_fake", "dim"), [(50, 60, 4), (300, 200, 16), (40, 90, 32)])
def test_frechet_distance_matches_scipy(n_real: int, n_fake: int, dim: int) -> None:
    real, fake = feature_pair(n_real, n_fake, dim, seed=dim)
    expected = scipy_fid(real.numpy(), fake.numpy())
    assert frechet_distance(real, fake) == pytest.approx(expected, rel=1e-3)
    # float32 input on any device is computed in float64 all the same.
    assert frechet_distance(real.float(), fake.float()) == pytest.approx(expected, rel=1e-3)


def test_frechet_distance_of_a_set_with_itself_is_zero() -> None:
    real, _ = feature_pair(100, 2, 64, seed=1)  # N > D
    assert abs(frechet_distance(real, real)) < 1e-8 * float(real.var(0).sum())
    few, _ = feature_pair(20, 2, 64, seed=2)  # N < D: a singular covariance
    assert abs(frechet_distance(few, few)) < 1e-6 * float(few.var(0).sum())


@pytest.mark.parametrize(("n_real", "n_fake", "dim"), [(12, 12, 3), (30, 25, 8)])
def test_kernel_distance_on_whole_sets_matches_the_defining_sums(
    n_real: int, n_fake: int, dim: int
) -> None:
    real, fake = feature_pair(n_real, n_fake, dim, seed=dim)
    # subset_size is clipped to the smaller set; with equal sets every subset is a permutation
    # of the whole set, and the estimator does not depend on the order.
    size = min(n_real, n_fake)
    expected = loop_mmd2(real[:size].numpy(), fake[:size].numpy())
    mean, std = kernel_inception_distance(real[:size], fake[:size], subsets=4, subset_size=1000)
    assert mean == pytest.approx(expected, rel=1e-3)
    assert std == pytest.approx(0.0, abs=1e-9 * abs(expected))


def test_kernel_distance_subsets_are_seeded() -> None:
    real, fake = feature_pair(200, 150, 8, seed=3)
    first = kernel_inception_distance(real, fake, subsets=5, subset_size=20, seed=7)
    assert kernel_inception_distance(real, fake, subsets=5, subset_size=20, seed=7) == first
    assert kernel_inception_distance(real, fake, subsets=5, subset_size=20, seed=8) != first
    assert first[1] > 0
    # Near-equal distributions score near 0 (the estimator is unbiased, so it may dip below).
    same, _ = feature_pair(200, 2, 8, seed=4)
    other, _ = feature_pair(200, 2, 8, seed=5)
    assert abs(kernel_inception_distance(same, other)[0]) < 0.1 * first[0]


@pytest.mark.parametrize(("k", "batch_size"), [(1, 1024), (3, 7), (5, 16)])
def test_precision_recall_matches_brute_force(k: int, batch_size: int) -> None:
    real, fake = feature_pair(40, 30, 5, seed=k)
    expected = brute_force_precision_recall(real.numpy(), fake.numpy(), k)
    assert precision_recall(real, fake, k=k, batch_size=batch_size) == expected
    assert precision_recall(real, real, k=k, batch_size=batch_size) == (1.0, 1.0)


def test_metric_inputs_are_checked() -> None:
    real, fake = feature_pair(10, 3, 4, seed=0)
    with pytest.raises(ValueError, match="more than k"):
        precision_recall(real, fake, k=3)
    with pytest.raises(ValueError, match="equal feature sizes"):
        frechet_distance(real, real[:, :2])


class FlattenFeatures(nn.Module):
    """A tiny fixed feature module for SampleQuality's bookkeeping tests."""

    def __init__(self) -> None:
        super().__init__()
        self.projection = nn.Linear(3 * 4 * 4, 6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(images.flatten(1))


def test_sample_quality_accumulates_batches_like_the_functions() -> None:
    torch.manual_seed(0)
    module = FlattenFeatures()
    quality = SampleQuality(module, k=2, kid_subsets=3, kid_subset_size=10, seed=1)
    real_images, fake_images = torch.rand(24, 3, 4, 4), torch.rand(18, 3, 4, 4) ** 2
    for real_batch, fake_batch in zip(real_images.split(10), fake_images.split(7), strict=True):
        quality.update_real(real_batch)
        quality.update_fake(fake_batch)
    metrics = quality.compute()
    with torch.no_grad():
        real, fake = module(real_images).double(), module(fake_images).double()
    assert set(metrics) == set(DIRECTIONS)
    assert metrics["fid"] == pytest.approx(frechet_distance(real, fake), rel=1e-6)
    expected_kid = kernel_inception_distance(real, fake, subsets=3, subset_size=10, seed=1)[0]
    assert metrics["kid"] == pytest.approx(expected_kid, rel=1e-6)
    assert (metrics["precision"], metrics["recall"]) == precision_recall(real, fake, k=2)
    quality.reset()
    with pytest.raises(ValueError, match="no real"):
        quality.compute()


@pytest.fixture(scope="module")
def shapes() -> ShapesData:
    return ShapesData(batch_size=250)  # the defaults are conf/dataset/shapes.yaml's


@pytest.fixture(scope="module")
def reference() -> ReferenceNetwork:
    return load_reference("shapes")


def first_images(data: ShapesData, split: str, count: int) -> torch.Tensor:
    return data.generate(split, torch.arange(count))["image"]


def test_shipped_reference_classifies_and_segments_real_images(
    shapes: ShapesData, reference: ReferenceNetwork
) -> None:
    classes, pixels = ConfusionMatrix(5), ConfusionMatrix(6)
    with torch.no_grad():
        for batch in itertools.islice(shapes.val_batches(), 4):  # 1000 images
            class_logits = reference.classify(batch["image"])
            seg_logits = reference.segment(batch["image"])
            classes.update(class_logits.argmax(1), batch["targets"]["cls"])
            pixels.update(seg_logits.argmax(1), batch["targets"]["seg"])
    assert classes.accuracy() >= MIN_ACCURACY
    assert pixels.mean_iou() >= MIN_MIOU
    recorded = torch.load(reference_path("shapes"), weights_only=True)["metrics"]
    assert recorded["val_cls_accuracy"] >= MIN_ACCURACY
    assert recorded["val_seg_miou"] >= MIN_MIOU


def test_reference_network_accepts_other_sizes(reference: ReferenceNetwork) -> None:
    images = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        assert reference.features(images).shape == (2, ReferenceNetwork.feature_dim)
        assert reference(images).shape == (2, ReferenceNetwork.feature_dim)
        assert reference.classify(images).shape == (2, 5)
        assert reference.segment(images).shape == (2, 6, 48, 40)
    assert isinstance(feature_network("shapes"), ReferenceNetwork)


def test_collapsed_generators_score_worse_than_real_images(
    shapes: ShapesData, reference: ReferenceNetwork
) -> None:
    count = 500
    real = first_images(shapes, "val", count)
    candidates = {
        "copy": real.clone(),
        "train": first_images(shapes, "train", count),
        "one_image": real[:1].expand(count, -1, -1, -1),
        "flat_colour": torch.full_like(real, 0.5),
    }
    scores = {}
    for name, images in candidates.items():
        quality = SampleQuality(reference)
        quality.update_real(real)
        quality.update_fake(images)
        scores[name] = quality.compute()
    assert scores["copy"]["recall"] == 1.0 and scores["copy"]["precision"] == 1.0
    assert abs(scores["copy"]["fid"]) < 1e-6
    assert scores["train"]["recall"] > 0.5 and scores["train"]["precision"] > 0.5
    for collapsed in ("one_image", "flat_colour"):
        assert scores[collapsed]["recall"] < 0.05
        assert scores[collapsed]["fid"] > 10 * scores["train"]["fid"]
        assert scores[collapsed]["kid"] > 10 * scores["train"]["kid"]


def assert_one_line_naming(error: pytest.ExceptionInfo[UserError], path: object) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message


def test_missing_reference_is_one_line_naming_the_file_and_the_fix() -> None:
    with pytest.raises(UserError) as error:
        load_reference("no_such_reference")
    assert_one_line_naming(error, reference_path("no_such_reference"))
    assert "python -m mtlrun.quality.train_reference no_such_reference" in str(error.value)


def test_tampered_reference_fails_its_hash(tmp_path, monkeypatch) -> None:
    saved = torch.load(reference_path("shapes"), weights_only=True)
    saved["state_dict"]["classifier.bias"] += 1
    torch.save(saved, tmp_path / "shapes.pth")
    monkeypatch.setattr(features_module, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(UserError, match="SHA-256") as error:
        load_reference("shapes")
    assert_one_line_naming(error, tmp_path / "shapes.pth")


def test_inception_without_the_cached_file_is_one_line_naming_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError) as error:
        feature_network("inception")
    assert_one_line_naming(error, tmp_path / "checkpoints" / INCEPTION_FILE)
    assert "IMAGENET1K_V1" in str(error.value)


def test_inception_reads_the_cached_file_only(tmp_path, monkeypatch) -> None:
    # A randomly initialised checkpoint stands in for the real one: same names and shapes.
    (tmp_path / "checkpoints").mkdir()
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(model.state_dict(), tmp_path / "checkpoints" / INCEPTION_FILE)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("InceptionFeatures tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    network = InceptionFeatures()
    with torch.no_grad():
        features = network(torch.rand(2, 3, 32, 32))
    assert features.shape == (2, 2048)
    assert torch.isfinite(features).all()

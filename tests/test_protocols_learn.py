"""The protocol experiments learn: `experiment=nyuv2`, `cityscapes`, `celeba` and
`oxford_pets`, each shrunk (a few dozen small images, a few epochs, one CPU thread; 25-60 s each, so
marked slow) and run
on a fake in the dataset's real on-disk format whose targets are functions of the pixels
(`tests/learnable_fakes.py`), must beat chance by a wide margin on the validation split.

Each test states its chance level: the best a prediction that ignores the image can do,
computed on the validation targets themselves (so it flatters chance): the majority class's
pixel accuracy, the median depth's error, the mean normal's angle, the majority answer of
each attribute. The protocol's model, optimiser, learning rate and schedule are kept; only the
data, the image size, the batch size and the number of epochs shrink.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_config
from fakes import CELEBA_ATTRIBUTES
from learnable_fakes import (
    PET_BREEDS,
    write_learnable_celeba,
    write_learnable_cityscapes,
    write_learnable_nyuv2,
    write_learnable_pets,
)
from mtlrun.build import build
from mtlrun.data import DataSource
from mtlrun.engine import Run, fit

SHRINK = (
    "dataset.num_workers=0",
    "trainer.device=cpu",
    "trainer.progress=none",
    "trainer.threads=1",  # CI shares its cores
    "trainer.num_images=2",
)


def shrunk_run(output: Path, experiment: str, root: Path, *overrides: str) -> Run:
    """`experiment` on the files under `root`, shrunk by `SHRINK` and `overrides`."""
    config = compose_config(
        f"experiment={experiment}", f"dataset.root={root}", *SHRINK, *overrides, tiny=False
    )
    return build(config, output)


def val_targets(data: DataSource, name: str) -> torch.Tensor:
    """Every validation batch's target `name`, concatenated."""
    return torch.cat([batch["targets"][name] for batch in data.val_batches()])


def majority_pixel_accuracy(labels: torch.Tensor) -> float:
    valid = labels[labels >= 0]
    return float(torch.bincount(valid).max()) / valid.numel()


def constant_depth_error(depth: torch.Tensor) -> float:
    """The mean absolute error of the best constant (the median) over valid pixels."""
    valid = depth[depth > 0]
    return float((valid - valid.median()).abs().mean())


def constant_normal_angle(normal: torch.Tensor) -> float:
    """The mean angle in degrees between valid normals and their mean direction."""
    vectors = normal.permute(0, 2, 3, 1).reshape(-1, 3)
    vectors = vectors[vectors.abs().sum(-1) > 0]
    mean = vectors.mean(0) / vectors.mean(0).norm()
    return float(torch.rad2deg(torch.acos((vectors @ mean).clamp(-1, 1))).mean())


@pytest.mark.slow
def test_nyuv2_protocol_learns_rooms(tmp_path: Path) -> None:
    """3 epochs of 48 rooms at 48x64, batch 2 (the protocol's), ~45 s. Scale-crop is off: the
    fake shows distance as brightness, which a zoom leaves unchanged while it divides depth.
    Chance (measured on this fake): pixel accuracy ~0.38, mIoU ~0.04 (all wall), depth error
    ~1.0 m, normal angle ~48 degrees; measured after training: 0.69, 0.16, 0.66 m, 27 degrees."""
    root = write_learnable_nyuv2(tmp_path / "nyuv2")
    run = shrunk_run(
        tmp_path / "run", "nyuv2", root, "dataset.augment.scales=null", "trainer.epochs=3"
    )
    seg, depth, normal = (val_targets(run.data, name) for name in ("seg", "depth", "normal"))
    chance = {
        "pixel_acc": majority_pixel_accuracy(seg),
        "miou": majority_pixel_accuracy(seg) / len(seg.unique()[1:]),  # wall's IoU, averaged
        "depth": constant_depth_error(depth),
        "angle": constant_normal_angle(normal),
    }
    metrics = fit(run)
    assert metrics["val/seg/pixel_acc"] >= chance["pixel_acc"] + 0.15, (metrics, chance)
    assert metrics["val/seg/miou"] >= 3 * chance["miou"], (metrics, chance)
    assert metrics["val/depth/abs_err"] <= 0.8 * chance["depth"], (metrics, chance)
    assert metrics["val/normal/mean_angle"] <= 0.7 * chance["angle"], (metrics, chance)


@pytest.mark.slow
def test_cityscapes_protocol_learns_streets(tmp_path: Path) -> None:
    """6 epochs of 48 streets at 32x64, batch 8 (the protocol's), with the protocol's
    scale-crop and flip (disparity follows the zoom), ~45 s. Chance (measured on this fake):
    pixel accuracy ~0.45 (all road), mIoU ~0.065, disparity error ~1.3; measured after
    training: 0.66, 0.23, 0.69."""
    root = write_learnable_cityscapes(tmp_path / "cityscapes")
    run = shrunk_run(tmp_path / "run", "cityscapes", root, "trainer.epochs=6")
    seg, disparity = val_targets(run.data, "seg"), val_targets(run.data, "depth")
    chance = {
        "pixel_acc": majority_pixel_accuracy(seg),
        "miou": majority_pixel_accuracy(seg) / len(seg.unique()[1:]),
        "depth": constant_depth_error(disparity),
    }
    metrics = fit(run)
    assert metrics["val/seg/pixel_acc"] >= chance["pixel_acc"] + 0.12, (metrics, chance)
    assert metrics["val/seg/miou"] >= 2.5 * chance["miou"], (metrics, chance)
    assert metrics["val/depth/abs_err"] <= 0.75 * chance["depth"], (metrics, chance)


@pytest.mark.slow
def test_celeba_protocol_learns_all_40_attributes(tmp_path: Path) -> None:
    """40 tasks, one attribute each: 8 epochs of 192 faces at 32x32 with batch 16, ~28 s.
    Every attribute reads one of 8 drawn features, each present in half the faces: chance is
    the majority answer of each attribute on the validation faces (~0.5-0.6); measured after
    training: a mean of 0.97, the worst attribute 0.91."""
    root = write_learnable_celeba(tmp_path / "data")
    run = shrunk_run(
        tmp_path / "run", "celeba", root, "dataset.check_md5=false", "dataset.image_size=32",
        "trainer.epochs=8", "trainer.batch_size=16",
    )  # fmt: skip
    attributes = val_targets(run.data, "attr").float()
    chance = torch.maximum(attributes.mean(0), 1 - attributes.mean(0))  # per attribute
    metrics = fit(run)
    accuracy = torch.tensor([metrics[f"val/{name}/acc"] for name in CELEBA_ATTRIBUTES])
    assert len(run.tasks) == 40
    assert float(accuracy.mean()) >= 0.85, (accuracy, chance.mean())
    assert bool((accuracy >= chance + 0.2).all()), (accuracy, chance)


@pytest.mark.slow
def test_oxford_pets_protocol_learns_breed_species_and_trimap(tmp_path: Path) -> None:
    """8 epochs of 96 photographs of 4 breeds (2 cats, 2 dogs) at 64x64, batch 16, with the
    protocol's augmentation, ~30 s. Chance: breed 0.25 (the 4 breeds in turn; 1/37 for a
    uniform guess), species 0.5, trimap pixel accuracy ~0.6 (all background), mIoU ~0.2;
    measured after training: 1.0, 1.0, 0.81, 0.49."""
    root = write_learnable_pets(tmp_path / "data")
    run = shrunk_run(
        tmp_path / "run", "oxford_pets", root, "dataset.image_size=64", "trainer.epochs=8",
        "trainer.batch_size=16",
    )  # fmt: skip
    seg = val_targets(run.data, "seg")
    chance = {
        "cls": 1 / len(PET_BREEDS),
        "species": 0.5,
        "pixel_acc": majority_pixel_accuracy(seg),
        "miou": majority_pixel_accuracy(seg) / 3,
    }
    metrics = fit(run)
    assert metrics["val/cls/acc"] >= 0.7, (metrics, chance)
    assert metrics["val/species/acc"] >= 0.85, (metrics, chance)
    assert metrics["val/seg/pixel_acc"] >= chance["pixel_acc"] + 0.1, (metrics, chance)
    assert metrics["val/seg/miou"] >= 1.8 * chance["miou"], (metrics, chance)
    assert np.isfinite(metrics["val/seg/loss"])


@pytest.mark.slow
def test_celeba_landmarks_follow_the_drawn_features(tmp_path: Path) -> None:
    """Not a protocol of its own (experiment=celeba trains the attributes), but the fake's
    landmarks are where the eyes, nose and mouth corners are drawn, so `dataset=celeba
    'tasks=[landmarks]'` must localise them: 8 epochs of 192 faces at 64x64, batch 16, ~15 s.
    Chance: the mean training landmarks for every face, nme ~0.20 (in eye distances);
    measured after training: 0.08."""
    root = write_learnable_celeba(tmp_path / "data")
    config = compose_config(
        "dataset=celeba", "tasks=[landmarks]", f"dataset.root={root}",
        "dataset.check_md5=false", "dataset.image_size=64", "trainer.epochs=8",
        "trainer.batch_size=16", *SHRINK, tiny=False,
    )  # fmt: skip
    run = build(config, tmp_path / "run")
    train = torch.cat([b["targets"]["landmarks"] for b in run.data.train_batches(0)])
    val = val_targets(run.data, "landmarks")
    eyes = (val[:, 0] - val[:, 1]).norm(dim=-1)
    chance = float(((val - train.mean(0)).norm(dim=-1).mean(1) / eyes).mean())
    metrics = fit(run)
    assert metrics["val/landmarks/nme"] <= 0.6 * chance, (metrics, chance)

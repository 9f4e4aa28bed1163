"""`experiment=gan_mnist` on real digits (the committed subset of tests/data/mnist): a
class-conditional GAN whose samples the shipped MNIST reference classifier reads as the
digit they were generated for, far above chance, and not one image per digit."""

from pathlib import Path

import pytest

from conftest import compose_config
from mtlrun.build import build
from mtlrun.engine import fit

SUBSET = Path(__file__).parent / "data" / "mnist"
EPOCHS = 38  # 760 steps of 50 of the 1,000 digits


@pytest.mark.slow
def test_class_conditional_gan_draws_the_digits_it_is_asked_for(tmp_path: Path) -> None:
    cfg = compose_config(
        "experiment=gan_mnist",
        f"dataset.root={SUBSET}",
        "dataset.train_size=null",
        "dataset.val_size=null",
        "dataset.num_workers=0",
        "trainer.batch_size=50",
        f"trainer.epochs={EPOCHS}",
        f"trainer.eval_every_n_epochs={EPOCHS}",
        "tasks.gan.num_samples=300",
        "trainer.device=cpu",
        "trainer.progress=none",
        "trainer.threads=1",
        tiny=False,
    )
    metrics = fit(build(cfg, tmp_path))
    # Chance is 0.1; the reference reads 0.98 of the real validation digits.
    assert metrics["val/gan/class_accuracy_real"] >= 0.9, metrics
    assert metrics["val/gan/class_accuracy"] >= 0.6, metrics
    assert metrics["val/gan/recall"] >= 0.05, metrics  # not one image per digit

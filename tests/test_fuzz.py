"""Fuzz the command line: random mixes of valid and invalid overrides. Every one must either
train (exit 0, metrics written) or stop with exactly one line on stderr, a non-zero exit
and no traceback.

The combinations come from a seeded generator, so a failure names a reproducible command.
They run through `mtlrun.cli.main()` in this process (the same code path as the console
script, without paying the interpreter start-up 200 times).
"""

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from mtlrun.cli import config_dir
from processes import Finished

pytestmark = pytest.mark.slow  # many `mtlrun` subprocess runs

COMBINATIONS = 220
SEED = 20261124
# Every combination starts from a run of one or two steps of 8 images.
BASE = (
    "dataset.image_size=32",
    "dataset.train_size=8",
    "dataset.val_size=8",
    "trainer.batch_size=8",
    "trainer.epochs=1",
    "trainer.progress=none",
    "trainer.device=cpu",
    "trainer.threads=1",
    "trainer.log_every_n_steps=1",
)
# Keys worth hitting with bad values: a value of each kind is tried on them.
KEYS = (
    "trainer.epochs",
    "trainer.batch_size",
    "trainer.seed",
    "trainer.grad_clip",
    "trainer.threads",
    "trainer.num_images",
    "trainer.monitor",
    "trainer.keep_checkpoints",
    "trainer.checkpoint_every_n_steps",
    "trainer.nonfinite",
    "trainer.max_nonfinite_in_a_row",
    "trainer.eval_every_n_epochs",
    "trainer.amp",
    "trainer.channels_last",
    "trainer.device",
    "optimizer.lr",
    "optimizer.weight_decay",
    "scheduler.T_max",
    "dataset.image_size",
    "dataset.train_size",
    "dataset.max_objects",
    "dataset.min_size",
    "dataset.max_size",
    "dataset.noise",
    "dataset.shapes",
    "dataset.seed",
    "backbone.channels",
    "backbone.blocks_per_stage",
    "tasks.cls.hidden",
    "tasks.cls.dropout",
    "tasks.cls.label_smoothing",
    "tasks.seg.hidden",
    "tasks.seg.ignore_index",
    "tasks.gen.variant",
    "tasks.gen.beta",
    "resume",
)
VALUES = (
    "abc",
    "-1",
    "0",
    "0.5",
    "2",
    "[1,2]",
    "[circle,square]",
    "{a:1}",
    "null",
    "''",
    "nan",
    "inf",
    "true",
    "-0.25",
    "${trainer.seed}",
    "${nowhere}",
)


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (config_dir() / group).glob("*.yaml"))


def random_overrides(generator: random.Random) -> list[str]:
    """A few overrides: mostly sensible group picks, plus some deliberately bad ones."""
    tasks = generator.sample(["cls", "seg", "gen", "det", "inst", "depth"], generator.randint(1, 3))
    if generator.random() < 0.1:
        tasks.append(generator.choice([*options("tasks"), "nosuchtask"]))
    picked = [f"tasks=[{','.join(tasks)}]"]
    for group in ("weighting", "optimizer", "scheduler", "backbone", "dataset"):
        if generator.random() < 0.3:
            choices = options(group)
            if group == "backbone":  # the ResNets are slow for a fuzz budget; one stands in
                choices = ["cnn", "resnet18"]
            if group == "dataset":  # the others need files: one try in four
                choices = ["shapes"] * 3 * len(choices) + choices
            picked.append(f"{group}={generator.choice([*choices * 4, 'nosuch'])}")
    for _ in range(generator.choice([0, 0, 1, 1, 2, 3])):
        key = generator.choice(KEYS)
        value = generator.choice(VALUES)
        form = generator.random()
        if form < 0.75:
            picked.append(f"{key}={value}")
        elif form < 0.85:
            picked.append(f"+{key}x={value}")  # a key that does not exist
        elif form < 0.95:
            picked.append(f"~{key.split('.')[0]}")
        else:
            picked.append(f"{key}={value}]")  # malformed
    return picked


def test_every_override_combination_runs_or_fails_in_one_line(
    call_main: Callable[[list[str]], Finished], tmp_path: Path
) -> None:
    generator = random.Random(SEED)
    outcomes = {"ran": 0, "refused": 0}
    for index in range(COMBINATIONS):
        overrides = random_overrides(generator)
        folder = tmp_path / f"run-{index}"
        result = call_main([*BASE, *overrides, f"hydra.run.dir={folder}"])
        command = "mtlrun " + " ".join(repr(argument) for argument in [*BASE, *overrides])
        assert "Traceback" not in result.output, f"{command}\n{result.output[-3000:]}"
        if result.returncode == 0:
            assert (folder / "metrics.json").is_file(), command
            outcomes["ran"] += 1
        else:
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, f"{command}\n{result.stderr[-3000:]}"
            assert lines[0].startswith("mtlrun: error: "), f"{command}\n{lines[0]}"
            assert not (folder / "metrics.json").exists(), command
            outcomes["refused"] += 1
    # Both kinds must be well represented, or the generator has drifted.
    assert min(outcomes.values()) >= COMBINATIONS // 5, outcomes

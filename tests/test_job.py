"""A job around the training: the run folder's lock, refused runs, a resumed run's config
and what a config changes from the defaults."""

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from mtlrun.cli import config_dir, run_name
from mtlrun.errors import UserError
from mtlrun.job import (
    LOCK_NAME,
    RunFolderLock,
    config_changes,
    discard,
    is_fresh,
    resumed_config,
)

LOCK_AND_WAIT = """
import sys, time
from pathlib import Path
from typing import Any
from mtlrun.job import RunFolderLock
RunFolderLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""

LOCK_ONCE = """
import sys
from pathlib import Path
from typing import Any
from mtlrun.errors import UserError
from mtlrun.job import RunFolderLock
try:
    RunFolderLock(Path(sys.argv[1])).acquire()
except UserError as error:
    print(error)
    sys.exit(2)
"""


def python(script: str, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=60
    )


def test_a_second_process_stops_naming_the_holder(tmp_path: Path) -> None:
    lock = RunFolderLock(tmp_path / "run").acquire()
    try:
        refused = python(LOCK_ONCE, tmp_path / "run")
    finally:
        lock.release()
    assert refused.returncode == 2
    assert f"(pid {os.getpid()}) is training in {tmp_path / 'run'}" in refused.stdout
    assert python(LOCK_ONCE, tmp_path / "run").returncode == 0  # released: free again


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_AND_WAIT, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    assert python(LOCK_ONCE, tmp_path).returncode == 2  # held while it lives
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(holder.pid)  # left behind
    lock = RunFolderLock(tmp_path).acquire()
    assert lock.previous == holder.pid
    assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    lock.release()
    assert (tmp_path / LOCK_NAME).read_text() == ""  # a clean end leaves no pid


def test_only_a_folder_with_nothing_but_hydras_files_is_fresh(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (tmp_path / ".hydra" / name).write_text("{}\n")
    (tmp_path / "cli.log").write_text("")
    (tmp_path / LOCK_NAME).write_text("123\n")
    assert is_fresh(tmp_path, "cli.log")
    (tmp_path / "cli.log").write_text("val after epoch 1: ...\n")
    assert not is_fresh(tmp_path, "cli.log")  # a log of an earlier attempt
    (tmp_path / "cli.log").write_text("")
    (tmp_path / "checkpoints").mkdir()
    assert not is_fresh(tmp_path, "cli.log")
    (tmp_path / "checkpoints").rmdir()
    discard(tmp_path)
    assert not tmp_path.exists()
    assert not is_fresh(tmp_path, "cli.log")


# --- resume=<folder> ------------------------------------------------------------------------


def composed(*overrides: str) -> tuple[DictConfig, dict[str, Any]]:
    """The config as a job gets it, and the config-group options chosen."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as Hydra leaves it: a 1-epoch, 256-image run of cls and seg with uw."""
    folder = tmp_path_factory.mktemp("run")
    cfg, choices = composed("experiment=smoke", "tasks=[cls,seg]", "weighting=uw")
    (folder / ".hydra").mkdir()
    OmegaConf.save({"hydra": {"runtime": {"choices": choices}}}, folder / ".hydra" / "hydra.yaml")
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    return folder


def command(saved_run: Path, *overrides: str) -> tuple[DictConfig, list[str]]:
    """`mtlrun resume=<saved_run> *overrides` as the job sees it."""
    arguments = [f"resume={saved_run}", *overrides]
    cfg, _ = composed(*arguments)
    choices = dict(OmegaConf.load(saved_run / ".hydra" / "hydra.yaml").hydra.runtime.choices)
    return resumed_config(cfg, arguments, choices)


def test_resume_continues_the_saved_config_with_the_overrides_on_top(saved_run: Path) -> None:
    merged, notes = command(saved_run, "trainer.epochs=3", "optimizer.lr=0.01")
    assert merged.trainer.epochs == 3 and merged.optimizer.lr == 0.01
    assert merged.dataset.train_size == 256  # the run's own, not the default 12000
    assert list(merged.tasks) == ["cls", "seg"]
    assert merged.weighting._target_.endswith("UncertaintyWeighting")
    assert merged.resume == str(saved_run)
    assert merged.scheduler.T_max == 3  # interpolations follow the new values
    assert notes == [f"resuming {saved_run} with optimizer.lr 0.002 → 0.01, trainer.epochs 1 → 3"]


def test_resume_without_overrides_says_it_keeps_the_saved_config(saved_run: Path) -> None:
    merged, notes = command(saved_run, "experiment=smoke")  # its own experiment: no change
    assert merged.trainer.epochs == 1
    assert notes == [f"resuming {saved_run} with its saved config"]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["tasks=[cls]"], ["tasks ['cls', 'seg'] → ['cls']"]),
        (["backbone=resnet18"], ["backbone: 10 keys (_target_, depth, pretrained, …)"]),
        (
            ["backbone.channels=[8,16]", "model.sharing=soft"],
            ["backbone.channels", "model.sharing"],
        ),
        (["experiment=nyuv2"], ["experiment=nyuv2", "trainer.epochs=3"]),
    ],
)
def test_a_change_a_checkpoint_cannot_follow_is_one_line(
    saved_run: Path, overrides: list[str], named: list[str]
) -> None:
    with pytest.raises(UserError) as raised:
        command(saved_run, *overrides)
    message = str(raised.value)
    assert "\n" not in message
    for word in named:
        assert word in message, message


def test_a_checkpoint_file_outside_a_run_folder_keeps_the_command_config(tmp_path: Path) -> None:
    cfg, _ = composed(f"resume={tmp_path / 'model.pt'}", "trainer.epochs=3")
    assert resumed_config(cfg, ["trainer.epochs=3"]) == (cfg, [])


# --- what differs from the defaults ---------------------------------------------------------


def changes(*overrides: str) -> list[str]:
    (defaults, default_choices), (cfg, choices) = composed(), composed(*overrides)
    return config_changes(cfg, defaults, choices, default_choices, list(overrides))


def test_the_changes_are_the_chosen_groups_and_the_changed_keys() -> None:
    assert changes() == []
    lines = changes("experiment=smoke", "tasks=[cls,seg]", "optimizer=sgd", "optimizer.lr=0.1")
    assert lines[:3] == [
        "experiment: default → smoke",
        "optimizer: adam → sgd",
        "tasks: [cls, seg, gen] → [cls, seg]",
    ]
    assert "optimizer.lr: 0.002 → 0.1" in lines  # named on the command line
    assert "dataset.train_size: 12000 → 256" in lines  # set by the experiment
    assert not any(line.startswith(("tasks.gen", "optimizer.momentum")) for line in lines)
    assert len(lines) < 15


def test_run_folder_names_say_what_ran(saved_run: Path) -> None:
    tasks = OmegaConf.create({"cls": {}, "seg": {}})
    assert run_name(tasks, "uw") == "cls-seg_uw"
    assert run_name(OmegaConf.create({}), None) == "notasks_noweighting"
    assert run_name(OmegaConf.create({"a/b": {}}), "sum") == "a-b_sum"
    assert run_name(OmegaConf.create({"gen": {}}), "sum", str(saved_run)) == "cls-seg_uw_resumed"


def test_the_defaults_compose_also_outside_a_hydra_job() -> None:
    """A launcher's worker process may have no Hydra of its own to compose with."""
    from hydra.core.global_hydra import GlobalHydra

    from mtlrun.cli import default_config

    assert not GlobalHydra.instance().is_initialized()
    defaults = default_config()
    assert defaults.hydra.runtime.choices.weighting == "sum" and defaults.trainer.epochs == 6

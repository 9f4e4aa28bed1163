"""Every file of every config group composes into the real config and builds a run.

`conf/<group>/` is the registry of options, so the cases are read from the folders: a new
option file is tested without touching this module.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from fakes import fake_data_overrides
from mtlrun.build import build
from mtlrun.cli import GROUPS, config_dir
from mtlrun.engine import Run, TrainerConfig, model_outputs
from mtlrun.errors import UserError

ComposeConfig = Callable[..., DictConfig]
BuildRun = Callable[..., Run]


def group_options(group: str) -> list[str]:
    """The option names of a config group: the stems of its yaml files."""
    return sorted(path.stem for path in (config_dir() / group).glob("*.yaml"))


CASES = [(group, option) for group in GROUPS for option in group_options(group)]


def selection(group: str, option: str) -> str:
    """The command-line override that picks `option` of `group` (tasks is a list)."""
    return f"tasks=[{option}]" if group == "tasks" else f"{group}={option}"


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a plain container into {"a.b.c": value}."""
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(leaves(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): node}


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert group_options(group), f"conf/{group}/ has no option files"


def test_default_config_selects_existing_options() -> None:
    defaults = OmegaConf.load(config_dir() / "config.yaml").defaults
    for entry in defaults:
        if entry == "_self_":
            continue
        ((group, picked),) = OmegaConf.to_container(entry).items()
        for option in picked if isinstance(picked, list) else [picked]:
            if option is None:  # an optional group, off by default (hparams_search)
                continue
            assert option in group_options(group), f"default {group}={option} has no file"


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_config_file_composes_and_builds(
    group: str, option: str, compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    """`build` instantiates the option into a run (of the class its `_target_` names) whose
    model runs on a batch. Options that need real data files read small fakes of them."""
    overrides = [selection(group, option)]
    overrides += fake_data_overrides(compose_tiny, overrides, tmp_path)
    cfg: DictConfig = compose_tiny(*overrides)
    run: Run = build_and_forward(cfg, tmp_path)
    built = {
        "backbone": lambda: run.model.backbone,
        "weighting": lambda: run.weighting,
        "dataset": lambda: run.data,
        "optimizer": lambda: run.optimizer,
        "scheduler": lambda: run.scheduler,
    }
    if group in built:
        assert isinstance(built[group](), get_class(cfg[group]._target_))
    if group == "tasks":
        assert list(run.tasks) == [option]
        assert isinstance(run.tasks[option], get_class(cfg.tasks[option]._target_))
    if group == "trainer":
        expected = OmegaConf.to_container(cfg.trainer, resolve=True)
        assert {key: getattr(run.trainer, key) for key in expected} == expected
    if group == "optimizer":
        assert run.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr)


# Experiments and searches are packaged globally (`# @package _global_`): no node of their own.
NODE_CASES = [(g, o) for g, o in CASES if g not in ("experiment", "hparams_search")]


@pytest.mark.parametrize(("group", "option"), NODE_CASES, ids=[f"{g}={o}" for g, o in NODE_CASES])
def test_selected_file_becomes_its_config_node(
    group: str, option: str, compose_tiny: ComposeConfig
) -> None:
    """Every value in the option's file appears at its place in the composed config (tasks
    files are packaged under `tasks.<name>`)."""
    written = OmegaConf.to_container(OmegaConf.load(config_dir() / group / f"{option}.yaml"))
    written.pop("defaults", None)
    cfg = compose_tiny(selection(group, option), tiny=False)
    node = cfg.tasks[option] if group == "tasks" else cfg[group]
    composed = leaves(OmegaConf.to_container(node, resolve=False))
    for path, value in leaves(written).items():
        assert composed.get(path) == value, path


def build_and_forward(cfg: DictConfig, output_dir: Path) -> Run:
    """Build `cfg` and push 4 validation images through the model: every head must accept
    the backbone's features and every task's loss must be a finite scalar."""
    run = build(cfg, output_dir)
    batch = next(iter(run.data.val_batches()))
    images = batch["image"][:4]
    run.model.eval()
    targets = {
        name: task.select_target(slice_batch(batch["targets"], 4))
        for name, task in run.tasks.items()
    }
    with torch.no_grad():  # as the loop does it: with the extra images tasks ask for
        _, outputs = model_outputs(run, images, targets)
    for name, task in run.tasks.items():
        loss = task.loss(outputs[name], targets[name])
        assert loss.ndim == 0 and torch.isfinite(loss), f"task {name}: loss {loss}"
    return run


def slice_batch(value: Any, count: int) -> Any:
    if isinstance(value, dict):
        return {key: slice_batch(item, count) for key, item in value.items()}
    return value[:count]


@pytest.mark.parametrize("option", group_options("experiment"))
def test_experiment_sets_its_values(option: str, compose_tiny: ComposeConfig) -> None:
    """An experiment file is `@package _global_`: each value it names lands at that path of
    the composed config (composed without the tiny overrides, which would win)."""
    written = OmegaConf.to_container(OmegaConf.load(config_dir() / "experiment" / f"{option}.yaml"))
    written.pop("defaults", None)
    cfg = compose_tiny(f"experiment={option}", tiny=False)
    for path, value in leaves(written).items():
        if path.startswith("hydra."):  # Hydra's own node is not part of the job's config
            continue
        assert OmegaConf.select(cfg, path) == value, path


def test_tiny_overrides_win_over_experiment(compose_tiny: ComposeConfig) -> None:
    """Command-line overrides apply after the experiment, whatever their order."""
    smoke = OmegaConf.load(config_dir() / "experiment" / "smoke.yaml")
    cfg = compose_tiny("experiment=smoke")
    assert cfg.dataset.train_size == compose_tiny().dataset.train_size != smoke.dataset.train_size
    assert cfg.trainer.batch_size == compose_tiny().trainer.batch_size


def test_trainer_defaults_match_schema() -> None:
    """conf/trainer/default.yaml lists exactly the fields of `TrainerConfig`."""
    written = OmegaConf.to_container(OmegaConf.load(config_dir() / "trainer" / "default.yaml"))
    assert set(written) == set(TrainerConfig.__dataclass_fields__)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("+trainer.foo=1", "trainer.foo"),
        ("trainer.epochs=abc", "trainer.epochs"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.progress=loud", "trainer.progress"),
        ("trainer.monitor=val/cls/nothing", "trainer.monitor"),
        ("tasks=[]", "no tasks"),
    ],
)
def test_bad_settings_are_user_errors(
    override: str, named: str, build_tiny_run: BuildRun, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=named.replace(".", r"\.")):
        build_tiny_run(tmp_path, override)


def test_cuda_device_needs_cuda(build_tiny_run: BuildRun, tmp_path: Path) -> None:
    """`trainer.device=cuda` runs on the GPU where there is one, else is a clear error."""
    if torch.cuda.is_available():
        run = build_tiny_run(tmp_path, "trainer.device=cuda")
        assert next(run.model.parameters()).device.type == "cuda"
    else:
        with pytest.raises(UserError, match="no CUDA device"):
            build_tiny_run(tmp_path, "trainer.device=cuda")

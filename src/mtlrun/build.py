"""Turn a composed config into a `Run`. The only module that calls `hydra.utils.instantiate`."""

import math
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtlrun import checkpoint, schema
from mtlrun.console import Console
from mtlrun.distributed import STRATEGIES, start, synchronise_batch_norm
from mtlrun.engine import Run, TrainerConfig
from mtlrun.errors import UserError
from mtlrun.loggers import TensorBoardLogger
from mtlrun.models.multitask import MultiTaskModel
from mtlrun.tasks import Direction, Task
from mtlrun.weighting import Weighting

REQUIRED_GROUPS = ("backbone", "weighting", "dataset", "optimizer", "scheduler", "trainer")


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    """The `trainer` group checked against the `TrainerConfig` schema: an unknown key or a
    value of the wrong type is an error naming the key."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg.trainer)
    except OmegaConfBaseException as error:
        key = f"trainer.{error.full_key}" if getattr(error, "full_key", None) else "trainer"
        reason = str(error).splitlines()[0]
        raise UserError(
            f"{key}: {reason}; see conf/trainer/default.yaml for the keys and types"
        ) from error
    trainer = TrainerConfig(**OmegaConf.to_container(merged, resolve=True))
    at_least = {
        "epochs": 1,
        "batch_size": 1,
        "log_every_n_steps": 1,
        "eval_every_n_epochs": 1,
        "keep_checkpoints": 1,
        "max_nonfinite_in_a_row": 1,
        "checkpoint_every_n_steps": 0,
    }
    for key, lowest in at_least.items():
        if getattr(trainer, key) < lowest:
            raise UserError(f"trainer.{key} must be >= {lowest}, got {getattr(trainer, key)}")
    choices = {
        "progress": ("auto", "bar", "plain", "none"),
        "nonfinite": ("stop", "skip"),
        "strategy": STRATEGIES,
    }
    for key, allowed in choices.items():
        if getattr(trainer, key) not in allowed:
            raise UserError(
                f"trainer.{key} must be one of {', '.join(allowed)}, got '{getattr(trainer, key)}'"
            )
    return trainer


def make(path: str, node: DictConfig, **runtime: Any) -> Any:
    """Instantiate a config node, calling a partial with the runtime arguments.

    The node's keys and value types are first checked against the class's signature (an
    unknown key or a wrong type names the key); a value the class itself rejects (out of
    range) becomes one line naming the node.
    """
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise UserError(
            f"{path} must be a config node naming its class with _target_, got {node!r}; "
            f"pick one of the options in conf/{path.split('.')[0]}/"
        )
    schema.check(path, node, frozenset(runtime))
    try:
        made = instantiate(node)
        return made(**runtime) if runtime else made
    except UserError:
        raise
    except (InstantiationException, TypeError, ValueError) as error:
        cause = (
            error.__cause__
            if isinstance(error, InstantiationException) and error.__cause__
            else error
        )
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise UserError(f"{path}: {reason} (check the values under '{path}')") from error


def check_schedule(node: DictConfig, optimizer: torch.optim.Optimizer, epochs: int) -> None:
    """Step a copy of the schedule through the whole run on a stand-in optimizer, so that
    settings which only fail later (a zero period, say) fail now, before training."""
    stand_in = torch.optim.SGD(
        [torch.zeros(1, requires_grad=True)], lr=optimizer.param_groups[0]["lr"]
    )
    schedule = make("scheduler", node, optimizer=stand_in)
    try:
        with warnings.catch_warnings():  # stepping without optimizer steps is the point here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(epochs):
                schedule.step()
    except (ArithmeticError, ValueError, TypeError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"scheduler: {reason} when stepped through {epochs} epochs "
            "(check the values under 'scheduler')"
        ) from error
    learning_rates = [group["lr"] for group in stand_in.param_groups]
    if not all(math.isfinite(rate) and rate >= 0 for rate in learning_rates):
        raise UserError(
            f"scheduler: the learning rate becomes {learning_rates[0]} within {epochs} epochs "
            "(check the values under 'scheduler')"
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.device={name} but no CUDA device is available; use trainer.device=cpu or auto"
        )
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise UserError(
            f"trainer.device={name} is not a device; use auto, cpu, cuda or cuda:N"
        ) from error


def build(
    cfg: DictConfig,
    output_dir: Path,
    choices: dict[str, Any] | None = None,
    console: Console | None = None,
) -> Run:
    """Instantiate dataset, backbone, tasks, model, weighting, optimizer and scheduler.

    Args:
        cfg: the composed config.
        output_dir: the run folder (checkpoints, events, metrics.json go here).
        choices: the config-group options picked (for the hparams table), if known.
        console: where progress goes; one is made from `trainer.progress` if not given.
    """
    missing = [group for group in REQUIRED_GROUPS if cfg.get(group) is None]
    if missing:
        raise UserError(
            f"the config has no {', '.join(missing)}; select an option of each "
            "(e.g. optimizer=adam), do not delete them with ~"
        )
    trainer = trainer_config(cfg)
    task_names = list(cfg.get("tasks") or {})
    if not task_names:
        raise UserError(
            "no tasks selected; pick at least one, e.g. 'tasks=[cls]' or 'tasks=[cls,seg,gen]'"
        )
    device = resolve_device(trainer.device)
    distributed = start(trainer.strategy, device.type == "cuda")
    if distributed.enabled:
        device = distributed.device()
        output_dir = distributed.share(output_dir)  # rank 0's run folder, for every rank
    # A checkpoint named by `resume=`, or one the run folder already holds (a re-run sweep
    # job, a requeued job); read and verified now, so a bad one stops the run before it starts.
    if not isinstance(cfg.get("resume"), str | None):
        raise UserError(
            f"resume must be a path (a run folder or a .pt file) or null, got {cfg.resume!r}"
        )
    resume = checkpoint.find_resume(cfg.get("resume"), output_dir, trainer.keep_checkpoints)
    if trainer.threads > 0:
        torch.set_num_threads(trainer.threads)
    torch.manual_seed(trainer.seed)

    data = make(
        "dataset",
        cfg.dataset,
        batch_size=trainer.batch_size,
        shuffle_seed=trainer.seed,
        device=device,
        rank=distributed.rank,
        world_size=distributed.world_size,
    )
    backbone = make("backbone", cfg.backbone)
    tasks: dict[str, Task] = {
        name: make(
            f"tasks.{name}",
            cfg.tasks[name],
            name=name,
            info=data.info,
            in_channels=backbone.out_channels,
            stride=backbone.stride,
        )
        for name in task_names
    }
    weighting = make("weighting", cfg.weighting)
    weighting.setup(task_names)
    model = make(
        "model",
        cfg.model,
        backbone=backbone,
        new_backbone=partial(make, "backbone", cfg.backbone),
        heads={name: task.head for name, task in tasks.items()},
        needs_task_parameters="task_parameters" in weighting.requires(),
    ).to(device)
    check_model_fits(model, weighting, trainer, str(cfg.model.get("sharing")))
    if distributed.enabled:
        weighting.check_data_parallel()
        model = synchronise_batch_norm(model, distributed)
        distributed.copy_from_main(model)  # every rank starts from rank 0's weights
    if trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    weighting.to(device)
    optimizer = make(
        "optimizer", cfg.optimizer, params=[*model.parameters(), *weighting.parameters()]
    )
    check_schedule(cfg.scheduler, optimizer, trainer.epochs)
    scheduler = make("scheduler", cfg.scheduler, optimizer=optimizer)

    directions: dict[str, Direction] = {}
    for name, task in tasks.items():
        directions.update(
            {f"val/{name}/{metric}": way for metric, way in task.metric_directions.items()}
        )
        directions[f"val/{name}/loss"] = Direction.MIN
    first = tasks[task_names[0]]
    monitor = (
        f"val/{first.name}/{first.main_metric}" if trainer.monitor == "auto" else trainer.monitor
    )
    if monitor not in directions:
        raise UserError(
            f"trainer.monitor={monitor} is not a metric of this run; "
            f"choose one of: {', '.join(directions)}"
        )

    if distributed.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    purge_step = resume.content["step"] + 1 if resume else None
    return Run(
        trainer=trainer,
        device=device,
        data=data,
        tasks=tasks,
        model=model,
        # Compiled lazily at the first call; checkpoints keep using the plain module's keys.
        forward=torch.compile(model) if trainer.compile else model,
        weighting=weighting,
        optimizer=optimizer,
        scheduler=scheduler,
        output_dir=output_dir,
        # Rank 0 alone logs and prints.
        loggers=[TensorBoardLogger(output_dir, purge_step)] if distributed.is_main else [],
        console=console or Console(trainer.progress if distributed.is_main else "none"),
        monitor=monitor,
        directions=directions,
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        hparams=hparams(cfg, task_names, choices or {}),
        resume=resume,
        distributed=distributed,
    )


def check_model_fits(
    model: MultiTaskModel, weighting: Weighting, trainer: TrainerConfig, sharing: str
) -> None:
    """Stop before training when the weighting or the relation measurement needs a part of
    the model that this way of sharing does not have."""
    method = type(weighting).__name__
    needs = weighting.requires()
    if "shared_parameters" in needs and not model.shared_parameters():
        raise UserError(
            f"weighting {method} combines per-task gradients on shared parameters, but "
            f"model.sharing={sharing} shares none; use model.sharing=hard or cross_stitch, "
            "weighting.on=features where the method allows it, or a loss-based weighting"
        )
    if "task_parameters" in needs and not model.task_parameters():
        raise UserError(
            f"weighting {method} needs task-specific parameters of identical shape, but the "
            "model has none; set model.adapter=conv (or auto), or model.sharing=soft or "
            "cross_stitch"
        )
    if trainer.relations_every_n_steps < 0:
        raise UserError("trainer.relations_every_n_steps must be >= 0 (0 = off)")
    if trainer.relations_every_n_steps > 0 and not model.shared_parameters():
        raise UserError(
            "trainer.relations_every_n_steps measures the tasks' gradients on shared "
            f"parameters, but model.sharing={sharing} shares none; set it to 0 or use "
            "model.sharing=hard or cross_stitch"
        )


def hparams(cfg: DictConfig, task_names: list[str], choices: dict[str, Any]) -> dict[str, Any]:
    """The run's defining settings, flat, for TensorBoard's HPARAMS tab."""
    picked = {
        group: str(option)
        for group, option in choices.items()
        if not group.startswith("hydra") and group != "tasks"
    }
    return {
        **picked,
        "tasks": ",".join(task_names),
        "model.sharing": str(cfg.model.sharing),
        "optimizer.lr": float(cfg.optimizer.lr),
        "trainer.batch_size": int(cfg.trainer.batch_size),
        "trainer.epochs": int(cfg.trainer.epochs),
        "trainer.seed": int(cfg.trainer.seed),
    }

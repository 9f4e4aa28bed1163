"""Turn a composed config into a `Run`. The only module that calls `hydra.utils.instantiate`."""

import inspect
import math
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from mtlrun import checkpoint, schema
from mtlrun.console import Console
from mtlrun.data import DatasetInfo, DataSource
from mtlrun.distributed import Distributed, start, synchronise_batch_norm
from mtlrun.errors import UserError, first_line
from mtlrun.loggers import Logger, TensorBoardLogger
from mtlrun.models.heads import has_fixed_input_size
from mtlrun.models.multitask import MultiTaskModel
from mtlrun.nonfinite import NonFinitePolicy, nonfinite_policy
from mtlrun.players import Player
from mtlrun.preflight import check_data_source
from mtlrun.run import Run
from mtlrun.tasks import Direction, Task
from mtlrun.trainer import TrainerConfig, trainer_config
from mtlrun.weighting import Weighting

REQUIRED_GROUPS = ("backbone", "weighting", "dataset", "optimizer", "scheduler", "trainer")


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
    if runtime and not node.get("_partial_", False):
        raise UserError(
            f"{path}: add `_partial_: true` to its config node (or {path}._partial_=true on "
            f"the command line): {node._target_} is called with runtime arguments "
            f"({', '.join(runtime)}) that the config does not hold"
        )
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
        raise UserError(f"{path}: {first_line(cause)} (check the values under '{path}')") from error


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
        raise UserError(
            f"scheduler: {first_line(error)} when stepped through {epochs} epochs "
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


@dataclass
class Setting:
    """Where and how a run trains, settled before anything is built."""

    trainer: TrainerConfig
    device: torch.device
    distributed: Distributed
    output_dir: Path
    resume: checkpoint.Resume | None


def build(
    cfg: DictConfig,
    output_dir: Path,
    choices: dict[str, Any] | None = None,
    console: Console | None = None,
) -> Run:
    """Instantiate dataset, backbone, tasks, model, weighting, optimizers and scheduler.

    Args:
        cfg: the composed config.
        output_dir: the run folder (checkpoints, events, metrics.json go here).
        choices: the config-group options picked (for the hparams table), if known.
        console: where progress goes; one is made from `trainer.progress` if not given.
    """
    setting = settle(cfg, output_dir)
    trainer, device, distributed = setting.trainer, setting.device, setting.distributed
    data = build_data(cfg, setting)
    tasks, weighting, model = build_model(cfg, data.info, setting)
    check_data_source(data, tasks)  # the first batches against the contract, before training
    optimizer, scheduler = build_optimizer(cfg, model, weighting, trainer.epochs)
    directions, monitor = metric_directions(tasks, trainer.monitor)
    if distributed.is_main:
        setting.output_dir.mkdir(parents=True, exist_ok=True)
    players, player_optimizers, nonfinite = build_players(tasks, model, setting)
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
        output_dir=setting.output_dir,
        loggers=loggers(setting),
        console=console or Console(trainer.progress if distributed.is_main else "none"),
        monitor=monitor,
        directions=directions,
        config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        hparams=hparams(cfg, list(tasks), choices or {}),
        nonfinite=nonfinite,
        resume=setting.resume,
        distributed=distributed,
        players=players,
        player_optimizers=player_optimizers,
    )


def settle(cfg: DictConfig, output_dir: Path) -> Setting:
    """Check the config's shape and the trainer settings; start the process group; find a
    checkpoint to resume from (verified now, so a bad one stops the run before it starts)."""
    missing = [group for group in REQUIRED_GROUPS if cfg.get(group) is None]
    if missing:
        raise UserError(
            f"the config has no {', '.join(missing)}; select an option of each "
            "(e.g. optimizer=adam), do not delete them with ~"
        )
    trainer = trainer_config(cfg)
    if not list(cfg.get("tasks") or {}):
        raise UserError(
            "no tasks selected; pick at least one, e.g. 'tasks=[cls]' or 'tasks=[cls,seg,gen]'"
        )
    device = resolve_device(trainer.device)
    distributed = start(trainer.strategy, device.type == "cuda")
    if distributed.enabled:
        device = distributed.device()
        output_dir = distributed.share(output_dir)  # rank 0's run folder, for every rank
    # A checkpoint named by `resume=`, or one the run folder already holds (a re-run sweep
    # job, a requeued job).
    if not isinstance(cfg.get("resume"), str | None):
        raise UserError(
            f"resume must be a path (a run folder or a .pt file) or null, got {cfg.resume!r}"
        )
    resume = checkpoint.find_resume(cfg.get("resume"), output_dir, trainer.keep_checkpoints)
    if trainer.threads > 0:
        torch.set_num_threads(trainer.threads)
    torch.manual_seed(trainer.seed)
    return Setting(trainer, device, distributed, output_dir, resume)


def build_data(cfg: DictConfig, setting: Setting) -> DataSource:
    """The dataset, bound to the run's batch size, seed, device and this process's share."""
    trainer, distributed = setting.trainer, setting.distributed
    check_replaced_target(cfg.dataset)
    return make(
        "dataset", cfg.dataset, batch_size=trainer.batch_size, shuffle_seed=trainer.seed,
        device=setting.device, rank=distributed.rank, world_size=distributed.world_size,
    )  # fmt: skip


def check_replaced_target(node: DictConfig) -> None:
    """`dataset._target_=my_module.MyData` keeps every key of the option file whose class it
    replaces; when the new class does not take some of them, one line names those keys and a
    clean start (the schema's message would list them without saying where they came
    from)."""
    from mtlrun.cli import config_dir  # cli imports this module lazily too

    target = str(node.get("_target_"))
    try:
        parameters = inspect.signature(get_object(target)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return  # schema.check names an unimportable target
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    keys = {str(key) for key in node if not str(key).startswith("_")}
    for path in sorted((config_dir() / "dataset").glob("*.yaml")):
        option = OmegaConf.load(path)
        if not isinstance(option, DictConfig):
            continue
        inherited = {str(key) for key in option if not str(key).startswith("_")}
        foreign = sorted(inherited - set(parameters))
        if str(option.get("_target_")) != target and inherited <= keys and foreign:
            raise UserError(
                f"dataset._target_={target} kept the keys of dataset={path.stem} "
                f"({', '.join(foreign)}), which it does not take; start from an empty node "
                f"instead: '~dataset' +dataset._target_={target} +dataset._partial_=true "
                "(and +dataset.KEY=VALUE for its own keys), or give it an option file "
                "(my_conf/dataset/mine.yaml, then --config-dir my_conf dataset=mine)"
            )


def build_model(
    cfg: DictConfig, info: DatasetInfo, setting: Setting
) -> tuple[dict[str, Task], Weighting, MultiTaskModel]:
    """The tasks (with their heads), the weighting and the model that joins the heads to
    the backbone, on the device."""
    backbone = make("backbone", cfg.backbone)
    tasks: dict[str, Task] = {
        name: make(
            f"tasks.{name}",
            cfg.tasks[name],
            name=name,
            info=info,
            in_channels=backbone.out_channels,
            stride=backbone.stride,
        )
        for name in cfg.tasks
    }
    weighting = make("weighting", cfg.weighting)
    weighting.setup(list(tasks))
    model = make(
        "model",
        cfg.model,
        backbone=backbone,
        new_backbone=partial(make, "backbone", cfg.backbone),
        heads={name: task.head for name, task in tasks.items()},
        needs_task_parameters="task_parameters" in weighting.requires(),
    ).to(setting.device)
    check_input_size(model, info, setting.device)
    check_model_fits(model, weighting, setting.trainer, str(cfg.model.get("sharing")))
    check_trunk_shared(model, tasks, str(cfg.model.get("sharing")))
    if setting.distributed.enabled:
        weighting.check_data_parallel()
        model = synchronise_batch_norm(model, setting.distributed)
        setting.distributed.copy_from_main(model)  # every rank starts from rank 0's weights
    if setting.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    weighting.to(setting.device)
    return tasks, weighting, model


def build_optimizer(
    cfg: DictConfig, model: MultiTaskModel, weighting: Weighting, epochs: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The model's optimizer (it also trains the weighting's own parameters) and its
    learning-rate schedule, checked over the whole run."""
    optimizer = make(
        "optimizer", cfg.optimizer, params=[*model.parameters(), *weighting.parameters()]
    )
    check_schedule(cfg.scheduler, optimizer, epochs)
    return optimizer, make("scheduler", cfg.scheduler, optimizer=optimizer)


def build_players(
    tasks: dict[str, Task], model: MultiTaskModel, setting: Setting
) -> tuple[list[Player], list[torch.optim.Optimizer], NonFinitePolicy]:
    """The tasks' second players, each with its optimizer, and the `trainer.nonfinite` policy
    over the model and the players."""
    players = [player for task in tasks.values() for player in task.players(tasks)]
    optimizers = [player_optimizer(player, setting) for player in players]
    # After the players' move to the device: `skip` keeps the modules' buffers, and moving a
    # module to another device replaces its buffers.
    modules = [model, *(player.module for player in players)]
    nonfinite = nonfinite_policy(setting.trainer, list(tasks), setting.distributed, modules)
    return players, optimizers, nonfinite


def player_optimizer(player: Player, setting: Setting) -> torch.optim.Optimizer:
    """A second player's own Adam, on its own settings (a GAN's TTUR learning rates)."""
    player.module.to(setting.device)
    if setting.distributed.enabled:  # like the model: statistics over the global batch
        synchronise_batch_norm(player.module, setting.distributed)
        setting.distributed.copy_from_main(player.module)
    if setting.trainer.channels_last:
        player.module.to(memory_format=torch.channels_last)
    try:
        return torch.optim.Adam(player.module.parameters(), **player.settings)
    except (TypeError, ValueError) as error:
        raise UserError(
            f"tasks.{player.task}: the {player.name}'s optimizer settings {player.settings} are "
            f"invalid ({first_line(error)})"
        ) from error


def metric_directions(
    tasks: dict[str, Task], monitor_setting: str
) -> tuple[dict[str, Direction], str]:
    """Every reported metric with its direction, and the metric `trainer.monitor` names."""
    directions: dict[str, Direction] = {}
    for name, task in tasks.items():
        directions.update(
            {f"val/{name}/{metric}": way for metric, way in task.metric_directions.items()}
        )
        directions[f"val/{name}/loss"] = Direction.MIN
    first = next(iter(tasks.values()))
    monitor = (
        f"val/{first.name}/{first.main_metric}" if monitor_setting == "auto" else monitor_setting
    )
    if monitor not in directions:
        raise UserError(
            f"trainer.monitor={monitor} is not a metric of this run; "
            f"choose one of: {', '.join(directions)}"
        )
    return directions, monitor


def loggers(setting: Setting) -> list[Logger]:
    """TensorBoard on rank 0 alone; a resumed run's events continue after its step."""
    if not setting.distributed.is_main:
        return []
    purge_step = setting.resume.content["step"] + 1 if setting.resume else None
    return [TensorBoardLogger(setting.output_dir, purge_step)]


def check_input_size(model: MultiTaskModel, info: DatasetInfo, device: torch.device) -> None:
    """Run one blank image of the dataset's size through a model that accepts only one input
    size (a LeNet, a flattening head), so a mismatch is one line before training."""
    if not has_fixed_input_size(model):
        return
    training = model.training
    model.eval()  # batch norm on a single blank image would disturb its statistics
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *info.image_size, device=device))
    except RuntimeError as error:
        raise UserError(
            f"the model cannot read the {info.image_size[0]}x{info.image_size[1]} images of "
            f"dataset '{info.name}' ({first_line(error)}); check backbone.image_size and the "
            "tasks' pool settings"
        ) from error
    finally:
        model.train(training)


def check_trunk_shared(model: MultiTaskModel, tasks: dict[str, Task], sharing: str) -> None:
    """Stop before training when a task needs a backbone shared with the other tasks (a
    shared discriminator) but this way of sharing gives every task its own."""
    needing = [name for name, task in tasks.items() if task.needs_shared_trunk]
    if needing and len(tasks) > 1 and not model.shared_parameters():
        raise UserError(
            f"task(s) {needing} need a backbone shared with the other tasks (e.g. "
            f"tasks.{needing[0]}.discriminator=shared), but model.sharing={sharing} gives "
            f"every task its own; use model.sharing=hard or cross_stitch, or "
            f"tasks.{needing[0]}.discriminator=own"
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

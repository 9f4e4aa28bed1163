"""The `trainer` config group: its schema and the rules its values must follow."""

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtlrun.distributed import STRATEGIES
from mtlrun.errors import UserError, first_line


@dataclass
class TrainerConfig:
    """The `trainer` config group (see conf/trainer/default.yaml for the meaning of each)."""

    epochs: int = 6
    batch_size: int = 64
    device: str = "auto"
    amp: bool = False
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    grad_clip: float = 0.0
    threads: int = 0
    log_every_n_steps: int = 50
    eval_every_n_epochs: int = 1
    progress: str = "auto"
    print_config: str = "changes"
    num_images: int = 8
    monitor: str = "auto"
    checkpoint_every_n_steps: int = 0
    keep_checkpoints: int = 2
    nonfinite: str = "stop"
    max_nonfinite_in_a_row: int = 10
    strategy: str = "single"
    relations_every_n_steps: int = 0


# The smallest value each integer setting may take.
AT_LEAST = {
    "epochs": 1,
    "batch_size": 1,
    "log_every_n_steps": 1,
    "eval_every_n_epochs": 1,
    "keep_checkpoints": 1,
    "max_nonfinite_in_a_row": 1,
    "checkpoint_every_n_steps": 0,
    "relations_every_n_steps": 0,
}

# The values each string setting may take.
CHOICES = {
    "progress": ("auto", "bar", "plain", "none"),
    "print_config": ("changes", "full", "none"),
    "nonfinite": ("stop", "skip"),
    "strategy": STRATEGIES,
}


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    """The `trainer` group checked against `TrainerConfig`: an unknown key, a value of the
    wrong type or one outside its range is an error naming the key."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainerConfig), cfg.trainer)
    except OmegaConfBaseException as error:
        key = f"trainer.{error.full_key}" if getattr(error, "full_key", None) else "trainer"
        raise UserError(
            f"{key}: {first_line(error)}; see conf/trainer/default.yaml for the keys and types"
        ) from error
    trainer = TrainerConfig(**OmegaConf.to_container(merged, resolve=True))  # type: ignore[arg-type]
    for key, lowest in AT_LEAST.items():
        if getattr(trainer, key) < lowest:
            raise UserError(f"trainer.{key} must be >= {lowest}, got {getattr(trainer, key)}")
    for key, allowed in CHOICES.items():
        if getattr(trainer, key) not in allowed:
            raise UserError(
                f"trainer.{key} must be one of {', '.join(allowed)}, got '{getattr(trainer, key)}'"
            )
    return trainer

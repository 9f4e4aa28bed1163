"""What every task offers the engine: a head, a loss, metrics with directions, pictures."""

from abc import ABC, abstractmethod
from enum import Enum
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from mtlrun.data import DatasetInfo
from mtlrun.errors import UserError

if TYPE_CHECKING:
    from mtlrun.players import Player


class Direction(str, Enum):
    """Whether a larger value of a metric is better (`max`) or worse (`min`)."""

    MAX = "max"
    MIN = "min"


class Task(ABC):
    """One task of a multi-task run.

    Subclasses build `self.head` in `__init__` and declare `metric_directions` (every metric
    they report, with its direction) and `main_metric` (the one `trainer.monitor=auto` uses).

    Args:
        name: the task's name in the run (the key of `tasks.<name>` in the config).
        target: the key of this task's target in the batch's `targets`.
        info: what the dataset provides.
    """

    metric_directions: dict[str, Direction]
    main_metric: str
    head: nn.Module
    # Whether the task needs the backbone it reads to be shared with the other tasks (a
    # shared discriminator); `build` refuses a way of sharing that gives it its own.
    needs_shared_trunk: bool = False

    def __init__(self, name: str, target: str, info: DatasetInfo) -> None:
        if target not in info.targets:
            raise UserError(
                f"task '{name}' needs target '{target}', which dataset '{info.name}' does not "
                f"provide (it has: {', '.join(sorted(info.targets))}); drop the task or pick "
                "another dataset"
            )
        self.name = name
        self.target = target
        self.info = info

    def num_classes(self) -> int:
        if self.target not in self.info.num_classes:
            raise UserError(
                f"task '{self.name}' needs classes for target '{self.target}', but dataset "
                f"'{self.info.name}' defines none"
            )
        return self.info.num_classes[self.target]

    @abstractmethod
    def loss(self, output: Any, target: Any) -> Tensor:
        """Scalar training loss of a batch."""

    @abstractmethod
    def reset_metrics(self) -> None:
        """Forget the metric state before an evaluation pass."""

    @abstractmethod
    def update_metrics(self, output: Any, target: Any) -> None:
        """Accumulate one evaluation batch (on the device, without syncing the host)."""

    @abstractmethod
    def compute_metrics(self) -> dict[str, float]:
        """Metrics over everything accumulated since the last reset, keyed as in
        `metric_directions`."""

    def pictures(self, images: Tensor, output: Any, target: Any) -> dict[str, Tensor]:
        """Images for TensorBoard, each a (3, H, W) float grid in [0, 1]; none by default."""
        return {}

    def evaluation_pictures(self) -> dict[str, Tensor]:
        """Pictures of the whole evaluation (after `compute_metrics`), like `pictures`."""
        return {}

    # Optional hooks. The defaults fit a plain supervised task; a generative task overrides
    # them to bring a second player, extra images for the shared trunk and its own state.

    def select_target(self, targets: dict[str, Any]) -> Any:
        """What this task's loss and metrics receive from a batch's `targets`."""
        return targets[self.target]

    def extra_inputs(self, target: Any) -> Tensor | None:
        """Images this task wants the shared trunk to see beside the batch's own (a shared
        discriminator's generated images), or None. The head then reads the features of
        the batch's images followed by those of these images."""
        return None

    def players(self, tasks: "dict[str, Task]") -> "list[Player]":
        """Second players this task brings (see `mtlrun.players`), given the run's tasks."""
        return []

    def after_step(self) -> None:  # noqa: B027  (an optional hook)
        """Called after every training step (e.g. to update an EMA copy of a network)."""

    def train_scalars(self) -> dict[str, Tensor]:
        """Detached values of the latest training step to log as `train/<name>/<key>`."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State outside the model that checkpoints must carry (e.g. an EMA copy)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        """Restore what `state_dict` returned."""

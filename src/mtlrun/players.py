"""Second players: networks trained *against* the model, each with its own optimizer.

A GAN has two players. One of them is part of the multi-task model and is stepped with the
other tasks through the weighting; the other is a `Player`, declared by the task that needs
it (`Task.players`). `build` gives each player its own optimizer from `Player.settings`,
and the loop steps every player the same way, never by name:

    model step (all tasks' losses -> weighting -> optimizer)      players frozen
    then, every `every` model steps, `repeats` steps of each player  model frozen

"Frozen" means `requires_grad` is off for the other side's parameters during a step, so a
step of one player computes no gradient for, and changes no parameter of, the other.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

# The model as a player sees it: images -> (shared features, {task name: head output}).
ModelForward = Callable[[Tensor], tuple[Tensor, dict[str, Any]]]


class Player(ABC):
    """A network with its own loss and optimizer, stepped in alternation with the model.

    Attributes:
        task: the name of the task that declares it (its `select_target` feeds `loss`).
        name: for logs (`train/<name>/loss`, ...) and messages.
        module: the player's network (its parameters, buffers and any step counters).
        settings: keyword arguments of its Adam optimizer (lr, betas, ...).
        every: the player steps once every `every` model steps (a GAN's `n_critic` when
            the model is the discriminator).
        repeats: steps of the player per model step it steps at (`n_critic` when the player
            is the discriminator).
    """

    task: str
    name: str
    module: nn.Module
    settings: dict[str, Any]
    every: int = 1
    repeats: int = 1

    @abstractmethod
    def loss(
        self, model: ModelForward, images: Tensor, target: Any
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The player's scalar loss on one batch, and detached scalars to log.

        Args:
            model: the multi-task model's forward (its parameters are frozen meanwhile).
            images: the batch's real images.
            target: what the declaring task selects from the batch's targets.
        """


@contextmanager
def frozen(modules: list[nn.Module]) -> Iterator[None]:
    """Turn off `requires_grad` of every trainable parameter of `modules` for a while."""
    parameters = [p for module in modules for p in module.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)

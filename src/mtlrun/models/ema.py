"""An exponential moving average of a module's weights, the copy a GAN's generator is usually
evaluated with (Yazıcı et al., "The Unusual Effectiveness of Averaging in GAN Training",
ICLR 2019; Karras et al., "Progressive Growing of GANs", ICLR 2018)."""

import copy
from typing import Any, Generic, TypeVar

import torch
from torch import nn

__all__ = ["ModelEMA"]

M = TypeVar("M", bound=nn.Module)


class ModelEMA(Generic[M]):
    """Holds `module`, a frozen deep copy of a module whose parameters track the live one's.

    `update(live)` sets p_ema = decay * p_ema + (1 - decay) * p for every parameter and copies
    every buffer (BatchNorm statistics, spectral-norm power-iteration vectors), since averaging
    running statistics of different weights would describe none of them. During the first
    `warmup_steps` updates the copy takes the live weights as they are, so that the average
    does not start from the random initialisation.

    Spectral-normalised modules work: deepcopy copies their parametrizations, the raw weights
    (`parametrizations.<name>.original`) are the parameters averaged, and the normalised weight
    is recomputed from them with the copied power-iteration vectors in eval mode.

    Args:
        module: the live module; pass the plain module, not a DDP or compiled wrapper.
        decay: weight of the old average at each update.
        warmup_steps: updates that copy the live weights instead of averaging.
    """

    def __init__(self, module: M, decay: float = 0.999, warmup_steps: int = 0) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average towards `module`'s current weights and copy its buffers."""
        live_parameters = dict(module.named_parameters())
        warming_up = self.updates < self.warmup_steps
        for name, average in self.module.named_parameters():
            live = live_parameters[name].detach()
            if warming_up:
                average.copy_(live)
            else:
                # Two rounded products then a sum, not lerp or a fused multiply-add, so the
                # result is bit for bit decay * average + (1 - decay) * live.
                average.mul_(self.decay).add_(live * (1.0 - self.decay))
        live_buffers = dict(module.named_buffers())
        for name, buffer in self.module.named_buffers():
            buffer.copy_(live_buffers[name])
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and the number of updates, for a checkpoint."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

"""Data-parallel training over several processes started by torchrun (`trainer.strategy=ddp`).

mtlrun does not wrap the model in `DistributedDataParallel`: weighting methods run their own
backward passes (one per task for the gradient-based ones), which DDP's one-backward-per-
forward reducer does not allow. Instead the engine synchronises explicitly, in a few places:

- every rank trains on its share of each global batch (`trainer.batch_size` is the global
  batch), and the losses a weighting sees carry the mean over all ranks as their value
  (their gradient stays local), so loss-based methods weigh the tasks alike on every rank;
- per-task gradient matrices are averaged before a gradient-based method combines them, so
  every rank computes the same combination (`average` in the step context);
- after the backward pass every gradient is averaged, and the weighting's own state is
  copied from rank 0, so every rank applies the same update;
- BatchNorm statistics span all ranks (torch's SyncBatchNorm on GPU, `CrossRankBatchNorm`
  on CPU, where SyncBatchNorm does not run).

Rank 0 alone evaluates, logs and writes checkpoints and metrics; the others receive what
they need from it. A single process uses `Distributed()`, whose methods do nothing.
"""

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtlrun.errors import UserError

STRATEGIES = ("single", "ddp")
# Long enough for rank 0 to evaluate alone while the others wait at the next collective.
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes.

    `enabled` when the run joined a process group (`trainer.strategy=ddp`), even a group of
    one: a 1-process ddp run computes exactly as an N-process one does, on one process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average(self, tensor: Tensor) -> Tensor:
        """The mean of `tensor` over all ranks (a new tensor; `tensor` itself if alone)."""
        if not self.enabled:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def average_gradients(self, parameters: list[nn.Parameter]) -> None:
        """Average `.grad` over all ranks in one flat all-reduce. A parameter without a
        gradient on this rank joins with zeros, so every rank sends the same layout."""
        if not self.enabled or not parameters:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = self.average(torch.cat([grad.reshape(-1) for grad in grads]))
        pieces = flat.split([parameter.numel() for parameter in parameters])
        for parameter, piece in zip(parameters, pieces, strict=True):
            parameter.grad = piece.view_as(parameter).to(parameter.dtype)

    def global_loss_values(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """Losses whose values are the means over all ranks and whose gradients are this
        rank's own: value-based weightings then weigh alike on every rank."""
        if not self.enabled:
            return losses
        local = torch.stack([loss.detach().float() for loss in losses.values()])
        shift = self.average(local) - local
        return {
            name: loss + shift[index].to(loss.dtype)
            for index, (name, loss) in enumerate(losses.items())
        }

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank (so all ranks take the same branch)."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)], device=self.device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def max(self, tensor: Tensor) -> Tensor:
        if not self.enabled:
            return tensor
        result = tensor.clone()
        dist.all_reduce(result, op=dist.ReduceOp.MAX)
        return result

    def copy_from_main(self, module: nn.Module) -> None:
        """Overwrite `module`'s parameters and buffers with rank 0's."""
        if not self.enabled:
            return
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)

    def share(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def device(self) -> torch.device:
        backend = dist.get_backend() if self.enabled else "gloo"
        return torch.device("cuda", self.local_rank) if backend == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def start(strategy: str, use_cuda: bool) -> Distributed:
    """Join the process group torchrun set up (for `ddp`), or stay alone (`single`)."""
    if strategy == "single":
        return Distributed()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise UserError(
            "trainer.strategy=ddp runs under torchrun, which starts one process per device: "
            "torchrun --nproc_per_node=N -m mtlrun trainer.strategy=ddp ..."
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=TIMEOUT)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, enabled=True)


class SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with a gradient: every rank's output depends on every rank's input,
    so the gradient of an input is the sum over ranks of the output gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class CrossRankBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose batch statistics span all ranks, for CPU (gloo) training.

    The per-channel sums (of x and the count, then of the squared deviations from the mean)
    are summed over ranks with an autograd-aware all-reduce, so the output and its gradient
    equal those of one BatchNorm over the whole global batch (Ioffe & Szegedy 2015; the
    same synchronisation as torch's SyncBatchNorm, which runs on GPUs only).
    """

    def forward(self, images: Tensor) -> Tensor:
        if not self.training:
            return super().forward(images)
        # Statistics in float32 at least (bf16 under autocast), float64 for a float64 model.
        channels = images.shape[1]
        values = images.to(torch.promote_types(images.dtype, torch.float32))
        shape = (1, channels, 1, 1)
        count = values.new_full((1,), images.numel() / channels)
        # Two passes (mean, then squared deviations): the one-pass E[x²] - E[x]² loses all
        # precision on a channel whose spread is tiny next to its mean.
        sums = SumOverRanks.apply(torch.cat([values.sum((0, 2, 3)), count]))
        number = sums[-1]
        mean = sums[:channels] / number
        centred = values - mean.view(shape)
        variance = SumOverRanks.apply((centred * centred).sum((0, 2, 3))) / number
        # Running statistics exist: this class is built from BatchNorm2d's defaults.
        assert self.num_batches_tracked is not None and self.running_mean is not None
        assert self.running_var is not None
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum or 1.0 / float(self.num_batches_tracked)  # None: average
            unbiased = variance * number / (number - 1).clamp(min=1)
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(unbiased.detach(), momentum)
        output = centred * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output.to(images.dtype)


def synchronise_batch_norm(model: nn.Module, distributed: Distributed) -> nn.Module:
    """Make every BatchNorm of `model` compute its statistics over all ranks."""
    if not distributed.enabled:
        return model
    if distributed.device().type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = CrossRankBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine
            )
            replacement.load_state_dict(child.state_dict())
            setattr(model, name, replacement)
        else:
            synchronise_batch_norm(child, distributed)
    return model

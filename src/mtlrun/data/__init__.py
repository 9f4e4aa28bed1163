"""Datasets. Every dataset yields batches with the same contract:

    {"image": FloatTensor[B, 3, H, W] in [0, 1],
     "targets": {target_name: tensor or dict of tensors, ...}}

with each target laid out as the table `CONTRACT` in `mtlrun.data.contract` says (written
out below when this docstring is read with `help`; the tests read the same table).

Under data-parallel training (`trainer.strategy=ddp`) `batch_size` is the global batch: each
process reads its own equal slice of every training batch (`rank`, `world_size`).
"""

from mtlrun.data.base import Batch, DatasetInfo, DataSource, move_batch
from mtlrun.data.contract import CONTRACT, describe

# The table itself, so that `help(mtlrun.data)` shows the contract without a copy of it here.
__doc__ = f"{__doc__}\nTargets (name, kind, layout, meaning):\n\n{describe()}\n"

__all__ = ["CONTRACT", "Batch", "DataSource", "DatasetInfo", "move_batch"]

"""Datasets. Every dataset yields batches with the same contract:

    {"image": FloatTensor[B, 3, H, W] in [0, 1],
     "targets": {target_name: tensor or dict of tensors, ...}}

Targets by kind:
    classification  LongTensor[B]                  class index
    segmentation    LongTensor[B, H, W]            class index, -1 = ignore
    depth           FloatTensor[B, 1, H, W]        depth, 0 = invalid pixel
    generation      FloatTensor[B, 3, H, W]        the image to reconstruct
    detection       {"boxes": FloatTensor[B, M, 4], "labels": LongTensor[B, M]}
                    boxes are (x1, y1, x2, y2) in pixels; images with fewer than M objects
                    are padded with label -1 and an all-zero box (padding is masked by
                    `labels >= 0`).
    normals         FloatTensor[B, 3, H, W]        unit vectors, all-zero = invalid pixel
    attributes      LongTensor[B, A]               0/1 per binary attribute
    landmarks       FloatTensor[B, K, 2]           (x, y) in pixels

Under data-parallel training (`trainer.strategy=ddp`) `batch_size` is the global batch: each
process reads its own equal slice of every training batch (`rank`, `world_size`).
"""

from mtlrun.data.base import Batch, DatasetInfo, DataSource, move_batch

__all__ = ["Batch", "DataSource", "DatasetInfo", "move_batch"]

"""Sample-quality metrics for generated images and the offline networks whose features they use.

- `fid`: Fréchet Inception Distance and Kernel Inception Distance on feature sets.
- `precision_recall`: improved precision and recall of k-NN feature manifolds.
- `features`: feature extractors (small reference networks shipped with the package, and
  Inception-v3 read from the local torch hub cache only).
- `sample_quality`: `SampleQuality`, which accumulates features batch by batch.
- `train_reference`: the script that trains and writes the shipped reference weights.
"""

from mtlrun.quality.features import (
    InceptionFeatures,
    ReferenceNetwork,
    feature_network,
    load_reference,
)
from mtlrun.quality.fid import frechet_distance, kernel_inception_distance
from mtlrun.quality.precision_recall import precision_recall
from mtlrun.quality.sample_quality import DIRECTIONS, SampleQuality

__all__ = [
    "DIRECTIONS",
    "InceptionFeatures",
    "ReferenceNetwork",
    "SampleQuality",
    "feature_network",
    "frechet_distance",
    "kernel_inception_distance",
    "load_reference",
    "precision_recall",
]

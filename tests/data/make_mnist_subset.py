"""Write the MNIST subsets the tests read, as gzipped IDX files with the original names:
the first 1000 training and 300 test digits of the full MNIST files in
tests/data/mnist/MNIST/raw/ (`dataset=mnist`), and the first 2500 training and 500 test
digits in tests/data/multi_mnist/MNIST/raw/ (`dataset=multi_mnist`, which needs more digits
to learn both positions).

    .venv/bin/python tests/data/make_mnist_subset.py [SOURCE_RAW_FOLDER]

SOURCE_RAW_FOLDER holds the four full files, gzipped or not (default: the shared copy at
../shared/data/MNIST/raw next to this checkout). The output is byte-for-byte reproducible
(gzip without a timestamp). MNIST is by Y. LeCun and C. Cortes (CC BY-SA 3.0).
"""

import gzip
import struct
import sys
from pathlib import Path

import numpy as np

from mtlrun.data.mnist import find_idx, read_idx

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "MNIST" / "raw"
# subset folder -> digits per split
SUBSETS = {"mnist": {"train": 1000, "t10k": 300}, "multi_mnist": {"train": 2500, "t10k": 500}}


def write_idx(path: Path, array: np.ndarray) -> None:
    """`array` (uint8) as a gzipped IDX file: 0, 0, type 0x08, ndim, sizes (big endian)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0))


def main(source: Path) -> None:
    for subset, counts in SUBSETS.items():
        target = HERE / subset / "MNIST" / "raw"
        target.mkdir(parents=True, exist_ok=True)
        for prefix, count in counts.items():
            for kind, dimensions in (("images-idx3", 3), ("labels-idx1", 1)):
                name = f"{prefix}-{kind}-ubyte"
                array = read_idx(find_idx(source, name), dimensions)[:count]
                write_idx(target / f"{name}.gz", array)
                print(f"{target / name}.gz: {array.shape}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE)

"""Remake docs/pictures/normal.png and landmarks.png: a short CPU run of each task on the
learnable fakes of tests/learnable_fakes.py, and the last picture that run logged to
TensorBoard, byte for byte. From the repository root (about a minute):

    OMP_NUM_THREADS=1 .venv/bin/python docs/pictures/make_pictures.py
"""

import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))
from learnable_fakes import write_learnable_celeba, write_learnable_nyuv2  # noqa: E402

COMMON = (
    "dataset.num_workers=0", "trainer.device=cpu", "trainer.threads=1",
    "trainer.progress=plain", "trainer.num_images=4",
)  # fmt: skip
RUNS = {  # picture name: (fake writer, overrides)
    "normal": (write_learnable_nyuv2, (
        "dataset=nyuv2", "tasks=[normal]", "dataset.augment.scales=null",
        "trainer.epochs=8", "trainer.batch_size=4",
    )),
    "landmarks": (write_learnable_celeba, (
        "dataset=celeba", "tasks=[landmarks]", "dataset.check_md5=false",
        "dataset.image_size=64", "trainer.epochs=8", "trainer.batch_size=16",
    )),
}  # fmt: skip


def main() -> None:
    mtlrun = Path(sys.executable).parent / "mtlrun"
    with tempfile.TemporaryDirectory() as folder:
        for name, (write, overrides) in RUNS.items():
            root = write(Path(folder) / name / "data")
            run = Path(folder) / name / "run"
            subprocess.run(
                [mtlrun, *overrides, f"dataset.root={root}", *COMMON, f"hydra.run.dir={run}"],
                check=True,
            )
            events = EventAccumulator(str(run), size_guidance={"images": 0})
            events.Reload()
            last = events.Images(f"images/{name}/truth_vs_prediction")[-1]
            (HERE / f"{name}.png").write_bytes(last.encoded_image_string)


if __name__ == "__main__":
    main()

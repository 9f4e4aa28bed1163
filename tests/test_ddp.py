"""Data-parallel training under torchrun on the CPU (gloo, 2 processes).

After the same steps, the weights of a 2-process run equal those of one process that trains
on the same global batches; a rank that fails stops the whole job with its own one-line
error, quickly, instead of leaving the others waiting.

The one process is a 1-process ddp run: it computes BatchNorm statistics as the 2-process
run does (in two passes over sums), where torch's own BatchNorm rounds differently. At 1e-5
that matters: a ReLU input that lands within rounding of zero switches the ReLU, and the
switch reaches every gradient below it (seen on this data: one value in 65,536 at the
backbone's last layer, 3e-3 apart in the first layer's gradient).
"""

import sys
import time
from pathlib import Path

import pytest
import torch

from mtlrun import checkpoint
from processes import Finished, Started

pytestmark = pytest.mark.slow  # torchrun with two processes

FAULT_RUNNER = Path(__file__).with_name("fault_runner.py")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
ONE_PROCESS = (*TORCHRUN[:-1], "--nproc_per_node=1", "-m", "mtlrun")
# 4 steps of a global batch of 8 (4 images per process). cls and seg share the cnn
# backbone, whose BatchNorm statistics must then span both processes. SGD, because Adam's
# first steps move every weight by about ±lr whatever the gradient's size, so float rounding
# in a near-zero gradient would flip whole steps: the comparison would test noise. Contiguous
# memory, because torch's channels-last BatchNorm backward on the CPU rounds differently
# (about 1e-5 relative per layer, compounding to ~1e-3 through the network), which the
# cross-rank BatchNorm does not reproduce.
ARGUMENTS = (
    "experiment=smoke",
    "optimizer=sgd",
    "optimizer.lr=0.01",
    "trainer.channels_last=false",
    "tasks=[cls,seg]",
    "dataset.train_size=32",
    "dataset.val_size=8",
    "trainer.batch_size=8",
    "trainer.epochs=1",
    "trainer.device=cpu",
    "trainer.threads=1",
    "trainer.progress=plain",
    "trainer.log_every_n_steps=1",
    "trainer.num_images=2",
)
TOLERANCE = 1e-5


def start(folder: Path, launcher: tuple[str, ...], *overrides: str) -> Started:
    run_folder = folder / "run"
    return Started([*launcher, *ARGUMENTS, *overrides, f"hydra.run.dir={run_folder}"], folder)


def final_model(folder: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(folder / "run" / "checkpoints" / "last.pt")["model"]


def assert_succeeded(result: Finished) -> None:
    assert result.returncode == 0, result.output[-4000:]


@pytest.mark.parametrize("weighting", ["sum", "pcgrad"])
def test_two_processes_train_like_one_on_the_same_global_batches(
    weighting: str, tmp_path: Path
) -> None:
    single = start(
        tmp_path / "single", ONE_PROCESS, f"weighting={weighting}", "trainer.strategy=ddp"
    )
    ddp = start(
        tmp_path / "ddp",
        (*TORCHRUN, "-m", "mtlrun"),
        f"weighting={weighting}",
        "trainer.strategy=ddp",
    )
    single_result, ddp_result = single.finish(), ddp.finish()
    assert_succeeded(single_result)
    assert_succeeded(ddp_result)
    expected, got = final_model(tmp_path / "single"), final_model(tmp_path / "ddp")
    assert expected.keys() == got.keys()
    worst = max((expected[key].double() - got[key].double()).abs().max() for key in expected)
    assert worst <= TOLERANCE, f"largest difference {worst:.2e}"
    # Rank 0 alone wrote the run folder; the other rank printed nothing of its own.
    assert (tmp_path / "ddp" / "run" / "metrics.json").is_file()
    assert len(list((tmp_path / "ddp" / "run").glob("events.out.tfevents.*"))) == 1
    assert ddp_result.stdout.count("validation metrics") == 1
    saved = checkpoint.load(tmp_path / "ddp" / "run" / "checkpoints" / "last.pt")
    assert len(saved["rng"]) == 2  # each rank's random state, for an exact resume


def test_a_failing_rank_stops_the_job_with_its_error(tmp_path: Path) -> None:
    began = time.perf_counter()
    job = start(
        tmp_path,
        (*TORCHRUN, str(FAULT_RUNNER), "rank-1-error", "2"),
        "trainer.strategy=ddp",
    ).finish()
    elapsed = time.perf_counter() - began
    assert job.returncode != 0
    assert "mtlrun: error: rank 1: planted failure of rank 1" in job.stderr, job.output[-4000:]
    assert elapsed < 90, f"the job took {elapsed:.0f} s to stop"
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_ddp_without_torchrun_is_one_clear_line(tmp_path: Path) -> None:
    result = start(tmp_path, (sys.executable, "-m", "mtlrun"), "trainer.strategy=ddp").finish()
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "torchrun --nproc_per_node" in line


def test_feature_side_gradients_are_refused_under_ddp(tmp_path: Path) -> None:
    job = start(
        tmp_path,
        (*TORCHRUN, "-m", "mtlrun"),
        "trainer.strategy=ddp",
        "weighting=mgda",
        "weighting.on=features",
    ).finish()
    assert job.returncode != 0
    assert "weighting.on=features cannot train data-parallel" in job.stderr


def test_inst_trains_data_parallel(tmp_path: Path) -> None:
    """Instance segmentation beside seg under two processes: every head parameter gets a
    gradient at every step (none unused, even in a batch whose share holds no object), and
    the run ends with its metrics. (Its loss is normalised by each process's own positive
    locations, as `det`'s is, so it is not compared with one process here.)"""
    arguments = [a for a in ARGUMENTS if not a.startswith("tasks=")]
    folder = tmp_path / "run"
    job = Started(
        [*TORCHRUN, "-m", "mtlrun", *arguments, "tasks=[inst,seg]", "tasks.inst.hidden=16",
         "trainer.strategy=ddp", f"hydra.run.dir={folder}"],
        tmp_path,
    ).finish()  # fmt: skip
    assert_succeeded(job)
    assert "val/inst/map50" in (folder / "metrics.json").read_text()

"""Kill a real `mtlrun` process with SIGKILL at many points, re-run it, and check that it ends
exactly where a run that was never interrupted ends: the same weights, the same metrics.

The faults are planted by `fault_runner.py` (inside a step, inside an evaluation, half-way
through a checkpoint write, between the rotation of last.pt and the new one) plus kills from
outside at random moments. A re-run into the same run folder resumes by itself.
"""

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from mtlrun import checkpoint
from processes import Finished, Started

pytestmark = pytest.mark.slow  # kill-and-resume runs in subprocesses

FAULT_RUNNER = Path(__file__).with_name("fault_runner.py")
# 2 epochs of 6 steps, a checkpoint every 2 steps; dropout and VAE sampling draw random
# numbers, so every random state must survive the kill too.
ARGUMENTS = (
    "experiment=smoke",
    "tasks=[cls,gen]",
    "tasks.cls.dropout=0.5",
    "tasks.gen.variant=vae",
    "dataset.train_size=48",
    "dataset.val_size=16",
    "trainer.batch_size=8",
    "trainer.epochs=2",
    "trainer.checkpoint_every_n_steps=2",
    "trainer.keep_checkpoints=2",
    "trainer.device=cpu",
    "trainer.threads=1",
    "trainer.progress=plain",
    "trainer.log_every_n_steps=1",
    "trainer.num_images=2",
)
# (fault, n): the n-th time the point is reached. Checkpoint writes: 1 = step 2, 2 = step 4,
# 3 = the end of epoch 1 (last.pt), 4 = its best.pt.
PLANTED = [
    ("step", 3),
    ("step", 10),
    ("eval", 1),
    ("eval", 2),
    ("checkpoint-write", 2),
    ("checkpoint-write", 4),
    ("checkpoint-rotate", 2),
]
RANDOM_KILLS = 2


def start(folder: Path, *prefix: str) -> Started:
    command = [sys.executable, *prefix, *ARGUMENTS, f"hydra.run.dir={folder / 'run'}"]
    return Started(command, folder)


def final_state(folder: Path) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    metrics = json.loads((folder / "run" / "metrics.json").read_text())
    metrics.pop("wall_s")
    model = checkpoint.load(folder / "run" / "checkpoints" / "last.pt")["model"]
    return metrics, model


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    folder = tmp_path_factory.mktemp("uninterrupted")
    began = time.perf_counter()
    result = start(folder, "-m", "mtlrun").finish()
    assert result.returncode == 0, result.output[-3000:]
    return folder, time.perf_counter() - began


def kill_at_random(folder: Path, after_s: float) -> Finished:
    process = start(folder, "-m", "mtlrun")
    time.sleep(after_s)
    process.process.send_signal(signal.SIGKILL)
    return process.finish()


def test_every_kill_resumes_to_exactly_the_uninterrupted_run(
    reference: tuple[Path, float], tmp_path: Path
) -> None:
    reference_folder, duration_s = reference
    expected_metrics, expected_model = final_state(reference_folder)
    folders: dict[str, Path] = {}
    killed: dict[str, Finished] = {}
    for index in range(0, len(PLANTED), 2):  # two processes at a time: two cores
        pair = {}
        for fault, count in PLANTED[index : index + 2]:
            name = f"{fault}-{count}"
            folders[name] = tmp_path / name
            pair[name] = start(folders[name], str(FAULT_RUNNER), fault, str(count))
        killed.update({name: process.finish() for name, process in pair.items()})
    moments = random.Random(2026).sample(range(35, 95), RANDOM_KILLS)
    for percent in moments:
        name = f"random-{percent}%"
        folders[name] = tmp_path / name
        killed[name] = kill_at_random(folders[name], duration_s * percent / 100)

    for name, result in killed.items():
        assert result.returncode == -signal.SIGKILL, f"{name} was not killed: {result.output}"
    resumed = {name: start(folder, "-m", "mtlrun") for name, folder in folders.items()}
    for name, process in resumed.items():
        result = process.finish()
        assert result.returncode == 0, f"{name}: {result.output[-3000:]}"
        metrics, model = final_state(folders[name])
        assert metrics == expected_metrics, name
        different = [key for key in model if not torch.equal(model[key], expected_model[key])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"


def test_a_kill_inside_the_checkpoint_write_leaves_the_previous_checkpoint(
    tmp_path: Path,
) -> None:
    """Killed half-way through its 2nd checkpoint write (step 4): the file of step 2 is
    whole and verifies; the half-written one never took its name."""
    result = start(tmp_path, str(FAULT_RUNNER), "checkpoint-write", "2").finish()
    assert result.returncode == -signal.SIGKILL
    folder = tmp_path / "run" / "checkpoints"
    assert checkpoint.load(folder / "last.pt")["step"] == 2
    assert not (folder / "last.1.pt").exists()
    (temporary,) = folder.glob(".last.pt.tmp-*")  # left by the kill, never loaded
    with pytest.raises(Exception, match="not a readable"):
        checkpoint.load(temporary)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_preemption_signal_saves_stops_and_resumes_exactly(
    signum: signal.Signals, reference: tuple[Path, float], tmp_path: Path
) -> None:
    """What SLURM sends before it kills a job: the run saves a checkpoint at the next step
    boundary, says so in one line and exits as the signal would have; a re-run continues."""
    process = start(tmp_path, "-m", "mtlrun")
    process.wait_for("step 3/")  # plain lines: "epoch 1/2  step 3/12  ETA ..."
    process.process.send_signal(signum)
    stopped = process.finish()
    assert stopped.returncode == 128 + signum, stopped.output[-3000:]
    (line,) = stopped.stderr.strip().splitlines()
    assert signum.name in line and f"resume={tmp_path / 'run'}" in line
    saved_step = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["step"]
    assert 3 <= saved_step < 12 and f"step {saved_step}" in line

    resumed = start(tmp_path, "-m", "mtlrun").finish()
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert f"resumed from {tmp_path / 'run' / 'checkpoints' / 'last.pt'}" in resumed.stdout
    expected_metrics, expected_model = final_state(reference[0])
    metrics, model = final_state(tmp_path)
    assert metrics == expected_metrics
    assert all(torch.equal(model[key], expected_model[key]) for key in model)


def descendants(pid: int) -> list[int]:
    """The processes started, directly or not, by `pid` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def submitit_job_process(launcher_pid: int, timeout_s: float = 120) -> int:
    """The pid of the process running the sweep job under submitit's local executor."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in descendants(launcher_pid):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"submitit.core._submit" in command:
                return pid
        time.sleep(0.2)
    raise AssertionError("no submitit job process appeared")


def test_under_submitit_a_preempted_job_requeues_and_resumes_by_itself(
    reference: tuple[Path, float], tmp_path: Path
) -> None:
    """SIGUSR2 (what submitit asks SLURM to send before the time limit) to the running job:
    it saves a checkpoint, submitit requeues it, and the new attempt continues from the
    checkpoint in its run folder, ending exactly where the uninterrupted run ends."""
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "mtlrun",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep}",
        *ARGUMENTS,
    ]
    process = Started(command, tmp_path)
    job = submitit_job_process(process.process.pid)
    deadline = time.monotonic() + 120
    while not (sweep / "0" / "checkpoints" / "last.pt").exists():  # training has begun
        assert time.monotonic() < deadline, "the job never wrote a checkpoint"
        time.sleep(0.05)
    os.kill(job, signal.SIGUSR2)
    result = process.finish()
    assert result.returncode == 0, result.output[-3000:]
    logs = "".join(path.read_text() for path in sweep.rglob("*_log.*"))
    assert "Requeued job" in logs, logs[-3000:]
    assert "resumed from" in logs, logs[-3000:]
    expected_metrics, expected_model = final_state(reference[0])
    metrics = json.loads((sweep / "0" / "metrics.json").read_text())
    metrics.pop("wall_s")
    model = checkpoint.load(sweep / "0" / "checkpoints" / "last.pt")["model"]
    assert metrics == expected_metrics
    assert all(torch.equal(model[key], expected_model[key]) for key in model)

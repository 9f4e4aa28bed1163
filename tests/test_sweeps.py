"""Sweeps as users run them: `experiment=stl_vs_mtl` on the joblib launcher (2 jobs at once)
ending in the Δm report, a sweep killed after 2 jobs and re-run to completion, the
submitit_local launcher, and a 3-trial Optuna search; in process, the sweeper's job plan
and the SLURM launcher config.

Every sweep is a real `mtlrun -m` process in its own folder, on the tiny config.
"""

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from mtlrun.cli import config_dir
from mtlrun.sweeps import plan_jobs
from processes import Finished, Started, run

pytestmark = pytest.mark.slow  # multirun sweeps on every launcher

MTLRUN = str(Path(sys.executable).parent / "mtlrun")

# Records, in each job's folder, the process that ran the job, its torch threads and when
# it ran: what a launcher did, seen from inside the job.
PROBE = """
import json, os, time
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback

class JobProbe(Callback):
    def on_job_start(self, config, **kwargs):
        self.started = time.time()

    def on_job_end(self, config, job_return, **kwargs):
        import torch
        record = {"pid": os.getpid(), "threads": torch.get_num_threads(),
                  "start": self.started, "end": time.time()}
        folder = HydraConfig.get().runtime.output_dir
        with open(os.path.join(folder, "probe.json"), "w") as file:
            json.dump(record, file)
"""


def assert_succeeded(result: Finished) -> None:
    assert result.returncode == 0, result.output[-3000:]
    assert "Traceback" not in result.output, result.output[-3000:]


def job_overrides(job: Path) -> list[str]:
    return list(OmegaConf.load(job / ".hydra" / "overrides.yaml"))


def metrics(job: Path) -> dict[str, float]:
    return json.loads((job / "metrics.json").read_text())


def parse(*overrides: str) -> list:
    return OverridesParser.create().parse_overrides(list(overrides))


class Sweep:
    """A sweep process started in the background, finished (once) by the test that needs it."""

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.folder = cwd / "sweep"
        self.started = Started([*command, f"hydra.sweep.dir={self.folder}"], cwd)
        self.finished: Finished | None = None

    def finish(self) -> Finished:
        if self.finished is None:
            self.finished = self.started.finish()
        assert_succeeded(self.finished)
        return self.finished


@pytest.fixture(scope="module")
def sweeps(
    tiny_overrides: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Sweep]]:
    """The joblib, submitit_local and Optuna sweeps, started together: they spend much of
    their time starting processes and waiting on them, so they overlap well. Those no test
    finished (deselected, or after a failure) are waited for at the end: killing one would
    orphan its launcher's worker processes."""
    joblib_folder = tmp_path_factory.mktemp("joblib")
    (joblib_folder / "probe.py").write_text(PROBE)
    tiny = list(tiny_overrides)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", str(joblib_folder))  # the jobs' processes import the probe
        # No trainer.threads here: the launcher itself must keep jobs x threads <= cores.
        joblib = Sweep(
            [
                *[MTLRUN, "-m", "experiment=stl_vs_mtl", "tasks=[cls,seg]", "weighting=sum,uw"],
                *["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *tiny],
                "+hydra.callbacks.probe._target_=probe.JobProbe",
            ],
            joblib_folder,
        )
    one_thread = [*tiny, "trainer.threads=1"]
    submitit_local = Sweep(
        [MTLRUN, "-m", "hydra/launcher=submitit_local", "tasks=[cls],[seg]", *one_thread],
        tmp_path_factory.mktemp("submitit"),
    )
    optuna = Sweep(
        [
            MTLRUN,
            f"{'hparams_search'}=optimizer",
            "hydra.sweeper.n_trials=3",
            "tasks=[gen]",
            *one_thread,
        ],
        tmp_path_factory.mktemp("optuna"),
    )
    started = {"joblib": joblib, "submitit_local": submitit_local, "optuna": optuna}
    yield started
    for sweep in started.values():
        if sweep.finished is None:
            sweep.finished = sweep.started.finish()


def test_plan_runs_each_task_alone_once_then_together_per_weighting() -> None:
    jobs = plan_jobs(parse("tasks=[cls,seg,gen]", "weighting=sum,static", "optimizer.lr=0.1"), [])
    assert jobs == [
        ["tasks=[cls]", "weighting=sum", "optimizer.lr=0.1"],
        ["tasks=[seg]", "weighting=sum", "optimizer.lr=0.1"],
        ["tasks=[gen]", "weighting=sum", "optimizer.lr=0.1"],
        ["tasks=[cls,seg,gen]", "weighting=sum", "optimizer.lr=0.1"],
        ["tasks=[cls,seg,gen]", "weighting=static", "optimizer.lr=0.1"],
    ]


def test_plan_sweeps_other_settings_for_every_job_and_drops_weighting_keys_when_alone() -> None:
    overrides = parse(
        "tasks=[cls],[cls,seg]", "weighting=static", "weighting.weights={cls:2}", "trainer.seed=0,1"
    )
    assert plan_jobs(overrides, []) == [
        ["tasks=[cls]", "weighting=sum", "trainer.seed=0"],
        ["tasks=[cls]", "weighting=sum", "trainer.seed=1"],
        ["tasks=[seg]", "weighting=sum", "trainer.seed=0"],
        ["tasks=[seg]", "weighting=sum", "trainer.seed=1"],
        ["tasks=[cls,seg]", "weighting=static", "weighting.weights={cls:2}", "trainer.seed=0"],
        ["tasks=[cls,seg]", "weighting=static", "weighting.weights={cls:2}", "trainer.seed=1"],
    ]


def test_plan_without_tasks_override_uses_the_composed_tasks() -> None:
    assert plan_jobs(parse("weighting=uw"), ["cls", "seg"]) == [
        ["tasks=[cls]", "weighting=sum"],
        ["tasks=[seg]", "weighting=sum"],
        ["tasks=[cls,seg]", "weighting=uw"],
    ]


def compose_with_hydra(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("search", ["optimizer", "weighting"])
def test_hparams_searches_maximise_with_optuna(search: str) -> None:
    sweeper = compose_with_hydra(f"{'hparams_search'}={search}").hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    assert sweeper.direction == "maximize" and sweeper.params


def test_stl_vs_mtl_selects_its_sweeper_and_the_report_callback() -> None:
    hydra = compose_with_hydra("experiment=stl_vs_mtl").hydra
    assert hydra.sweeper._target_.endswith("SingleVsMultiTaskSweeper")
    assert [c._target_ for c in hydra.callbacks.values()] == ["mtlrun.sweeps.ReportAtSweepEnd"]
    assert hydra.mode.name == "MULTIRUN"


def test_stl_vs_mtl_on_joblib_runs_two_jobs_at_once_and_reports(sweeps: dict[str, Sweep]):
    result = sweeps["joblib"].finish()
    sweep = sweeps["joblib"].folder
    jobs = [sweep / str(number) for number in range(4)]
    chosen = [
        (list(OmegaConf.load(job / ".hydra" / "config.yaml").tasks), weighting)
        for job in jobs
        for weighting in [o for o in job_overrides(job) if o.startswith("weighting=")]
    ]
    assert chosen == [
        (["cls"], "weighting=sum"),
        (["seg"], "weighting=sum"),
        (["cls", "seg"], "weighting=sum"),
        (["cls", "seg"], "weighting=uw"),
    ]
    assert not (sweep / "4").exists()

    probes = [json.loads((job / "probe.json").read_text()) for job in jobs]
    workers = {probe["pid"] for probe in probes}
    assert len(workers) == 2 and sweeps["joblib"].started.process.pid not in workers
    first, second = sorted(probes, key=lambda probe: probe["start"])[:2]
    assert second["start"] < first["end"], "the first two jobs did not overlap"
    cores = os.cpu_count() or 1
    assert all(probe["threads"] <= max(cores // 2, 1) for probe in probes)

    markdown = (sweep / "report.md").read_text()
    assert "Higher Δm is better" in result.stdout and (sweep / "report.csv").is_file()
    for job in ("2", "3"):
        (line,) = [line for line in markdown.splitlines() if line.startswith(f"| {job} |")]
        float(line.split("|")[-2])  # a number, not n/a: both baselines were found
    assert markdown.count("cls ← 0; seg ← 1") == 2


def test_submitit_local_runs_a_two_job_sweep(sweeps: dict[str, Sweep]) -> None:
    sweeps["submitit_local"].finish()
    sweep = sweeps["submitit_local"].folder
    for job, task in (("0", "cls"), ("1", "seg")):
        assert f"val/{task}/loss" in metrics(sweep / job)
        assert list(OmegaConf.load(sweep / job / ".hydra" / "config.yaml").tasks) == [task]
    assert list((sweep / ".submitit").rglob("*_result.pkl"))  # submitit ran the jobs


def test_optuna_search_of_three_trials_returns_the_best(sweeps: dict[str, Sweep]) -> None:
    sweeps["optuna"].finish()
    sweep = sweeps["optuna"].folder
    trials = [sweep / str(number) for number in range(3)]
    values = [metrics(trial)["val/gen/psnr"] for trial in trials]
    assert len(set(values)) == 3  # the trials differ, so "the best" means something
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(values))
    chosen = job_overrides(trials[values.index(max(values))])
    searched = {
        key: value for key, value in (o.split("=", 1) for o in chosen) if "optimizer" in key
    }
    assert {key: float(value) for key, value in searched.items()} == dict(best.best_params)


def test_slurm_config_makes_a_valid_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The parameters of `hydra/launcher=slurm`, passed to submitit as the launcher passes
    them, make an sbatch script with our settings (a fake `srun` stands in for the cluster)."""
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert params.pop("_target_").endswith("submitit_launcher.SlurmLauncher")
    params.pop("submitit_folder")
    params["name"] = "mtlrun"
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(
        folder=tmp_path, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    executor.update_parameters(
        **{k if k in generic else f"slurm_{k}": v for k, v in params.items()}
    )
    script = executor._executor._make_submission_file_text("mtlrun", "job")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=240",
        "#SBATCH --mem=32GB",
        "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK",
    ):
        assert line in script, line


def test_sweep_killed_after_two_jobs_completes_the_rest_when_rerun(
    tiny_overrides: tuple[str, ...], tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    # Jobs 0 and 1 train 1 epoch, jobs 2 and 3 train 12: job 2 is killed after its first.
    command = [
        MTLRUN,
        "-m",
        *tiny_overrides,
        "trainer.epochs=1,12",  # after the tiny trainer.epochs=1, which it replaces
        "tasks=[cls],[seg]",
        "trainer.threads=1",
        "trainer.progress=plain",
        f"hydra.sweep.dir={sweep}",
    ]
    first = Started(command, tmp_path)
    wanted = [sweep / "0" / "metrics.json", sweep / "1" / "metrics.json"]
    wanted.append(sweep / "2" / "checkpoints" / "last.pt")
    deadline = time.monotonic() + 120
    while not all(path.exists() for path in wanted):
        assert first.process.poll() is None, first.finish().output[-3000:]
        assert time.monotonic() < deadline, "the sweep did not reach job 2"
        time.sleep(0.02)
    first.process.kill()
    first.finish()
    assert not (sweep / "2" / "metrics.json").exists() and not (sweep / "3").exists()
    done = {job: (sweep / job / "metrics.json").read_bytes() for job in ("0", "1")}
    stamps = {job: (sweep / job / "metrics.json").stat().st_mtime_ns for job in ("0", "1")}

    rerun = run(command, tmp_path)
    assert_succeeded(rerun)
    for job in ("0", "1"):  # not redone: the finished jobs' files are as they were
        assert (sweep / job / "metrics.json").read_bytes() == done[job]
        assert (sweep / job / "metrics.json").stat().st_mtime_ns == stamps[job]
    assert f"resumed from {sweep / '2' / 'checkpoints'}" in rerun.stdout
    assert metrics(sweep / "2")["epoch"] == 12 and metrics(sweep / "3")["epoch"] == 12
    assert metrics(sweep / "2")["step"] == metrics(sweep / "3")["step"]

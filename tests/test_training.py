"""In-process training runs of the tiny config: outputs, TensorBoard, determinism, resume and
non-finite losses."""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtlrun import checkpoint
from mtlrun.build import build
from mtlrun.engine import Run, fit
from mtlrun.errors import NonFiniteLossError, UserError

ComposeConfig = Callable[..., DictConfig]
RUN_KEYS = {"epoch", "step", "wall_s"}
# Static weights other than 1, so that logged weights and the weighted total are telling.
FINISHED_OVERRIDES = (
    "tasks=[cls,seg,gen]",
    "weighting=static",
    "weighting.weights={cls:2.0,seg:0.5}",
)
NAN_LOSS = re.compile(r"task '(\w+)' became NaN/inf at step (\d+)")


@dataclass
class FinishedRun:
    """A tiny run trained to its end, with the config it was built from."""

    cfg: DictConfig
    run: Run
    metrics: dict[str, float]

    @property
    def folder(self) -> Path:
        return self.run.output_dir


def train(compose_tiny: ComposeConfig, output_dir: Path, *overrides: str) -> FinishedRun:
    cfg = compose_tiny(*overrides)
    run = build(cfg, output_dir)
    return FinishedRun(cfg, run, fit(run))


def state(run: Run) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in run.model.state_dict().items()}


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    different = [key for key in first if not torch.equal(first[key], second[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def first(value: Any, count: int) -> Any:
    """The first `count` samples of a batch entry (a tensor or a dict of tensors)."""
    if isinstance(value, dict):
        return {key: first(item, count) for key, item in value.items()}
    return value[:count]


def without_time(metrics: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if key != "wall_s"}


@pytest.fixture(scope="module")
def finished(compose_tiny: ComposeConfig, tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """One epoch of cls, seg and gen with static weights."""
    return train(compose_tiny, tmp_path_factory.mktemp("smoke"), *FINISHED_OVERRIDES)


@pytest.fixture(scope="module")
def events(finished: FinishedRun) -> EventAccumulator:
    accumulator = EventAccumulator(str(finished.folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


# --- outputs of a run -----------------------------------------------------------------------


def test_metrics_json_has_exactly_the_val_metrics_and_progress(finished: FinishedRun) -> None:
    written = json.loads((finished.folder / "metrics.json").read_text())
    run = finished.run
    expected_val = {
        f"val/{name}/{metric}"
        for name, task in run.tasks.items()
        for metric in [*task.metric_directions, "loss"]
    }
    assert set(written) == expected_val | RUN_KEYS | {"directions"}
    # Each metric's direction, so that readers of the folder need not import the tasks.
    assert written["directions"] == {key: way.value for key, way in run.directions.items()}
    assert set(written["directions"]) == expected_val
    assert set(run.tasks) == {"cls", "seg", "gen"}
    assert written["epoch"] == run.trainer.epochs
    assert written["step"] == run.trainer.epochs * run.data.num_train_batches()
    assert written["wall_s"] > 0
    written.pop("directions")
    assert without_time(written) == without_time(finished.metrics)


def test_checkpoints_load_safely_and_hold_the_final_model(finished: FinishedRun) -> None:
    folder = finished.folder / "checkpoints"
    final = finished.run.model.state_dict()
    for name in ("last.pt", "best.pt"):
        content = torch.load(folder / name, map_location="cpu", weights_only=True)
        assert content["epoch"] == finished.metrics["epoch"]
        assert content["step"] == finished.metrics["step"]
        assert_same_weights(content["model"], final)  # one epoch: best is last
    last = torch.load(folder / "last.pt", weights_only=True)
    assert last["best"] == pytest.approx(finished.metrics[finished.run.monitor])
    assert last["metrics"] == {k: v for k, v in finished.metrics.items() if k not in RUN_KEYS}


def test_training_changed_the_weights(
    finished: FinishedRun, compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    initial = state(build(compose_tiny(*FINISHED_OVERRIDES), tmp_path))
    trained = finished.run.model.state_dict()
    changed = [key for key in initial if not torch.equal(initial[key], trained[key])]
    assert changed


def test_same_seed_gives_identical_metrics_and_weights(
    finished: FinishedRun, compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    again = train(compose_tiny, tmp_path, *FINISHED_OVERRIDES)
    assert without_time(again.metrics) == without_time(finished.metrics)
    assert_same_weights(state(again.run), state(finished.run))


# --- TensorBoard ------------------------------------------------------------------------------


def test_tensorboard_has_train_and_val_scalars(
    finished: FinishedRun, events: EventAccumulator
) -> None:
    tasks = list(finished.run.tasks)
    expected = {"train/loss/total", "train/lr"}
    expected |= {f"train/{kind}/{name}" for kind in ("loss", "weight") for name in tasks}
    val_tags = {key for key in finished.metrics if key.startswith("val/")}
    assert expected | val_tags <= set(events.Tags()["scalars"])


def test_tensorboard_val_scalars_equal_metrics_json(
    finished: FinishedRun, events: EventAccumulator
) -> None:
    written = json.loads((finished.folder / "metrics.json").read_text())
    for tag, value in written.items():
        if tag in RUN_KEYS or tag == "directions":
            continue
        (event,) = events.Scalars(tag)  # one evaluation in a 1-epoch run
        assert event.step == written["step"]
        assert event.value == pytest.approx(value, rel=1e-6, abs=1e-7)


def test_tensorboard_train_scalars_are_consistent(
    finished: FinishedRun, events: EventAccumulator
) -> None:
    """Logged every `log_every_n_steps`; total = Σ weight × loss; lr is the config's lr
    throughout the first epoch (the scheduler steps at epoch ends)."""
    trainer = finished.run.trainer
    every = trainer.log_every_n_steps
    steps = list(range(every, int(finished.metrics["step"]) + 1, every))
    tasks = list(finished.run.tasks)
    lambdas = finished.cfg.weighting.weights
    series = {
        tag: {event.step: event.value for event in events.Scalars(tag)}
        for tag in ["train/loss/total", "train/lr"]
        + [f"train/{kind}/{name}" for kind in ("loss", "weight") for name in tasks]
    }
    assert sorted(series["train/loss/total"]) == steps
    for step in steps:
        weighted = sum(
            series[f"train/weight/{name}"][step] * series[f"train/loss/{name}"][step]
            for name in tasks
        )
        assert series["train/loss/total"][step] == pytest.approx(weighted, rel=1e-5)
        for name in tasks:
            assert series[f"train/weight/{name}"][step] == lambdas.get(name, 1.0)
        assert series["train/lr"][step] == pytest.approx(finished.cfg.optimizer.lr, rel=1e-6)


def test_tensorboard_has_pictures_of_every_drawing_task(
    finished: FinishedRun, events: EventAccumulator
) -> None:
    run = finished.run
    count = run.trainer.num_images
    batch = next(iter(run.data.val_batches()))
    images = batch["image"][:count]
    run.model.eval()
    with torch.no_grad():
        _, outputs = run.model(images)
    run.model.train()
    expected = set()  # no images/input: every task's picture shows its inputs
    for name, task in run.tasks.items():
        target = first(batch["targets"][task.target], count)
        expected |= {f"images/{name}/{key}" for key in task.pictures(images, outputs[name], target)}
        expected |= {f"images/{name}/{key}" for key in task.evaluation_pictures()}
    assert "images/cls/confusion_matrix" in expected and len(expected) > 2
    assert set(events.Tags()["images"]) == expected


# --- resume -----------------------------------------------------------------------------------

RANDOM_TRAINING = ("tasks=[cls,gen]", "tasks.cls.dropout=0.5", "tasks.gen.variant=vae")


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["none", "cosine", "step"])
def test_resume_continues_exactly_like_a_straight_run(
    scheduler: str, compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    """2 epochs straight == 1 epoch, then `resume=<run folder>` for 1 more epoch. Dropout and
    the VAE's sampling draw random numbers, so the random state must carry over too. The
    1-epoch run had a 1-epoch cosine schedule: the resumed run must follow the 2-epoch one
    (the schedule comes from the config, not the checkpoint)."""
    chosen = (f"scheduler={scheduler}", *RANDOM_TRAINING)
    straight = train(compose_tiny, tmp_path / "straight", *chosen, "trainer.epochs=2")
    first = train(compose_tiny, tmp_path / "first", *chosen, "trainer.epochs=1")
    resumed = train(
        compose_tiny, tmp_path / "resumed", *chosen, "trainer.epochs=2", f"resume={first.folder}"
    )
    assert resumed.metrics["step"] == straight.metrics["step"]
    assert_same_weights(state(resumed.run), state(straight.run))
    assert without_time(resumed.metrics) == without_time(straight.metrics)


def test_resuming_a_finished_run_evaluates_without_training(
    finished: FinishedRun, compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    last = finished.folder / "checkpoints" / "last.pt"
    again = train(compose_tiny, tmp_path, *FINISHED_OVERRIDES, f"resume={last}")
    assert without_time(again.metrics) == without_time(finished.metrics)
    assert_same_weights(state(again.run), state(finished.run))


def test_resume_into_a_different_model_is_a_user_error(
    finished: FinishedRun, compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="does not fit"):
        train(
            compose_tiny, tmp_path, "tasks=[cls]", "weighting=static", f"resume={finished.folder}"
        )


@pytest.mark.parametrize("content", ["text", "foreign-dict"])
def test_resume_from_a_file_that_is_not_a_checkpoint(
    content: str, compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    path = tmp_path / "model.pt"
    if content == "text":
        path.write_text("not a checkpoint\n")
    else:
        torch.save({"model": {"weight": torch.zeros(2)}}, path)
    with pytest.raises(UserError, match="checkpoint"):
        train(compose_tiny, tmp_path / "run", f"resume={path}")


@pytest.mark.slow
def test_resume_from_a_missing_path(compose_tiny: ComposeConfig, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no checkpoint"):
        train(compose_tiny, tmp_path / "run", f"resume={tmp_path / 'nowhere'}")


# --- non-finite losses ------------------------------------------------------------------------


def test_huge_learning_rate_stops_with_the_task_and_step(
    compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    cfg = compose_tiny("optimizer.lr=1e30", "dataset.train_size=32")
    run = build(cfg, tmp_path)
    with pytest.raises(NonFiniteLossError) as raised:
        fit(run)
    task, step = NAN_LOSS.search(str(raised.value)).groups()
    assert task in run.tasks
    assert 2 <= int(step) <= run.data.num_train_batches()  # step 1 uses the initial weights
    assert not (tmp_path / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "metrics.json").exists()


@dataclass
class NanAfterResume:
    """The finished run resumed for another epoch on NaN images."""

    error: NonFiniteLossError
    new_folder: Path
    old_checkpoint_before: bytes  # the resumed-from last.pt, read before resuming


@pytest.fixture(scope="module")
def nan_after_resume(
    finished: FinishedRun, compose_tiny: ComposeConfig, tmp_path_factory: pytest.TempPathFactory
) -> NanAfterResume:
    before = (finished.folder / "checkpoints" / "last.pt").read_bytes()
    cfg = compose_tiny(
        *FINISHED_OVERRIDES, "trainer.epochs=2", "dataset.noise=nan", f"resume={finished.folder}"
    )
    run = build(cfg, tmp_path_factory.mktemp("nan-resumed"))
    with pytest.raises(NonFiniteLossError) as raised:
        fit(run)
    return NanAfterResume(raised.value, run.output_dir, before)


def test_nan_after_resume_keeps_the_last_good_checkpoint(
    finished: FinishedRun, nan_after_resume: NanAfterResume
) -> None:
    task, step = NAN_LOSS.search(str(nan_after_resume.error)).groups()
    assert task == next(iter(finished.run.tasks))
    assert int(step) == finished.metrics["step"] + 1  # the first step after the resumed one
    assert not (nan_after_resume.new_folder / "checkpoints" / "last.pt").exists()
    last = finished.folder / "checkpoints" / "last.pt"
    assert last.read_bytes() == nan_after_resume.old_checkpoint_before


def test_nan_message_points_at_a_saved_checkpoint(nan_after_resume: NanAfterResume) -> None:
    message = str(nan_after_resume.error)
    paths = [Path(found) for found in re.findall(r"(/\S+?)[.;,]?(?=\s|$)", message)]
    assert any(path.is_file() or (path / "last.pt").is_file() for path in paths), message


def test_skip_drops_only_the_steps_with_a_non_finite_loss(
    compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    """`trainer.nonfinite=skip`: the 2nd training step's cls loss is NaN. That step leaves
    the weights and the optimizer untouched, is counted in TensorBoard, and training goes on."""
    run = build(
        compose_tiny("tasks=[cls,seg]", "trainer.nonfinite=skip", "dataset.train_size=32"),
        tmp_path,
    )
    cls_loss, calls, snapshots = run.tasks["cls"].loss, 0, []

    def nan_on_second_call(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        loss = cls_loss(output, target)
        return loss * float("nan") if calls == 2 else loss

    run.tasks["cls"].loss = nan_on_second_call
    # Weights and BatchNorm statistics before every forward pass (training ones first).
    run.model.register_forward_pre_hook(lambda *_: snapshots.append(state(run)))
    metrics = fit(run)
    assert metrics["step"] == 4
    assert_same_weights(snapshots[1], snapshots[2])  # step 2 changed nothing, buffers included
    assert not all(torch.equal(snapshots[0][k], snapshots[1][k]) for k in snapshots[0])
    optimizer_steps = {int(s["step"]) for s in run.optimizer.state_dict()["state"].values()}
    assert optimizer_steps == {3}
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    skipped = {event.step: event.value for event in accumulator.Scalars("train/nonfinite_skipped")}
    assert skipped == {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}
    assert checkpoint_of(tmp_path)["skipped"] == 1


def test_skip_stops_after_too_many_non_finite_steps_in_a_row(
    compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    run = build(
        compose_tiny(
            "trainer.nonfinite=skip",
            "trainer.max_nonfinite_in_a_row=3",
            "dataset.noise=nan",
            "dataset.train_size=40",
        ),
        tmp_path,
    )
    with pytest.raises(NonFiniteLossError) as raised:
        fit(run)
    message = str(raised.value)
    assert "3 steps in a row" in message and "step 3" in message
    assert all(f"'{name}'" in message for name in run.tasks)
    assert "no checkpoint had been written yet" in message
    assert not (tmp_path / "checkpoints").exists()


def checkpoint_of(folder: Path) -> dict[str, Any]:
    return checkpoint.load(folder / "checkpoints" / "last.pt")


def test_a_rerun_into_a_finished_run_folder_trains_nothing(
    finished: FinishedRun, compose_tiny: ComposeConfig
) -> None:
    """A sweep re-run: the job's folder already holds its final metrics."""
    before = (finished.folder / "checkpoints" / "last.pt").read_bytes()
    events_before = sorted(finished.folder.glob("events.out.tfevents.*"))
    again = build(compose_tiny(*FINISHED_OVERRIDES), finished.folder)
    assert fit(again) == finished.metrics
    assert (finished.folder / "checkpoints" / "last.pt").read_bytes() == before
    assert sorted(finished.folder.glob("events.out.tfevents.*")) == events_before


@pytest.mark.slow
def test_a_rerun_into_an_unfinished_run_folder_resumes_from_its_checkpoint(
    compose_tiny: ComposeConfig, tmp_path: Path
) -> None:
    """A requeued or re-run job finds its own checkpoint and continues: 1 epoch, then the
    same folder with 2 epochs == 2 epochs straight. TensorBoard hides the events past the
    resumed step, so no curve has two values at one step."""
    chosen = (*RANDOM_TRAINING, "scheduler=cosine")
    straight = train(compose_tiny, tmp_path / "straight", *chosen, "trainer.epochs=2")
    train(compose_tiny, tmp_path / "again", *chosen, "trainer.epochs=1")
    resumed = train(compose_tiny, tmp_path / "again", *chosen, "trainer.epochs=2")
    assert resumed.run.resume is not None
    assert_same_weights(state(resumed.run), state(straight.run))
    assert without_time(resumed.metrics) == without_time(straight.metrics)
    accumulator = EventAccumulator(str(tmp_path / "again"))
    accumulator.Reload()
    steps = [event.step for event in accumulator.Scalars("train/loss/cls")]
    assert steps == sorted(set(steps)) == list(range(1, int(straight.metrics["step"]) + 1))

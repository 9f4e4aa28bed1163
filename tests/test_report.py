"""`mtlrun-report` on hand-made run folders: Δm% signs and directions, baseline matching
(exact, closest, missing, ambiguous, from --baseline), and the files and errors it writes.

A run folder here holds what a real run leaves: `metrics.json` (with its `directions` table),
`.hydra/config.yaml` and `.hydra/overrides.yaml`. The report reads directions from
`metrics.json` only and never imports the classes the config names.
"""

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from mtlrun.report import build_report, delta_m, main
from mtlrun.tasks import Direction

TARGETS = {
    "cls": "mtlrun.tasks.classification.ClassificationTask",
    "depth": "mtlrun.tasks.depth.DepthTask",
    "gen": "mtlrun.tasks.generation.GenerationTask",
    "det": "mtlrun.tasks.detection.DetectionTask",
    "odd": "nowhere.UnknownTask",  # a module that does not exist
}
# What the engine writes as metrics.json's "directions" for these metrics; `odd/score`
# declares none. A per-class key (`det/ap50/<class>`) is declared by its family.
DIRECTIONS = {
    "cls/acc": "max",
    "cls/f1": "max",
    "depth/abs_err": "min",
    "depth/rel_err": "min",
    "gen/psnr": "max",
    "gen/kl": "min",
    "det/map": "max",
    "det/ap50": "max",
}


def write_run(
    folder: Path,
    metrics: dict[str, float],
    overrides: list[str] | None = None,
    seed: int = 0,
    epochs: int = 1,
    weighting: str = "sum",
    directions: bool = True,
) -> Path:
    """A finished run of the tasks named in `metrics` (`val/<task>/<metric>` keys); without
    `directions`, as an mtlrun from before metrics.json carried them wrote it."""
    tasks = list(dict.fromkeys(key.split("/")[1] for key in metrics))
    config = {
        "tasks": {task: {"_target_": TARGETS[task], "hidden": 8} for task in tasks},
        "weighting": {"_target_": f"mtlrun.weighting.{weighting}.Weighting"},
        "trainer": {"epochs": epochs, "seed": seed, "progress": "none"},
        "optimizer": {"lr": 0.001},
        "resume": None,
    }
    if overrides is None:
        overrides = [f"tasks=[{','.join(tasks)}]", f"weighting={weighting}"]
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    content: dict[str, Any] = {**metrics, "epoch": epochs, "step": 10, "wall_s": 1.0}
    if directions:
        declared = {**DIRECTIONS, **{f"{task}/loss": "min" for task in tasks}}
        content["directions"] = {
            f"val/{name}": direction
            for name, direction in declared.items()
            if name.split("/")[0] in tasks
        }
    (folder / "metrics.json").write_text(json.dumps(content))
    return folder


CLS_ALONE = {"val/cls/acc": 0.80, "val/cls/f1": 0.70, "val/cls/loss": 0.50}
DEPTH_ALONE = {"val/depth/abs_err": 0.40, "val/depth/rel_err": 0.20, "val/depth/loss": 0.40}
TOGETHER = {
    "val/cls/acc": 0.88,  # +10%
    "val/cls/f1": 0.70,  # 0%
    "val/cls/loss": 0.40,  # lower: +20% (only with include_loss)
    "val/depth/abs_err": 0.30,  # lower is better: +25%
    "val/depth/rel_err": 0.25,  # higher is worse: -25%
    "val/depth/loss": 0.50,  # -25% (only with include_loss)
}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A stl_vs_mtl-like sweep: cls alone, depth alone, both together."""
    folder = tmp_path / "sweep"
    write_run(folder / "0", CLS_ALONE)
    write_run(folder / "1", DEPTH_ALONE)
    write_run(folder / "2", TOGETHER)
    return folder


def test_delta_m_signs_follow_directions() -> None:
    assert delta_m([(0.9, 0.8, Direction.MAX)]) == pytest.approx(12.5)
    assert delta_m([(0.7, 0.8, Direction.MAX)]) == pytest.approx(-12.5)
    assert delta_m([(0.3, 0.4, Direction.MIN)]) == pytest.approx(25.0)
    assert delta_m([(0.5, 0.4, Direction.MIN)]) == pytest.approx(-25.0)
    both = [(0.9, 0.8, Direction.MAX), (0.5, 0.4, Direction.MIN)]
    assert delta_m(both) == pytest.approx((12.5 - 25.0) / 2)
    with pytest.raises(ValueError):
        delta_m([])


def test_multi_task_row_is_compared_with_each_single_task_run(sweep: Path) -> None:
    report = build_report([sweep])
    rows = {row.label: row for row in report.rows}
    assert sorted(rows) == ["0", "1", "2"]
    assert rows["0"].delta_m is None and rows["1"].delta_m is None  # baselines themselves
    assert rows["2"].delta_m == pytest.approx((10 + 0 + 25 - 25) / 4)
    assert {b.task: b.label for b in rows["2"].baselines} == {"cls": "0", "depth": "1"}
    assert report.directions["val/depth/abs_err"] == Direction.MIN
    assert report.directions["val/cls/acc"] == Direction.MAX
    assert report.directions["val/cls/loss"] == Direction.MIN


def test_losses_count_only_when_asked(sweep: Path) -> None:
    (row,) = [row for row in build_report([sweep], include_loss=True).rows if row.label == "2"]
    assert row.delta_m == pytest.approx((10 + 0 + 20 + 25 - 25 - 25) / 6)


def test_missing_baseline_is_named_and_other_rows_still_reported(tmp_path: Path) -> None:
    write_run(tmp_path / "0", CLS_ALONE)
    write_run(tmp_path / "1", TOGETHER)
    main([str(tmp_path)])
    markdown = (tmp_path / "report.md").read_text()
    assert "no single-task run of 'depth'" in markdown
    assert "cls ← 0" in markdown
    assert "0.88" in markdown  # the multi-task run's metrics are still shown
    with (tmp_path / "report.csv").open() as file:
        rows = {row["run"]: row for row in csv.DictReader(file)}
    assert rows["1"]["delta_m_percent"] == ""
    assert float(rows["1"]["val/cls/acc"]) == pytest.approx(0.88)


def test_files_state_the_sign_convention_and_delta(sweep: Path) -> None:
    main([str(sweep)])
    markdown = (sweep / "report.md").read_text()
    assert "Higher Δm is better" in markdown
    assert "l_k = 1 when lower is better" in markdown
    (line,) = [line for line in markdown.splitlines() if line.startswith("| 2 |")]
    assert line.split("|")[-2].strip() == "+2.50"
    with (sweep / "report.csv").open() as file:
        rows = {row["run"]: row for row in csv.DictReader(file)}
    assert float(rows["2"]["delta_m_percent"]) == pytest.approx(2.5)
    assert rows["0"]["delta_m_percent"] == ""


def test_exact_settings_beat_other_seeds(tmp_path: Path) -> None:
    write_run(tmp_path / "0", {**CLS_ALONE, "val/cls/acc": 0.40}, seed=1)
    write_run(tmp_path / "1", CLS_ALONE, seed=0)
    write_run(tmp_path / "2", DEPTH_ALONE, seed=0)
    write_run(tmp_path / "3", TOGETHER, seed=0)
    (row,) = [row for row in build_report([tmp_path]).rows if row.label == "3"]
    assert {b.task: (b.label, b.note) for b in row.baselines} == {
        "cls": ("1", ""),
        "depth": ("2", ""),
    }
    assert row.delta_m == pytest.approx(2.5)


def test_equally_close_baselines_are_ambiguous(tmp_path: Path) -> None:
    write_run(tmp_path / "0", CLS_ALONE, seed=1)
    write_run(tmp_path / "1", CLS_ALONE, seed=2)
    write_run(tmp_path / "2", DEPTH_ALONE, seed=0)
    write_run(tmp_path / "3", TOGETHER, seed=0)
    (row,) = [row for row in build_report([tmp_path]).rows if row.label == "3"]
    assert row.delta_m is None
    (cls,) = [b for b in row.baselines if b.task == "cls"]
    assert cls.run is None and "ambiguous" in cls.note and "0, 1" in cls.note


def test_closest_baseline_is_used_and_its_differences_named(tmp_path: Path) -> None:
    write_run(tmp_path / "0", CLS_ALONE, epochs=3)
    write_run(tmp_path / "1", DEPTH_ALONE)
    write_run(tmp_path / "2", TOGETHER)
    (row,) = [row for row in build_report([tmp_path]).rows if row.label == "2"]
    (cls,) = [b for b in row.baselines if b.task == "cls"]
    assert cls.label == "0" and cls.note == "settings differ in trainer.epochs"
    assert row.delta_m == pytest.approx(2.5)


def test_baselines_from_another_folder(tmp_path: Path) -> None:
    write_run(tmp_path / "alone" / "0", CLS_ALONE)
    write_run(tmp_path / "alone" / "1", DEPTH_ALONE)
    worse = {**CLS_ALONE, "val/cls/acc": 0.10}  # would give another Δm if it were used
    write_run(tmp_path / "mtl" / "0", worse)
    write_run(tmp_path / "mtl" / "1", TOGETHER)
    report = build_report([tmp_path / "mtl"], baseline_folders=[tmp_path / "alone"])
    assert [row.label for row in report.rows] == ["0", "1"]  # rows: only the given folder
    (row,) = [row for row in report.rows if row.label == "1"]
    assert row.delta_m == pytest.approx(2.5)
    assert all("alone" in b.label for b in row.baselines)


def test_metric_of_unknown_direction_is_left_out(tmp_path: Path) -> None:
    write_run(tmp_path / "0", CLS_ALONE)
    write_run(tmp_path / "1", {"val/odd/score": 2.0})
    write_run(tmp_path / "2", {"val/cls/acc": 0.88, "val/cls/f1": 0.70, "val/odd/score": 4.0})
    report = build_report([tmp_path])
    (row,) = [row for row in report.rows if row.label == "2"]
    assert row.delta_m == pytest.approx((10 + 0) / 2)
    assert any("val/odd/score left out of Δm" in note for note in row.notes)
    assert report.directions["val/odd/score"] is None


def test_zero_baseline_is_left_out(tmp_path: Path) -> None:
    write_run(tmp_path / "0", {**CLS_ALONE, "val/cls/f1": 0.0})
    write_run(tmp_path / "1", DEPTH_ALONE)
    write_run(tmp_path / "2", TOGETHER)
    (row,) = [row for row in build_report([tmp_path]).rows if row.label == "2"]
    assert row.delta_m == pytest.approx((10 + 25 - 25) / 3)
    assert any("val/cls/f1 left out" in note for note in row.notes)


def test_unfinished_runs_are_listed(sweep: Path) -> None:
    (sweep / "3" / ".hydra").mkdir(parents=True)
    (sweep / "0" / ".hydra" / "config.yaml").rename(sweep / "3" / ".hydra" / "config.yaml")
    write_run(sweep / "4", CLS_ALONE)  # replaces run 0 as the cls baseline
    report = build_report([sweep])
    assert [path.name for path in report.unfinished] == ["3"]
    assert [row.label for row in report.rows] == ["1", "2", "4"]


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda root: root / "nowhere", ["no folder", "nowhere"]),
        (lambda root: root, ["no finished runs"]),
    ],
    ids=["no folder", "empty folder"],
)
def test_bad_folders_are_one_line_errors(
    make: Any, named: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(make(tmp_path))])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("mtlrun-report: error:")
    for word in named:
        assert word in line


def test_every_task_types_metrics_count(tmp_path: Path) -> None:
    """Task types whose exact metric keys depend on their settings (a VAE's kl, one AP per
    detection class) still declare every metric's direction on the class; per-class
    metrics stay out of Δm, so each task weighs by its summary metrics."""
    write_run(tmp_path / "0", {"val/gen/psnr": 20.0, "val/gen/kl": 2.0})
    write_run(tmp_path / "1", {"val/det/map": 0.5, "val/det/ap50/circle": 0.8})
    together = {
        "val/gen/psnr": 22.0,  # +10%
        "val/gen/kl": 3.0,  # lower is better: -50%
        "val/det/map": 0.55,  # +10%
        "val/det/ap50/circle": 0.6,  # per class: not counted
    }
    write_run(tmp_path / "2", together)
    report = build_report([tmp_path])
    (row,) = [row for row in report.rows if row.label == "2"]
    assert report.directions["val/gen/kl"] == Direction.MIN
    assert report.directions["val/det/map"] == Direction.MAX
    assert row.delta_m == pytest.approx((10 - 50 + 10) / 3)


def test_runs_from_before_directions_still_report(tmp_path: Path) -> None:
    """An older mtlrun wrote no directions: its metrics are shown, left out of Δm, and one
    note per run says why."""
    write_run(tmp_path / "0", CLS_ALONE)
    write_run(tmp_path / "1", DEPTH_ALONE)
    write_run(tmp_path / "2", TOGETHER, directions=False)
    write_run(tmp_path / "3", TOGETHER, seed=1)  # a current run beside it: Δm as usual
    report = build_report([tmp_path])
    rows = {row.label: row for row in report.rows}
    assert rows["2"].delta_m is None
    (note,) = [note for note in rows["2"].notes if "no 'directions'" in note]
    assert "val/cls/acc" in note and "val/depth/rel_err" in note
    assert rows["3"].delta_m == pytest.approx(2.5)
    assert report.directions["val/cls/acc"] == Direction.MAX  # from the run that declares it
    main([str(tmp_path)])
    assert "0.88" in (tmp_path / "report.md").read_text()


def test_reading_runs_imports_none_of_the_code_their_configs_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A results folder is data: neither a module that does not exist nor one that does
    (and would leave a mark when imported) is imported, and the report still comes out."""
    code = tmp_path / "code"
    code.mkdir()
    marker = tmp_path / "imported"
    (code / "planted_task.py").write_text(f"open({str(marker)!r}, 'w').close()\nTask = object\n")
    monkeypatch.syspath_prepend(str(code))
    write_run(tmp_path / "runs" / "0", CLS_ALONE)
    write_run(tmp_path / "runs" / "1", DEPTH_ALONE)
    write_run(tmp_path / "runs" / "2", TOGETHER)
    for name, target in [("0", "planted_task.Task"), ("2", "no_such_module.tasks.Task")]:
        config_file = tmp_path / "runs" / name / ".hydra" / "config.yaml"
        config = OmegaConf.load(config_file)
        config.tasks.cls._target_ = target
        OmegaConf.save(config, config_file)
    build_report([tmp_path / "runs"])  # anything reporting imports on first use, imported now
    before = set(sys.modules)
    main([str(tmp_path / "runs")])
    assert set(sys.modules) - before == set()
    assert not marker.exists()
    markdown = (tmp_path / "runs" / "report.md").read_text()
    (line,) = [line for line in markdown.splitlines() if line.startswith("| 2 |")]
    assert line.split("|")[-2].strip() == "+2.50"


def test_nan_metrics_are_left_out_and_named(tmp_path: Path) -> None:
    write_run(tmp_path / "0", {**CLS_ALONE, "val/cls/f1": float("nan")})
    write_run(tmp_path / "1", DEPTH_ALONE)
    write_run(tmp_path / "2", {**TOGETHER, "val/depth/abs_err": float("nan")})
    (row,) = [row for row in build_report([tmp_path]).rows if row.label == "2"]
    assert row.delta_m == pytest.approx((10 - 25) / 2)  # acc and rel_err are left
    for key in ("val/cls/f1", "val/depth/abs_err"):
        assert any(f"{key} left out of Δm: NaN" in note for note in row.notes), row.notes


def test_a_near_zero_baseline_is_warned_about(tmp_path: Path, capsys: Any) -> None:
    write_run(tmp_path / "0", {**CLS_ALONE, "val/cls/f1": 0.0046})
    write_run(tmp_path / "1", DEPTH_ALONE)
    write_run(tmp_path / "2", {**TOGETHER, "val/cls/f1": 0.0059})
    (row,) = [row for row in build_report([tmp_path]).rows if row.label == "2"]
    assert row.delta_m == pytest.approx((10 + 100 * 0.0013 / 0.0046 + 25 - 25) / 4)
    (warning,) = [note for note in row.notes if note.startswith("warning:")]
    assert "val/cls/f1 is 0.0046, near zero" in warning and "+28.26%" in warning
    (sweep,) = [row for row in build_report([tmp_path]).rows if row.label == "0"]
    assert not any(note.startswith("warning:") for note in sweep.notes)

"""A non-editable install (a built wheel) carries conf/ inside the package and finds it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import mtlrun.cli

pytestmark = pytest.mark.slow  # builds and installs a wheel

REPOSITORY = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300

REPORT_CONFIG_DIR = """
import json, mtlrun, mtlrun.cli
folder = mtlrun.cli.config_dir()
print(json.dumps({
    "package": mtlrun.__file__,
    "config_dir": str(folder),
    "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*.yaml")),
}))
"""


def run_python(arguments: list[str], cwd: Path, python_path: Path | None = None) -> str:
    unset = ("PYTHONPATH", "HYDRA_FULL_ERROR")
    environment = {key: value for key, value in os.environ.items() if key not in unset}
    if python_path is not None:
        environment["PYTHONPATH"] = str(python_path)
    result = subprocess.run(
        [sys.executable, *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built as a wheel and installed (without dependencies) into a folder."""
    root = tmp_path_factory.mktemp("wheel")
    run_python(
        ["-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(root / "dist"), "."],
        cwd=REPOSITORY,
    )
    (wheel,) = (root / "dist").glob("mtlrun-*.whl")
    target = root / "site"
    run_python(
        ["-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        cwd=root,
    )
    return target


def repository_config_files() -> list[str]:
    folder = mtlrun.cli.config_dir()
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*.yaml"))


def test_installed_package_finds_its_own_conf(installed: Path) -> None:
    report = json.loads(run_python(["-c", REPORT_CONFIG_DIR], installed.parent, installed))
    package = Path(report["package"]).parent
    config_dir = Path(report["config_dir"])
    assert package == installed / "mtlrun"
    assert config_dir == package / "conf"
    assert "config.yaml" in report["files"]
    for group in mtlrun.cli.GROUPS:
        assert (config_dir / group).is_dir(), group
    assert report["files"] == repository_config_files()


def test_installed_command_composes_from_packaged_conf(installed: Path) -> None:
    """`python -m mtlrun --cfg job` from the wheel composes (Hydra reads the shipped conf)."""
    printed = run_python(
        ["-m", "mtlrun", "--cfg", "job", "tasks=[seg]", "trainer.epochs=2"],
        installed.parent,
        installed,
    )
    cfg = OmegaConf.create(printed)
    assert list(cfg.tasks) == ["seg"] and cfg.trainer.epochs == 2

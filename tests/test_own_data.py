"""A user's own data and config folder, as the README's "Your own data" shows them: a Python
class in the current directory named by `_target_`, an option file in a folder given with
`--config-dir` (or `hydra.searchpath`), checked and trained without PYTHONPATH; and the
mistakes along the way, each one line."""

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from processes import Finished, assert_one_line_error, run

MTLRUN = str(Path(sys.executable).parent / "mtlrun")

# The README's example, word for word: a data source of one's own.
MY_DATA = '''
import torch
from mtlrun.data import DatasetInfo


class MyData:
    """Bright or dark noise images; the target `digit` says which (0 dark, 1 bright)."""

    def __init__(self, size=16, count=64, grey=False, *, batch_size, shuffle_seed=0,
                 device="cpu", rank=0, world_size=1):
        self.info = DatasetInfo(name="mine", image_size=(size, size),
                                targets=frozenset({"digit"}), num_classes={"digit": 2})
        generator = torch.Generator().manual_seed(0)
        brightness = torch.rand(count, 1, 1, 1, generator=generator)
        noise = torch.rand(count, 3, size, size, generator=generator)
        self.images = (0.5 * brightness + 0.5 * noise).clamp(0, 1)
        if grey:  # a mistake the pre-flight check names
            self.images = self.images[:, :1]
        self.labels = (brightness.flatten() > 0.5).long()
        self.batch_size, self.seed = batch_size, shuffle_seed

    def num_train_batches(self):
        return len(self.images) // self.batch_size

    def train_batches(self, epoch, start=0):
        order = torch.randperm(len(self.images),
                               generator=torch.Generator().manual_seed(self.seed + epoch))
        for index in range(start, self.num_train_batches()):
            chosen = order[index * self.batch_size:(index + 1) * self.batch_size]
            yield {"image": self.images[chosen], "targets": {"digit": self.labels[chosen]}}

    def val_batches(self):
        for begin in range(0, len(self.images), self.batch_size):
            chosen = slice(begin, begin + self.batch_size)
            yield {"image": self.images[chosen], "targets": {"digit": self.labels[chosen]}}
'''

MINE_YAML = """\
_target_: {module}.MyData
_partial_: true
size: 16
count: 64
grey: false
"""

RUN = [
    "tasks=[cls]",
    "tasks.cls.target=digit",
    "trainer.epochs=1",
    "trainer.batch_size=16",
    "trainer.device=cpu",
    "trainer.progress=none",
    "trainer.threads=1",
]


def user_folder(folder: Path, module: str) -> Path:
    """`folder/{module}.py` and `folder/my_conf/dataset/mine.yaml`; returns the conf folder."""
    (folder / f"{module}.py").write_text(MY_DATA)
    (folder / "my_conf" / "dataset").mkdir(parents=True)
    (folder / "my_conf" / "dataset" / "mine.yaml").write_text(MINE_YAML.format(module=module))
    return folder / "my_conf"


@pytest.mark.slow
def test_own_class_and_config_folder_train_without_pythonpath(tmp_path: Path) -> None:
    """As a new user runs it: the `mtlrun` command in the folder holding my_data.py."""
    user_folder(tmp_path, "my_data")
    result = run([MTLRUN, "--config-dir", "my_conf", "dataset=mine", *RUN], tmp_path)
    assert result.returncode == 0, result.output[-3000:]
    assert (result.run_folders()[0] / "metrics.json").is_file()


@pytest.fixture
def own_main(
    call_main: Callable[[list[str]], Finished], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[[str, list[str]], Finished]:
    """`own_main(module, arguments)`: `mtlrun` in-process, in a folder holding `module`.py and
    my_conf/; sys.path and the imported module are restored afterwards."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])

    def call(module: str, arguments: list[str]) -> Finished:
        user_folder(tmp_path, module)
        monkeypatch.delitem(sys.modules, module, raising=False)
        return call_main(arguments)

    return call


def test_searchpath_options_pass_the_preflight_check(
    own_main: Callable[[str, list[str]], Finished], tmp_path: Path
) -> None:
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"
    result = own_main("searched_data", [searchpath, "dataset=mine", *RUN])
    assert result.returncode == 0, result.output[-3000:]


def test_unknown_options_list_the_users_own_too(
    own_main: Callable[[str, list[str]], Finished],
) -> None:
    result = own_main("listed_data", ["--config-dir", "my_conf", "dataset=mien", *RUN])
    assert_one_line_error(result, ["unknown dataset 'mien'", "mine", "shapes"])


def test_bad_own_data_is_one_line_before_training(
    own_main: Callable[[str, list[str]], Finished],
) -> None:
    result = own_main(
        "grey_data", ["--config-dir", "my_conf", "dataset=mine", "dataset.grey=true", *RUN]
    )
    assert_one_line_error(result, ["first training batch", "1 channel", "expand(-1, 3, -1, -1)"])
    assert not any((result.cwd / "outputs").rglob("last.pt"))


def test_missing_partial_says_what_to_add(own_main: Callable[[str, list[str]], Finished]) -> None:
    result = own_main(
        "whole_data", ["--config-dir", "my_conf", "dataset=mine", "~dataset._partial_", *RUN]
    )
    assert_one_line_error(result, ["dataset", "_partial_: true"])

"""`dataset._target_=my_module.MyData` on the command line keeps the keys of the dataset
option it replaces (shapes' image_size, max_objects, ...): that is one line naming those keys
and the clean start, and the clean start it names trains."""

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from processes import Finished, assert_one_line_error
from test_own_data import MY_DATA, RUN


@pytest.fixture
def in_user_folder(
    call_main: Callable[[list[str]], Finished], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[[list[str]], Finished]:
    """`mtlrun` in-process in a folder holding replaced_data.py (the README's MyData)."""
    (tmp_path / "replaced_data.py").write_text(MY_DATA)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "replaced_data", raising=False)
    return call_main


def test_a_replaced_target_names_the_inherited_keys_and_the_clean_start(
    in_user_folder: Callable[[list[str]], Finished],
) -> None:
    result = in_user_folder(["dataset._target_=replaced_data.MyData", *RUN])
    assert_one_line_error(
        result,
        [
            "dataset._target_=replaced_data.MyData kept the keys of dataset=shapes",
            "max_objects",
            "'~dataset' +dataset._target_=replaced_data.MyData +dataset._partial_=true",
            "--config-dir my_conf dataset=mine",
        ],
    )


def test_the_clean_start_trains_the_users_class(
    in_user_folder: Callable[[list[str]], Finished],
) -> None:
    clean = [
        "~dataset",
        "+dataset._target_=replaced_data.MyData",
        "+dataset._partial_=true",
        "+dataset.size=12",
    ]
    result = in_user_folder([*clean, *RUN])
    assert result.returncode == 0, result.output[-3000:]
    assert '"val/cls/acc"' in next(result.cwd.rglob("metrics.json")).read_text()


def test_a_built_in_option_with_its_own_keys_is_untouched(
    in_user_folder: Callable[[list[str]], Finished],
) -> None:
    """The check is about a replaced `_target_`: an option's own unknown key keeps the
    schema's message."""
    result = in_user_folder(["+dataset.sise=16", *RUN])
    assert_one_line_error(result, ["dataset.sise", "'dataset' accepts"])

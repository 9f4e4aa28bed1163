"""`first_line`: the one way an error is quoted inside another message."""

import pytest

from mtlrun.errors import UserError, first_line


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError("bad value"), "bad value"),
        (RuntimeError("  first line  \n  second line\nthird"), "first line"),
        (
            RuntimeError("\n\n   \nthe message after blank lines\nmore"),
            "the message after blank lines",
        ),
        (UserError("one line only"), "one line only"),
    ],
)
def test_the_first_non_empty_line_stripped(error: BaseException, expected: str) -> None:
    assert first_line(error) == expected


@pytest.mark.parametrize("error", [KeyError(), RuntimeError(""), OSError("  \n \t\n")])
def test_an_empty_message_becomes_the_class_name(error: BaseException) -> None:
    assert first_line(error) == type(error).__name__


def test_long_lines_are_cut_to_the_limit() -> None:
    error = RuntimeError("x" * 500 + "\nrest")
    assert first_line(error) == "x" * 200
    assert first_line(error, limit=10) == "x" * 10
    assert first_line(RuntimeError(""), limit=5) == "Runti"


def test_an_exception_whose_str_is_its_arguments() -> None:
    # KeyError quotes its argument; the quote is kept as the message.
    assert first_line(KeyError("tasks")) == "'tasks'"

"""The shape of the code: short functions, and a `build()` that reads as the list of what it
builds. Checked on the source text with `ast`, so nothing is imported or run."""

import ast
from pathlib import Path

import mtlrun

PACKAGE = Path(mtlrun.__file__).parent
MAX_FUNCTION_LINES = 50  # from `def` to the last line, docstring included
MAX_BUILD_LINES = 40  # mtlrun.build.build, from `def` to the last line, docstring excluded

PENDING: set[str] = set()  # functions known to be too long, with a plan to shorten them

Function = ast.FunctionDef | ast.AsyncFunctionDef


def functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, Function]]:
    """Every function and method in `tree` with its qualified name (Class.method, and
    outer.inner for nested functions)."""
    found: list[tuple[str, Function]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append((prefix + node.name, node))
            found.extend(functions(node, f"{prefix}{node.name}."))
        elif isinstance(node, ast.ClassDef):
            found.extend(functions(node, f"{prefix}{node.name}."))
        else:
            found.extend(functions(node, prefix))
    return found


def length(function: Function) -> int:
    """Lines from the `def` line (decorators not counted) to the function's last line."""
    assert function.end_lineno is not None
    return function.end_lineno - function.lineno + 1


def docstring_lines(function: Function) -> int:
    if ast.get_docstring(function) is None:
        return 0
    docstring = function.body[0]
    assert docstring.end_lineno is not None
    return docstring.end_lineno - docstring.lineno + 1


def source_functions() -> dict[str, Function]:
    """{"path/in/package.py::Qualified.name": node} over every module of mtlrun."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(PACKAGE).as_posix()
        found.update({f"{where}::{name}": node for name, node in functions(tree)})
    return found


def test_the_walk_finds_methods_and_nested_functions() -> None:
    tree = ast.parse("class A:\n    def f(self):\n        def g():\n            pass\n")
    assert [name for name, _ in functions(tree)] == ["A.f", "A.f.g"]


def test_no_function_is_longer_than_fifty_lines() -> None:
    found = source_functions()
    assert len(found) > 100, "the walk over src/mtlrun found too few functions"
    offenders = {
        name: length(node)
        for name, node in found.items()
        if length(node) > MAX_FUNCTION_LINES and name not in PENDING
    }
    assert not offenders, (
        f"functions over {MAX_FUNCTION_LINES} lines (def to last line); extract helpers: "
        + ", ".join(f"{name} ({lines})" for name, lines in sorted(offenders.items()))
    )


def test_pending_exceptions_are_still_needed() -> None:
    found = source_functions()
    settled = sorted(
        name for name in PENDING if name not in found or length(found[name]) <= MAX_FUNCTION_LINES
    )
    assert not settled, f"remove from PENDING, now short or gone: {', '.join(settled)}"


def test_build_reads_as_the_list_of_what_it_builds() -> None:
    build = source_functions()["build.py::build"]
    lines = length(build) - docstring_lines(build)
    assert lines <= MAX_BUILD_LINES, (
        f"mtlrun.build.build is {lines} lines without its docstring (at most "
        f"{MAX_BUILD_LINES}); move a step into a helper named for what it builds"
    )

"""What a user's own code and config folders need before Hydra starts.

- The current directory is importable, as with `python -m`, so a `_target_` such as
  `my_module.MyData` finds `./my_module.py` without PYTHONPATH.
- The pre-flight check (`mtlrun.cli.check_arguments`) looks for options in the same folders
  Hydra will: the package's `conf/`, then `--config-dir` / `-cd`, then `hydra.searchpath`
  entries (`file://`, `pkg://` or plain paths) given on the command line.
"""

import importlib.resources
import os
import sys
from pathlib import Path


def make_current_directory_importable() -> None:
    """Put the working directory first on `sys.path`, where `python -m` puts it."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)


def config_dir_argument(arguments: list[str]) -> str | None:
    """The value of `--config-dir X`, `--config-dir=X` or `-cd X`, if given."""
    for position, argument in enumerate(arguments):
        if argument in ("--config-dir", "-cd") and position + 1 < len(arguments):
            return arguments[position + 1]
        if argument.startswith("--config-dir="):
            return argument.split("=", 1)[1]
    return None


def searchpath_entries(arguments: list[str]) -> list[str]:
    """The entries of a `hydra.searchpath=[...]` override, if given."""
    for argument in arguments:
        key, _, value = argument.lstrip("+").partition("=")
        if key == "hydra.searchpath":
            return [
                item.strip().strip("'\"") for item in value.strip("[]").split(",") if item.strip()
            ]
    return []


def entry_folder(entry: str) -> Path | None:
    """The folder a search-path entry names (`file://`, `pkg://` or a plain path)."""
    if entry.startswith("pkg://"):
        package, _, inner = entry[len("pkg://") :].partition("/")
        try:
            return Path(str(importlib.resources.files(package.replace("/", ".")))) / inner
        except (ModuleNotFoundError, TypeError):
            return None
    return Path(entry.removeprefix("file://")).expanduser()


def user_folders(arguments: list[str]) -> list[Path]:
    """The config folders a user adds: `--config-dir`, then `hydra.searchpath` entries."""
    given = config_dir_argument(arguments)
    folders = [Path(given).expanduser()] if given else []
    folders += [
        folder for entry in searchpath_entries(arguments) if (folder := entry_folder(entry))
    ]
    return folders


def searchpath_override(arguments: list[str]) -> list[str]:
    """The override that gives a compose call the folders `user_folders` found, or []."""
    folders = user_folders(arguments)
    if not folders:
        return []
    return [f"hydra.searchpath=[{','.join(f'file://{folder.resolve()}' for folder in folders)}]"]

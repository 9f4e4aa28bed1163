"""One `mtlrun` job around the training itself: the run folder's lock, what a refused run
leaves behind (nothing), the config of a resumed run, and what the config changes.

A run folder is locked (`fcntl.flock` on `.mtlrun.lock`) while a process trains in it, so
that two processes never train into one folder; the kernel drops the lock of a process
that dies, so a lock left by a killed process is taken over by the next run.
"""

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mtlrun.errors import UserError

LOCK_NAME = ".mtlrun.lock"
HYDRA_FILES = {"config.yaml", "hydra.yaml", "overrides.yaml"}
# What must stay as it was for a checkpoint to fit a resumed run.
FIXED = ("backbone", "model")
# Groups whose options set keys all over the config: no single node to put on a saved one.
GLOBAL_GROUPS = ("experiment", "hparams_search")


class RunFolderLock:
    """An exclusive lock on a run folder, held from `acquire` to `release`.

    `previous` is the pid a killed process left in the lock file (None after a clean end).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.descriptor: int | None = None
        self.previous: int | None = None

    def acquire(self) -> "RunFolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_pid(descriptor)
            os.close(descriptor)
            who = f"pid {holder}" if holder else "another process"
            raise UserError(
                f"another mtlrun process ({who}) is training in {self.folder}; wait for it to "
                "end or stop it, or run into another folder"
            ) from None
        self.previous = read_pid(descriptor)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self.descriptor = descriptor
        return self

    def release(self) -> None:
        """Unlock; the file stays (removing it would let two later processes lock two files)."""
        if self.descriptor is None:
            return
        with contextlib.suppress(OSError):  # the folder was removed (a refused run)
            os.ftruncate(self.descriptor, 0)
        fcntl.flock(self.descriptor, fcntl.LOCK_UN)
        os.close(self.descriptor)
        self.descriptor = None


def read_pid(descriptor: int) -> int | None:
    try:
        text = os.pread(descriptor, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def is_fresh(folder: Path, log_name: str) -> bool:
    """Whether `folder` holds only what Hydra writes before a job starts (its `.hydra/`
    files, an empty log) and the lock: nothing of a run a refusal could destroy."""
    if not folder.is_dir():
        return False
    names = {path.name for path in folder.iterdir()}
    if not names <= {".hydra", log_name, LOCK_NAME}:
        return False
    log = folder / log_name
    if log.exists() and log.stat().st_size > 0:
        return False
    hydra = folder / ".hydra"
    return not hydra.exists() or {path.name for path in hydra.iterdir()} <= HYDRA_FILES


def discard(folder: Path) -> None:
    """Remove a fresh run folder of a refused run."""
    shutil.rmtree(folder, ignore_errors=True)


# --- resume=<run folder>: that run's config, with this command's overrides on top ----------


def saved_config_path(resume: str) -> Path | None:
    """The `.hydra/config.yaml` of the run `resume` names (a run folder, or a checkpoint in
    its `checkpoints/`), if it has one."""
    path = Path(resume).expanduser()
    folder = path if path.is_dir() else path.parent.parent
    saved = folder / ".hydra" / "config.yaml"
    return saved if saved.is_file() else None


def resumed_config(
    cfg: DictConfig, overrides: list[str], saved_choices: dict[str, Any] | None = None
) -> tuple[DictConfig, list[str]]:
    """With `resume=<run folder>`: that run's saved config with the keys this command's
    `overrides` set put on top (their values as composed in `cfg`), and one line listing
    them. A change a checkpoint cannot follow (other tasks, backbone or model) is an error
    naming the keys. Without `resume`, or for a bare .pt file, `cfg` as it is."""
    resume = cfg.get("resume")
    saved_path = saved_config_path(resume) if isinstance(resume, str) else None
    if saved_path is None:
        return cfg, []
    saved = OmegaConf.load(saved_path)
    assert isinstance(saved, DictConfig)
    merged = saved.copy()
    for key, deleted in override_keys(overrides, saved_choices or {}):
        if deleted:
            OmegaConf.update(merged, key, None, force_add=True)
        else:
            value = OmegaConf.select(cfg, key, throw_on_missing=False)
            OmegaConf.update(merged, key, value, merge=False, force_add=True)
    merged.resume = resume
    changes = differences(saved, merged, skip=("resume",))
    check_compatible(saved_path.parent.parent, saved, merged, changes)
    folder = saved_path.parent.parent
    if not changes:
        return merged, [f"resuming {folder} with its saved config"]
    listed = ", ".join(f"{key} {before} → {after}" for key, before, after in changes)
    return merged, [f"resuming {folder} with {listed}"]


def override_keys(overrides: list[str], saved_choices: dict[str, Any]) -> list[tuple[str, bool]]:
    """The config keys the command-line overrides set, and whether each deletes its key;
    `resume` and Hydra's own keys left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys: list[tuple[str, bool]] = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key == "resume" or key.startswith("hydra") or override.package:
            continue
        if key in GLOBAL_GROUPS:
            if str(override.value()) == str(saved_choices.get(key, override.value())):
                continue  # the resumed run's own choice: nothing changes
            raise UserError(
                f"resume continues the saved config of its run; {key}={override.value()} sets "
                "keys all over it: give the keys to change instead (e.g. trainer.epochs=3)"
            )
        keys.append((key, override.is_delete()))
    return keys


def check_compatible(
    folder: Path, saved: DictConfig, merged: DictConfig, changes: list[tuple[str, str, str]]
) -> None:
    """One line naming what a checkpoint cannot follow: other tasks, backbone or model."""
    before, after = list(saved.get("tasks") or {}), list(merged.get("tasks") or {})
    named = [f"tasks {before} → {after}"] if before != after else []
    for group in FIXED:
        inside = [(key, old, new) for key, old, new in changes if key.split(".")[0] == group]
        if len(inside) > 3:  # another option of the group: many keys, named in short
            keys = ", ".join(key.removeprefix(f"{group}.") for key, _, _ in inside[:3])
            named.append(f"{group}: {len(inside)} keys ({keys}, …)")
        else:
            named += [f"{key} {old} → {new}" for key, old, new in inside]
    if named:
        raise UserError(
            f"cannot resume {folder} with {'; '.join(named)}: its checkpoint would not fit; "
            "resume with the run's own tasks, backbone and model, or start a new run"
        )


# --- what a config changes --------------------------------------------------------------------


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values of a config (unresolved interpolations kept as text), keyed by dotted path."""
    if OmegaConf.is_dict(node):
        items = {}
        for key in node:
            value = node._get_node(key)
            items.update(flat(value, f"{prefix}{key}."))
        return items or {prefix[:-1]: {}}
    if OmegaConf.is_list(node):
        return {prefix[:-1]: OmegaConf.to_container(node, resolve=False)}
    return {prefix[:-1]: node._value() if hasattr(node, "_value") else node}


def differences(
    before: DictConfig, after: DictConfig, skip: tuple[str, ...] = ()
) -> list[tuple[str, str, str]]:
    """(key, old, new) for every leaf that differs, in `after`'s order (removed keys last)."""
    old, new = flat(before), flat(after)
    changed = []
    for key in [*new, *(k for k in old if k not in new)]:
        if key.split(".")[0] in skip or old.get(key, "<unset>") == new.get(key, "<unset>"):
            continue
        changed.append((key, shown(old.get(key, "<unset>")), shown(new.get(key, "<unset>"))))
    return changed


def shown(value: Any, limit: int = 60) -> str:
    text = str(value) if not isinstance(value, str) or value else "''"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def config_changes(
    cfg: DictConfig,
    defaults: DictConfig,
    choices: dict[str, Any],
    default_choices: dict[str, Any],
    overrides: list[str],
) -> list[str]:
    """What `cfg` changes from the default config: each config group whose option differs
    (`group: old → new`), then each key that differs outside those groups' nodes, and
    inside them only the keys the overrides name."""
    lines, replaced = [], set()
    for group, option in choices.items():
        if group.startswith("hydra") or str(option) == str(default_choices.get(group)):
            continue
        lines.append(f"{group}: {shown(default_choices.get(group))} → {shown(option)}")
        replaced.add(group)
    tasks, default_tasks = list(cfg.get("tasks") or {}), list(defaults.get("tasks") or {})
    if tasks != default_tasks:  # a list of options: not among Hydra's choices
        lines.append(f"tasks: [{', '.join(default_tasks)}] → [{', '.join(tasks)}]")
        replaced.update(f"tasks.{name}" for name in set(tasks) ^ set(default_tasks))
    named = {override.split("=")[0].lstrip("+~") for override in overrides}
    for key, before, after in differences(defaults, cfg):
        parts = key.split(".")
        if (parts[0] in replaced or ".".join(parts[:2]) in replaced) and key not in named:
            continue
        lines.append(f"{key}: {before} → {after}")
    return lines

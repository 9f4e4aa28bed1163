"""The `mtlrun` command: compose the config, print it, build the run, train, report.

Expected user errors end as one line on stderr and a non-zero exit; set HYDRA_FULL_ERROR=1
for the traceback.
"""

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mtlrun import __version__
from mtlrun.errors import UserError, first_line
from mtlrun.preemption import Preempted
from mtlrun.search_path import make_current_directory_importable, searchpath_override, user_folders

if TYPE_CHECKING:  # imported when needed: Hydra's parser and rich are slow to load
    from hydra.core.override_parser.types import Override

    from mtlrun.console import Console

# Run folders carry the process id, so runs started in the same second stay apart.
# Cached like Hydra's `now`: a sweep's jobs (in other processes under the joblib or submitit
# launchers, or after a requeue) get the cache with the config and so the same sweep folder.
OmegaConf.register_new_resolver("mtlrun_pid", os.getpid, replace=True, use_cache=True)


def run_name(tasks: Any, weighting: Any, resume: Any = None) -> str:
    """`<tasks>_<weighting>` for run folder names, e.g. `cls-seg-gen_sum`; a resumed run is
    named after the run it continues (`..._resumed`)."""
    from mtlrun.job import saved_config_path

    suffix = ""
    saved = saved_config_path(resume) if isinstance(resume, str) else None
    if saved is not None:
        try:
            tasks = OmegaConf.select(OmegaConf.load(saved), "tasks")
            hydra_yaml = OmegaConf.load(saved.parent / "hydra.yaml")
            weighting = OmegaConf.select(hydra_yaml, "hydra.runtime.choices.weighting")
            suffix = "_resumed"
        except (OSError, OmegaConfBaseException):
            pass
    names = list(tasks) if OmegaConf.is_dict(tasks) or isinstance(tasks, dict) else []
    safe = ["".join(c if c.isalnum() or c in "-." else "-" for c in str(n)) for n in names]
    return f"{'-'.join(safe) or 'notasks'}_{weighting or 'noweighting'}{suffix}"


OmegaConf.register_new_resolver("mtlrun_run_name", run_name, replace=True)

GROUPS = (
    "backbone",
    "model",
    "tasks",
    "weighting",
    "dataset",
    "optimizer",
    "scheduler",
    "trainer",
    "experiment",
    "hparams_search",
)


def config_dir() -> Path:
    """conf/ inside the installed package (wheel), else the repository's top-level conf/."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "conf"


def fail(message: str, console: "Console | None" = None) -> None:
    """The one error line on stderr (and in the run's log, if there is one); exit code 2."""
    rank = f"rank {os.environ['RANK']}: " if "WORLD_SIZE" in os.environ else ""
    line = f"mtlrun: error: {rank}{message}"
    print(line, file=sys.stderr, flush=True)
    if console is not None:
        console.error(line)
    raise SystemExit(2)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def train(cfg: DictConfig) -> float | None:
    """Hydra task function: returns the monitored metric, for sweepers to optimise.

    Rank 0 locks the run folder first; a run refused before training (bad input found while
    building) removes the folder Hydra made for it, so that it leaves nothing behind.
    """
    from torch.distributed import DistError

    from mtlrun.console import Console
    from mtlrun.job import RunFolderLock, is_fresh

    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    main_process = not is_secondary_process()
    log_path = output_dir / f"{hydra_config.job.name}.log"
    lock, console = RunFolderLock(output_dir), None
    try:
        if main_process:
            lock.acquire()
        fresh = main_process and is_fresh(output_dir, log_path.name)
        progress = "none" if not main_process else str(cfg.trainer.get("progress"))
        console = Console(progress, log_path if main_process else None)
        with console.logging_warnings():
            return run_job(cfg, output_dir, console, fresh)
    except Preempted as stop:
        print(f"mtlrun: {stop}", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None  # as if the signal had ended the process
    except (UserError, OmegaConfBaseException) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(str(error) if isinstance(error, UserError) else one_line(error), console)
    except DistError as error:  # a collective failed: another process is gone
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(
            f"lost contact with the other training processes ({first_line(error, limit=160)}); the "
            "process that failed first printed why",
            console,
        )
    finally:
        lock.release()
        if console is not None:
            console.close_log()
    return None


def run_job(cfg: DictConfig, output_dir: Path, console: "Console", fresh: bool) -> float | None:
    """Settle the config (a resumed run's own), build and check everything, then print the
    config and train. Nothing is printed before the run is known to be valid."""
    from mtlrun.build import build
    from mtlrun.engine import fit
    from mtlrun.job import discard, resumed_config

    hydra_config = HydraConfig.get()
    overrides = list(hydra_config.overrides.task)
    choices = dict(hydra_config.runtime.choices)
    try:
        saved = saved_choices(cfg.get("resume"))
        cfg, notes = resumed_config(cfg, overrides, saved)
        choices = saved if notes and saved else choices  # a resumed run's own groups
        run = build(cfg, output_dir, choices, console)
    except BaseException:
        if fresh:
            discard(output_dir)
        raise
    if notes and (output_dir / ".hydra").is_dir():  # the config this run goes on with
        OmegaConf.save(cfg, output_dir / ".hydra" / "config.yaml")
    show_config(cfg, console, choices, overrides)
    for note in notes:
        console.note(note)
    metrics = fit(run)
    return metrics.get(run.monitor)


def saved_choices(resume: Any) -> dict[str, Any]:
    """The config-group options a resumed run was composed from (its .hydra/hydra.yaml)."""
    from mtlrun.job import saved_config_path

    saved = saved_config_path(resume) if isinstance(resume, str) else None
    try:
        hydra_yaml = OmegaConf.load(saved.parent / "hydra.yaml") if saved else None
        return dict(hydra_yaml.hydra.runtime.choices) if hydra_yaml else {}
    except (OSError, OmegaConfBaseException):
        return {}


def show_config(
    cfg: DictConfig, console: "Console", choices: dict[str, Any], overrides: list[str]
) -> None:
    """`trainer.print_config`: `changes` (what differs from the defaults), `full` or `none`."""
    from mtlrun.job import config_changes

    mode = str(cfg.trainer.get("print_config", "changes"))
    if mode == "full":
        console.print_config(cfg)
    elif mode == "changes":
        defaults = default_config()
        default_choices = dict(defaults.hydra.runtime.choices)
        with open_dict(defaults):
            del defaults["hydra"]
        console.print_changes(config_changes(cfg, defaults, choices, default_choices, overrides))


def default_config() -> DictConfig:
    """The config without overrides, with Hydra's node (its `runtime.choices`). Composed
    with this job's Hydra where there is one, else (a launcher's worker process) afresh."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose("config", return_hydra_config=True)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", return_hydra_config=True)


def is_secondary_process() -> bool:
    """Whether this is a torchrun worker other than global rank 0 (known from the
    environment torchrun sets, before any process group exists)."""
    return "WORLD_SIZE" in os.environ and os.environ.get("RANK", "0") != "0"


def check_arguments(arguments: list[str]) -> None:
    """Answer bad overrides with one line before Hydra starts.

    Hydra reports malformed overrides, unknown options and keys itself, but over several
    lines. This parses the overrides, checks config-group options (listing the choices) and,
    for a single run, composes the config once, turning any failure into one line.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in arguments if ("=" in a or a.startswith("~")) and a[0] != "-"]
    parser = OverridesParser.create()
    parsed: list[Override] = []
    for text in overrides:
        try:
            parsed += parser.parse_overrides([text])
        except Exception as error:  # Hydra's OverrideParseException, over several lines
            fail(
                f"cannot parse the override {text!r} ({one_line(error)}); quote list "
                "overrides in the shell, e.g. 'tasks=[cls,seg]'"
            )
    folders = [config_dir(), *user_folders(arguments)]  # where Hydra will look, in order
    for override in parsed:
        group = override.key_or_group
        if group not in GROUPS or override.package or not (folders[0] / group).is_dir():
            continue
        if override.is_delete() or override.value() is None:
            continue
        available = sorted({p.stem for folder in folders for p in (folder / group).glob("*.yaml")})
        for option in _options(override):
            if option not in available:
                fail(f"unknown {group} '{option}'; choose from: {', '.join(available)}")
    if "-m" not in arguments and "--multirun" not in arguments:
        own = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
        compose_once([*own, *searchpath_override(arguments)])


def compose_once(overrides: list[str]) -> None:
    """Compose the config as Hydra will; a failure (an unknown key, a bad interpolation,
    a value of the wrong kind) ends as one line."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            composed = compose("config", overrides=overrides)
        OmegaConf.to_container(composed, resolve=True)  # interpolations that lead nowhere
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(one_line(error))


def one_line(error: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages, without their detail lines and hints,
    led by the config key they are about (`first_line` when nothing else is left)."""
    lines = [line.strip() for line in str(error).splitlines() if line and not line[0].isspace()]
    kept = [line for line in lines if not line.startswith(("Set the environment", "See http"))]
    message = " ".join(kept) or first_line(error)
    key = getattr(error, "full_key", None)
    return f"{key}: {message}" if key and not message.startswith(str(key)) else message


def _options(override: "Override") -> list[str]:
    """The option names an override selects, across sweeps and lists."""
    values: list[Any] = (
        list(override.sweep_string_iterator())
        if override.is_sweep_override()
        else [override.value()]
    )
    names: list[str] = []
    for value in values:
        if isinstance(value, str) and value.startswith("["):
            value = [item.strip() for item in value.strip("[]").split(",") if item.strip()]
        names.extend(str(item) for item in (value if isinstance(value, list) else [value]))
    return names


def main() -> None:
    """`mtlrun`: `--version`, or Hydra's command line. Output cut short by a closed pipe
    (`mtlrun --help | head -3`) ends quietly."""
    if "--version" in sys.argv[1:]:
        print(f"mtlrun {__version__}")
        return
    try:
        start_hydra()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None  # 128 + SIGPIPE, as a shell reports a piped command


def start_hydra() -> None:
    make_current_directory_importable()  # `_target_: my_module.MyData`, as with python -m
    check_arguments(sys.argv[1:])
    if not is_secondary_process():
        train()
        return
    # Under torchrun only rank 0 writes the run folder (build shares its path with the
    # others); the other ranks let Hydra write into a scratch folder, without log files.
    with tempfile.TemporaryDirectory(prefix="mtlrun-rank-") as scratch:
        sys.argv += [
            f"hydra.run.dir={scratch}",
            "hydra.output_subdir=null",
            "hydra/job_logging=disabled",
            "hydra/hydra_logging=disabled",
        ]
        train()


if __name__ == "__main__":
    main()

"""The machine a run measured, and the results as JSON and as a Markdown report."""

import json
import os
import platform
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from speed.common import Section

BUSY = " **The machine was busy: treat these figures as rough and rerun when it is quiet.**"
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_model() -> tuple[str, set[str]]:
    """The CPU's model name and flags, from /proc/cpuinfo where there is one."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    name = model.group(1).strip() if model else platform.processor() or platform.machine()
    return name, set(flags.group(1).split()) if flags else set()


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model and cores, GPU (if the device is one), torch version and the load."""
    model, flags = cpu_model()
    info: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": [flag for flag in CPU_FLAGS if flag in flags],
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": device.type,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
    }
    return info


def slug(info: dict[str, Any]) -> str:
    """A short file-name slug: the GPU's name, else the CPU model and the core count."""
    if info["gpu"]:
        name = info["gpu"]
    else:
        name = re.sub(r"\((R|TM|tm|r)\)|\bCPU\b|\bProcessor\b|@.*$", " ", info["cpu"])
        name = f"{name} {info['cores']}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(columns), line(["---"] * len(columns)), *map(line, rows)])


def markdown(info: dict[str, Any], run: dict[str, Any], sections: list[Section]) -> str:
    """The whole report: machine, how it was run, then one table per section."""
    gpu = f", GPU {info['gpu']}" if info["gpu"] else ", no GPU used"
    parts = [
        f"# mtlrun speed benchmarks — {run['date']}{' (quick)' if run['quick'] else ''}",
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads)"
        f"{gpu}; CPU flags: {', '.join(info['cpu_flags']) or 'none of note'}; "
        f"torch {info['torch']}, Python {info['python']}; device {info['device']}.",
        f"Load average (1, 5, 15 min) at start {fmt_load(info['load_average_at_start'])}, "
        f"at end {fmt_load(info['load_average_at_end'])}; total {run['wall_s']:.0f} s. "
        "Ratios are measured side by side in one process; absolute times drift with load."
        + (BUSY if busy(info) else ""),
    ]
    for section in sections:
        parts.append(f"## {section.title}")
        if section.columns:
            parts.append(markdown_table(section.columns, section.rows))
        if section.body:
            parts.append(section.body.strip())
        if section.notes:
            parts.append("\n".join(f"- {note}" for note in section.notes))
    return "\n\n".join(parts) + "\n"


def busy(info: dict[str, Any]) -> bool:
    """Whether other work ran: a 1-minute load above the core count at start or end (the
    benchmark itself keeps about as many threads busy as there are cores)."""
    loads = [info["load_average_at_start"][0], info["load_average_at_end"][0]]
    return max(loads) > (info["cores"] or 1) + 0.5


def fmt_load(load: list[float]) -> str:
    return ", ".join(f"{value:.1f}" for value in load)


def write(
    out_dir: Path, stem: str, info: dict[str, Any], run: dict[str, Any], sections: list[Section]
) -> tuple[Path, Path, str]:
    """Write `<stem>.json` and `<stem>.md` into `out_dir`; return both paths and the text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(info, run, sections)
    content = {"machine": info, "run": run, "sections": [asdict(s) for s in sections]}
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(content, indent=2) + "\n")
    md_path.write_text(text)
    return json_path, md_path, text

"""Where a benchmark's JSON goes and what it records about the machine it ran on."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Any

from pipeline import atomic
from pipeline.hardware import cpu_name


def machine_description() -> str:
    """Host, CPU model, core count and GPU (or "no GPU"), so a figure names its machine."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}, {cpu_name()}, {os.cpu_count()} cores, {gpu}"


def write_benchmark_report(
    path: Path, benchmark: str, args: argparse.Namespace, **fields: Any
) -> dict[str, Any]:
    """`path` <- JSON of the benchmark's results, with its arguments and the machine and torch
    version it ran on; returns that report (what each benchmark's `markdown` renders)."""
    import torch

    report = {"benchmark": benchmark, "machine": machine_description()}
    report |= {"torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()}}
    report |= fields
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, report)
    print(f"\nwrote {path}")
    return report

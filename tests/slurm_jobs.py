"""Driving the throwaway Slurm from the tests: accounting, the Slurm profile, training jobs of
the digits demo, and the processes of one node."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from conftest import PROJECT, demo_config, run_snakemake
from pipeline.config_files import deep_merge, load_config
from pipeline.paths import RunPaths

PROFILE = PROJECT / "profiles" / "slurm"
NODES = ("slurm-node1", "slurm-node2")


def sacct(*job_ids: str) -> list[dict[str, str]]:
    out = subprocess.run(
        [
            "sacct",
            "-X",
            "-n",
            "-P",
            "-o",
            "JobID,JobName,State,Comment",
            *([f"--jobs={','.join(job_ids)}"] if job_ids else []),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        dict(zip(("id", "name", "state", "comment"), line.split("|"), strict=True))
        for line in out.splitlines()
        if line
    ]


def squeue_ids() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    return out.split()


def snakemake(workdir: Path, *args: str, check: bool = True, **popen: Any):
    """The Slurm profile, with test-only overrides: check job states every 2 s (the plugin
    waits 40 s, then 10 s between checks, by default)."""
    return run_snakemake(
        workdir,
        "--workflow-profile",
        str(PROFILE),
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--seconds-between-status-checks",
        "2",
        *args,
        check=check,
        **popen,
    )


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def demo_on_slurm(folder: Path, shards: Path | None, **changes: Any) -> Path:
    """The demo on Slurm over both nodes, 2 tasks each, 4 epochs long: the tests act on a
    running job (signal, requeue, kill a node's ranks or Snakemake), and it must still be
    running when they are done, however slowly Slurm delivers a signal on a loaded machine.
    Momentum SGD and an fp32 all-reduce, so that 4 ranks can be compared with 1 process
    accumulating 4 (the hybrid's first RMSprop steps turn summation-order bits into sign
    flips, and fp16 flushes this model's smallest gradients to 0)."""
    slurm = {
        "launcher": {
            "cluster": "slurm",
            "nodes": 2,
            "tasks_per_node": 2,
            "cpus_per_task": 1,
            "timeout_min": 15,
            "max_num_timeout": 5,
        },
        "optimizer": {"name": "sgd"},
        "schedule": {"base_lr": 0.05},
        "train": {"epochs": 4, "allreduce_dtype": "fp32"},
    }
    return demo_config(folder, shards, **deep_merge(slurm, changes))


def final_weights(config_path: Path) -> dict[str, torch.Tensor]:
    return torch.load(RunPaths.of(load_config(config_path)).final, weights_only=True)["model"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def job_id(config_path: Path) -> str:
    return json.loads(RunPaths.of(load_config(config_path)).job.read_text())["job_id"]


def start_train(config_path: Path, log_dir: Path) -> subprocess.Popen:
    out = open(log_dir / "train.log", "w")  # noqa: SIM115 - closed by the caller's process end
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", "--config", str(config_path)],
        cwd=PROJECT,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def mid_run_checkpoint(config_path: Path) -> bool:
    checkpoints = RunPaths.of(load_config(config_path)).checkpoints
    return any(not p.name.startswith("ckpt-e0000-s0000000") for p in checkpoints.glob("*.pt"))


def task_log(config_path: Path, job: str, task: int) -> str:
    """The stderr of one task of a training job (submitit's <job>_<task>_log.err)."""
    folder = RunPaths.of(load_config(config_path)).submitit
    return (folder / f"{job}_{task}_log.err").read_text(errors="replace")


def training_pids(node: str) -> list[int]:
    """The training processes running in a node's network namespace (not its slurmd)."""
    pids = subprocess.run(
        ["ip", "netns", "pids", f"pipeline-{node}"], capture_output=True, text=True, check=True
    ).stdout.split()
    found = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        if b"submitit" in command and b"python" in command:
            found.append(int(pid))
    return found

"""Who this process is in the training job, where the job meets, and which device it trains on.

Three ways a process is started, each with its own source of truth:

* a submitit job: the ranks come from Slurm (SLURM_PROCID, SLURM_LOCALID, the job's node
  list) or from submitit's local executor; the master is the job's first node;
* torchrun, or anything else that sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT;
* a plain single process: a one-member group on a free local port, so that the same code path
  (DDP, the communication hook) runs everywhere.

The rendezvous port of a Slurm job is derived from its job id and restart count, below Linux's
ephemeral ports: every task computes the same port without talking to the others, a requeued
job does not meet on the port its previous run may still hold, and variables inherited from
the submitting shell (MASTER_PORT, RANK) are ignored: the process group is given its address,
rank and size explicitly, and nothing is exported to the environment.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass

import torch

from pipeline.errors import PipelineError
from pipeline.ports import free_port

# 20000-31999: above the ports of system services, below the kernel's ephemeral range (Linux's
# default starts at 32768), from which outgoing connections take their local port.
PORT_LOW = 20000
PORT_SPAN = 12000
# Set by `train` at submission of a local job, to a port it found free on this host.
LOCAL_PORT_VARIABLE = "PIPELINE_MASTER_PORT"


class LaunchError(PipelineError, RuntimeError):
    """This process cannot take part in the job as configured; the message names the setting."""


def job_port(job_id: str, restart_count: int = 0) -> int:
    """The rendezvous port of a job: the same in every task, another one after a requeue."""
    digest = hashlib.sha256(f"{job_id}/{restart_count}".encode()).digest()
    return PORT_LOW + int.from_bytes(digest[:4], "big") % PORT_SPAN


@dataclass(frozen=True)
class Rendezvous:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # torchrun | slurm | local | single

    @property
    def init_method(self) -> str:
        """Where torch.distributed meets, given explicitly: no variable of the environment
        (an inherited MASTER_PORT, say) takes part."""
        host = f"[{self.master_addr}]" if ":" in self.master_addr else self.master_addr
        return f"tcp://{host}:{self.master_port}"

    def describe(self, device: torch.device, backend: str) -> str:
        """One line for the task's log: who and where this rank is, and where it met the
        others (with the address the master's name resolved to: the network it crosses)."""
        try:
            address = socket.gethostbyname(self.master_addr)
        except OSError:
            address = "unresolved"
        return (
            f"rank {self.rank}/{self.world_size} (local rank {self.local_rank}) on "
            f"{socket.gethostname()}: {device}, {backend}; rendezvous "
            f"{self.master_addr}:{self.master_port} ({address}, {self.source})"
        )


def discover(master_port: int | None = None) -> Rendezvous:
    """This process's place in the job; `master_port` (launcher.master_port) overrides the
    derived port of a submitit job. A submitit task trusts Slurm (or submitit's local
    executor) over RANK / WORLD_SIZE, which it may have inherited from the submitting shell;
    torchrun's variables count where torchrun started the process."""
    env = os.environ
    torchrun = "TORCHELASTIC_RUN_ID" in env
    if env.get("SUBMITIT_EXECUTOR") and not torchrun:
        import submitit

        job = submitit.JobEnvironment()
        on_slurm = job.cluster == "slurm"
        if master_port is not None:
            port = master_port
        elif on_slurm:
            port = job_port(str(job.job_id), int(env.get("SLURM_RESTART_COUNT", "0")))
        else:
            port = int(env[LOCAL_PORT_VARIABLE])
        return Rendezvous(
            job.global_rank,
            job.num_tasks,
            job.local_rank,
            job.hostnames[0],
            port,
            "slurm" if on_slurm else "local",
        )
    if "RANK" in env and "WORLD_SIZE" in env:
        return Rendezvous(
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", "0")),
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env.get("MASTER_PORT", "29500")),
            "torchrun",
        )
    return Rendezvous(0, 1, 0, "127.0.0.1", master_port or free_port(), "single")


def select_device(gpus_per_node: int, local_rank: int) -> torch.device:
    """The CPU, or the GPU of this local rank: `cuda:<local rank>` where the task sees all of the
    node's GPUs, `cuda:0` where the site binds one GPU to each task. Refuses what would
    otherwise hang or mislead: GPUs asked for and none visible (one CPU rank among NCCL ranks
    hangs the job), or a local rank beyond the visible GPUs."""
    if gpus_per_node == 0:
        return torch.device("cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
    host = socket.gethostname()
    if not torch.cuda.is_available():
        raise LaunchError(
            f"launcher.gpus_per_node is {gpus_per_node}, but this process on {host} sees no "
            f"CUDA device (CUDA_VISIBLE_DEVICES={visible}): run the job on GPU nodes, or set "
            "launcher.gpus_per_node: 0 to train on CPUs with gloo"
        )
    count = torch.cuda.device_count()
    if count == 1:
        return torch.device("cuda", 0)
    if local_rank >= count:
        raise LaunchError(
            f"local rank {local_rank} on {host} sees {count} GPUs (CUDA_VISIBLE_DEVICES="
            f"{visible}): launcher.tasks_per_node must not exceed the GPUs of a node, one "
            "process per GPU"
        )
    return torch.device("cuda", local_rank)

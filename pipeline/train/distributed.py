"""Process group, DDP with the paper's fp16 all-reduce, and BatchNorm statistics averaging."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.ports import free_port

ALLREDUCE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(use_gpu: bool, timeout_min: float = 30.0) -> DistEnv:
    """Join (or create) the process group, wherever the process was started from:

    * torchrun, or anything else that sets RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT;
    * a submitit job (Slurm or local executor): submitit knows the tasks and the first host;
    * a plain single process: a one-member group on a free local port, so that the same
      code path (DDP, communication hook) runs everywhere.

    gloo on CPU, nccl on GPU."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        if os.environ.get("SUBMITIT_EXECUTOR") or os.environ.get("SLURM_JOB_ID"):
            import submitit

            # overwrite: a local job's MASTER_PORT was set at submission (launch.py); submitit
            # reads it, and would otherwise refuse to export over it
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True
            )
        else:
            os.environ.update(
                RANK="0",
                WORLD_SIZE="1",
                LOCAL_RANK="0",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(free_port()),
            )
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = use_gpu and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_min),
        )
    return DistEnv(rank, world_size, local_rank, device, backend)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class AllReduceState:
    """State of the communication hook; counts what it sends (for the benchmarks)."""

    process_group: dist.ProcessGroup | None
    dtype: torch.dtype
    bytes_reduced: int = 0
    calls: int = 0
    probe: Any = None  # a NoiseProbe: sees each bucket before it is reduced, when measuring


def allreduce_hook(state, bucket):  # DDP checks the annotations; strings would fail its check
    """Average a gradient bucket (a dist.GradBucket) over all workers in `state.dtype`.

    The bucket is divided by the world size *before* the sum: summing fp16 gradients of 1,024
    workers first and dividing afterwards overflows (ChainerMN's problem in the paper), while
    the pre-divided values stay in range. fp32 gradients are restored afterwards."""
    group = state.process_group or dist.group.WORLD
    world_size = dist.get_world_size(group)
    buffer = bucket.buffer()
    if state.probe is not None and state.probe.measuring:
        state.probe.add_bucket(bucket.parameters(), bucket.gradients())
    if state.dtype == buffer.dtype:
        reduced = buffer.div_(world_size)
    else:
        reduced = buffer.to(state.dtype).div_(world_size)
    state.bytes_reduced += reduced.numel() * reduced.element_size()
    state.calls += 1
    future = dist.all_reduce(reduced, group=group, async_op=True).get_future()

    def restore(fut: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
        result = fut.value()[0]
        if result.data_ptr() != buffer.data_ptr():
            buffer.copy_(result)
        return buffer

    return future.then(restore)


def wrap_ddp(
    model: nn.Module, env: DistEnv, allreduce_dtype: str, state: AllReduceState | None = None
) -> tuple[nn.Module, AllReduceState]:
    """DDP that leaves every rank's BatchNorm buffers alone during training.

    DDP's default re-broadcasts rank 0's buffers at each forward; a forward between the last
    training step and `average_bn_stats` would then silently turn "the average over workers"
    into "rank 0's last batch". `forward_sync_buffers=False` (torch >= 2.13's name for the old
    `broadcast_buffers=False`) turns that off; buffers are still synced once at construction,
    which only makes the starting state identical on every rank.

    With a single process there is nothing to communicate: the model is returned unwrapped,
    without DDP's gradient bucketing and hook calls."""
    if state is None:  # a re-wrap keeps its hook's state (and the noise probe on it)
        state = AllReduceState(process_group=None, dtype=ALLREDUCE_DTYPES[allreduce_dtype])
    if env.world_size == 1:
        return model, state
    ddp = DistributedDataParallel(
        model,
        device_ids=[env.local_rank] if env.device.type == "cuda" else None,
        forward_sync_buffers=False,
        gradient_as_bucket_view=True,
    )
    ddp.register_comm_hook(state, allreduce_hook)
    return ddp, state


def bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    buffers = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            buffers += [module.running_mean, module.running_var]
    return buffers


@torch.no_grad()
def average_bn_stats(model: nn.Module) -> None:
    """Replace every rank's BN running_mean / running_var by their mean over all ranks, in fp32.

    With momentum 1.0 these are each worker's last-minibatch statistics, so validation uses
    the average over the last global minibatch, as the paper does."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    buffers = bn_buffers(model)
    if not buffers:
        return
    flat = torch.cat([b.detach().float().reshape(-1) for b in buffers])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few Python numbers over all ranks (one small collective)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def gather_to_main(obj: object) -> list[object]:
    """Every rank's `obj` on rank 0, in rank order; an empty list on the other ranks.

    A gather, not an all-gather: at 1,024 ranks an all-gather would hand every rank all 1,024
    objects, which only rank 0 uses."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    main = dist.get_rank() == 0
    out: list[object] | None = [None] * dist.get_world_size() if main else None
    dist.gather_object(obj, out, dst=0)
    return out if out is not None else []

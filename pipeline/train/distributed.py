"""Process group, DDP with the paper's fp16 all-reduce, BatchNorm statistics averaging, and the
collectives that bring rank 0's objects (a checkpoint, their shares of it) to the other ranks."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.train.rendezvous import Rendezvous, discover, select_device

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


def init_distributed(
    gpus_per_node: int, master_port: int | None = None, timeout_min: float = 30.0
) -> tuple[DistEnv, Rendezvous]:
    """Join (or create) the process group of this job (`rendezvous.discover` says how): gloo on
    CPU, NCCL on this local rank's GPU. The GPU is made current before any collective: NCCL
    and the object collectives (gather_object, broadcast_object_list) use the current device."""
    place = discover(master_port)
    device = select_device(gpus_per_node, place.local_rank)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method=place.init_method,
            rank=place.rank,
            world_size=place.world_size,
            timeout=datetime.timedelta(minutes=timeout_min),
            device_id=device if cuda else None,  # NCCL: bind the communicator to this GPU now
        )
    return DistEnv(place.rank, place.world_size, place.local_rank, device, backend), place


# How gloo says a peer is gone (it raises plain RuntimeErrors; NCCL raises DistBackendError).
_GLOO_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def peer_lost(err: BaseException) -> bool:
    """Whether `err` is a collective failing because another rank of the job is gone."""
    if isinstance(err, dist.DistError):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in _GLOO_PEER_GONE)


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


def wire_values(buffer: torch.Tensor, world_size: int, dtype: torch.dtype) -> torch.Tensor:
    """What one rank hands to the all-reduce: its fp32 gradients divided by the world size,
    then cast to `dtype`. In place on `buffer` (the reduced result overwrites it anyway)."""
    buffer.div_(world_size)
    return buffer if dtype == buffer.dtype else buffer.to(dtype)


def allreduce_hook(state, bucket):  # DDP checks the annotations; strings would fail its check
    """Average a gradient bucket (a dist.GradBucket) over all workers in `state.dtype`.

    The fp32 bucket is divided by the world size *before* it is cast and summed: a gradient
    element above fp16's largest value (65,504) would be inf after a cast that came first, and
    summing 1,024 fp16 gradients before dividing overflows (ChainerMN's problem in the paper),
    while the pre-divided values stay in range. fp32 gradients are restored afterwards."""
    group = state.process_group or dist.group.WORLD
    world_size = dist.get_world_size(group)
    buffer = bucket.buffer()
    if state.probe is not None and state.probe.measuring:
        state.probe.add_bucket(bucket.parameters(), bucket.gradients())
    reduced = wire_values(buffer, world_size, state.dtype)
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


@dataclass(frozen=True)
class _TensorSlot:
    """Where a tensor of a broadcast object lies: in its dtype's flat buffer, from `offset`."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int


def broadcast_from_main(obj: Any, device: torch.device) -> Any:
    """Rank 0's `obj` (dicts, lists and tuples of tensors and plain values) on every rank, its
    tensors on the CPU, as torch.load(map_location="cpu") gives them.

    The structure travels as one small pickled object, the tensors as one flat buffer per dtype
    on `device`: a NCCL collective takes only the process's GPU tensors, and pickling a
    checkpoint's hundreds of MB would copy them twice more."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    main = dist.get_rank() == 0
    tensors: list[torch.Tensor] = []
    sizes: dict[torch.dtype, int] = {}

    def strip(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            slot = _TensorSlot(value.dtype, tuple(value.shape), sizes.get(value.dtype, 0))
            sizes[value.dtype] = slot.offset + value.numel()
            tensors.append(value)
            return slot
        if isinstance(value, dict):
            return {key: strip(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(strip(item) for item in value)
        return value

    box = [(strip(obj), sizes) if main else None]
    dist.broadcast_object_list(box, src=0, device=device)
    skeleton, sizes = box[0]
    flats: dict[torch.dtype, torch.Tensor] = {}
    for dtype, numel in sorted(sizes.items(), key=lambda item: str(item[0])):
        if main:
            flat = torch.cat([t.reshape(-1) for t in tensors if t.dtype == dtype]).to(device)
        else:
            flat = torch.empty(numel, dtype=dtype, device=device)
        dist.broadcast(flat, src=0)
        flats[dtype] = flat.cpu()
    if main:
        return obj

    def rebuild(value: Any) -> Any:
        if isinstance(value, _TensorSlot):
            numel = math.prod(value.shape)
            part = flats[value.dtype][value.offset : value.offset + numel]
            return part.view(value.shape).clone()  # its own storage, as a loaded tensor has
        if isinstance(value, dict):
            return {key: rebuild(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(rebuild(item) for item in value)
        return value

    return rebuild(skeleton)


def scatter_from_main(parts: list[Any] | None) -> Any:
    """`parts[r]` of rank 0 on rank r: each rank receives its own part, not all of them."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return parts[0] if parts else None
    mine: list[Any] = [None]
    dist.scatter_object_list(mine, parts if dist.get_rank() == 0 else None, src=0)
    return mine[0]

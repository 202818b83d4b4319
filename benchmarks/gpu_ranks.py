"""The training step in several processes, one per GPU, through the trainer's own rank set-up:
`init_distributed` (device per local rank, NCCL), DDP with the fp16 hook, and once each the
collectives training uses besides the all-reduce (BN averaging, the loss sums, the gathers, and
the checkpoint's broadcast and scatter), whose results are checked. On a CPU it runs the same
lines with gloo. Used by benchmarks/gpu.py; a row per process count.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from pipeline.config import ModelConfig
from pipeline.data.transforms import Normalizer
from pipeline.ports import free_port
from pipeline.train.distributed import (
    all_reduce_sum,
    average_bn_stats,
    broadcast_from_main,
    gather_to_main,
    init_distributed,
    scatter_from_main,
    shutdown_distributed,
    wrap_ddp,
)
from pipeline.train.model import build_model, param_groups, to_device
from pipeline.train.optim import HybridRMSpropSGD
from pipeline.train.step import TrainStep


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_collectives(model: torch.nn.Module, env) -> None:
    """Every collective of training besides DDP's, on this backend, with its result checked."""
    world, rank = env.world_size, env.rank
    assert all_reduce_sum([1.0, float(rank)], env.device) == [world, world * (world - 1) / 2]
    average_bn_stats(model)
    gathered = gather_to_main(rank)
    assert gathered == (list(range(world)) if rank == 0 else [])
    state = {"w": torch.arange(6.0).view(2, 3), "n": torch.tensor([7], dtype=torch.int64)}
    got = broadcast_from_main(state if rank == 0 else None, env.device)
    assert torch.equal(got["w"], state["w"]) and torch.equal(got["n"], state["n"])
    assert scatter_from_main([{"r": r} for r in range(world)] if rank == 0 else None) == {"r": rank}


def _rank(
    rank: int, world: int, port: int, gpus: int, arch: str, batch: int, steps: int, out: Path
) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    env, _ = init_distributed(gpus_per_node=gpus)
    torch.manual_seed(0)
    cuda = env.device.type == "cuda"
    model = to_device(build_model(ModelConfig(arch=arch), 1000), env.device, cuda)
    ddp, _ = wrap_ddp(model, env, "fp16")
    optimizer = HybridRMSpropSGD(param_groups(model, 1e-4), lr=0.1, alpha_sgd=0.5)
    step = TrainStep(model, ddp, optimizer, Normalizer(env.device, cuda), env.device, bf16=cuda)
    x = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8, device=env.device)
    y = torch.randint(0, 1000, (batch,), device=env.device)
    sums = torch.zeros(3, dtype=torch.float64, device=env.device)
    times = []
    for i in range(steps + 2):  # two to warm up
        sync(env.device)
        start = time.perf_counter()
        step(lambda: (x, y), 0.1, 0.5, False, sums)
        sync(env.device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    _check_collectives(model, env)
    rates = gather_to_main(batch / statistics.median(times))
    if env.is_main:
        (out / "ranks.json").write_text(json.dumps({"backend": env.backend, "rates": rates}))
    shutdown_distributed()


def ranks_step(processes: int, gpus: int, arch: str, batch: int, steps: int, out: Path) -> dict:
    """Images per second per process for `processes` processes (each on its own GPU when
    `gpus` > 0), and the backend they used."""
    mp.start_processes(
        _rank,
        args=(processes, free_port(), gpus, arch, batch, steps, out),
        nprocs=processes,
        start_method="spawn",
    )
    return json.loads((out / "ranks.json").read_text())

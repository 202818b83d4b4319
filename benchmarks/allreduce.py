"""Gradient all-reduce: bytes moved per step and step time with fp32, fp16 and bf16 hooks.

Two gloo processes train the same model with `pipeline.train.distributed.wrap_ddp`; the hook
counts the bytes it hands to the all-reduce. fp16 and bf16 must move exactly half of fp32.
Runs alternate between the dtypes; the table gives the median step time.

    python benchmarks/allreduce.py [--arch resnet18] [--size 64] [--batch 16] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.report import write_benchmark_report  # noqa: E402
from pipeline.config import ModelConfig  # noqa: E402
from pipeline.ports import free_port  # noqa: E402
from pipeline.train.distributed import DistEnv, wrap_ddp  # noqa: E402
from pipeline.train.model import build_model  # noqa: E402

DTYPES = ("fp32", "fp16", "bf16")


def worker(rank: int, world: int, args, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    env = DistEnv(rank, world, rank, torch.device("cpu"), "gloo")
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    y = torch.randint(0, 1000, (args.batch,), generator=generator)
    setups = {}
    for dtype in DTYPES:
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch=args.arch), 1000)
        ddp, state = wrap_ddp(model, env, dtype)
        setups[dtype] = (model, ddp, state, torch.optim.SGD(model.parameters(), lr=0.01))
    times: dict[str, list[float]] = {d: [] for d in DTYPES}
    for _ in range(args.repeats):
        for dtype, (_, ddp, state, opt) in setups.items():
            state.bytes_reduced = 0
            dist.barrier()
            start = time.perf_counter()
            for _ in range(args.steps):
                F.cross_entropy(ddp(x), y).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            dist.barrier()
            times[dtype].append((time.perf_counter() - start) / args.steps * 1000)
    if rank == 0:
        n_params = sum(p.numel() for p in setups["fp32"][0].parameters())
        result = {
            dtype: {
                "step_ms": statistics.median(times[dtype]),
                "spread_ms": [min(times[dtype]), max(times[dtype])],
                "bytes_per_step": setups[dtype][2].bytes_reduced // args.steps,
            }
            for dtype in DTYPES
        }
        result["parameters"] = n_params
        (out / "allreduce_raw.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=PROJECT / "results" / "bench")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(
        worker, args=(2, args, free_port(), args.out), nprocs=2, start_method="spawn"
    )
    result = json.loads((args.out / "allreduce_raw.json").read_text())
    fp32 = result["fp32"]["bytes_per_step"]
    half = result["fp16"]["bytes_per_step"] * 2 == fp32 == 4 * result["parameters"]
    report = write_benchmark_report(
        args.out / "allreduce.json",
        "allreduce",
        args,
        results=result,
        fp16_is_half_of_fp32=half,
    )
    print(
        f"\nGradient all-reduce, {args.arch} ({result['parameters'] / 1e6:.2f} M parameters), "
        f"2 gloo processes, batch {args.batch} each, median of {args.repeats} x "
        f"{args.steps} steps"
    )
    print(markdown(report))
    print(f"fp16 moves exactly half the bytes of fp32 (fp32: 4 bytes x every parameter): {half}")


def markdown(report: dict) -> str:
    """The table of docs/performance.md, from the report's JSON."""
    result = report["results"]
    fp32 = result["fp32"]
    lines = [
        "| all-reduce dtype | bytes per step per process | vs fp32 | step ms | vs fp32 |",
        "|---|---|---|---|---|",
    ]
    for dtype in DTYPES:
        r = result[dtype]
        share = r["bytes_per_step"] / fp32["bytes_per_step"]
        lines.append(
            f"| {dtype} | {r['bytes_per_step']:,} | {share:.3f} | {r['step_ms']:.1f} "
            f"| {r['step_ms'] / fp32['step_ms']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

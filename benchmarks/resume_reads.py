"""Bytes each rank reads from the checkpoint folder to resume: every rank loading the file
itself, against `checkpoint.load_for_resume` (rank 0 reads, broadcasts and scatters).

8 gloo processes resume from one ResNet-50 checkpoint with the hybrid optimizer's state and 8
ranks' RNG states, as training writes it. Each rank counts the bytes its read calls returned
(`rchar` in /proc/self/io: what a shared filesystem serves, page cache or not) and the time, for
both ways, alternating, in one run.

    python benchmarks/resume_reads.py [--processes 8] [--arch resnet50] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
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
from pipeline.train import checkpoint  # noqa: E402
from pipeline.train.distributed import DistEnv, gather_to_main  # noqa: E402
from pipeline.train.model import build_model, param_groups  # noqa: E402
from pipeline.train.optim import HybridRMSpropSGD  # noqa: E402

WAYS = {
    "every rank reads the file": lambda folder, env: checkpoint.load_latest(folder),
    "rank 0 reads and sends it": checkpoint.load_for_resume,
}


def bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no rchar")


def write_checkpoint(folder: Path, arch: str, world: int) -> Path:
    """A checkpoint as training saves it: the model, the hybrid optimizer's two buffers per
    parameter, and `world` ranks' RNG states."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch), 1000)
    optimizer = HybridRMSpropSGD(param_groups(model, 1e-4), lr=0.1, alpha_sgd=0.5)
    F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([1, 2])).backward()
    optimizer.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "per_rank": [{"rng": checkpoint.rng_state()} for _ in range(world)],
        "epoch": 3,
        "step": 17,
        "progress": {},
        "world_size": world,
        "fingerprint": "benchmark",
    }
    return checkpoint.save(folder, state, keep=1)


def worker(rank: int, world: int, args: argparse.Namespace, port: int, folder: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    env = DistEnv(rank, world, rank, torch.device("cpu"), "gloo")
    measured: dict[str, list[tuple[int, float]]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way, load in WAYS.items():
            dist.barrier()
            before, start = bytes_read(), time.perf_counter()
            resumed = load(folder, env)
            seconds = time.perf_counter() - start
            measured[way].append((bytes_read() - before, seconds))
            assert resumed is not None and resumed.state["step"] == 17
            del resumed
    everyone = gather_to_main(measured)
    if rank == 0:
        (folder / "reads.json").write_text(json.dumps(everyone))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ranks", type=int, default=1024, help="the world to give figures for")
    parser.add_argument("--out", type=Path, default=PROJECT / "results" / "bench")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = write_checkpoint(folder, args.arch, args.processes)
        size = path.stat().st_size
        mp.start_processes(
            worker,
            args=(args.processes, args, free_port(), folder),
            nprocs=args.processes,
            start_method="spawn",
        )
        per_rank = json.loads((folder / "reads.json").read_text())
    results = {}
    for way in WAYS:
        read = [max(b for b, _ in rank[way]) for rank in per_rank]  # the larger of the repeats
        seconds = [statistics.median(s for _, s in rank[way]) for rank in per_rank]
        at_scale = read[0] + (args.ranks - 1) * statistics.mean(read[1:])
        results[way] = {
            "bytes_per_rank": read,
            "bytes_in_all": sum(read),
            "seconds_per_rank": seconds,
            f"bytes_at_{args.ranks}_ranks": at_scale,
        }
    report = write_benchmark_report(
        args.out / "resume_reads.json",
        "resume_reads",
        args,
        checkpoint_bytes=size,
        results=results,
    )
    print(
        f"\nResuming {args.processes} gloo processes from one {args.arch} checkpoint "
        f"({size / 1e6:.1f} MB), bytes read per rank (the larger of {args.repeats} repeats)"
    )
    print(markdown(report))


def markdown(report: dict) -> str:
    """The table of docs/performance.md, from the report's JSON."""
    processes, ranks = report["args"]["processes"], int(report["args"]["ranks"])
    lines = [
        f"| way | rank 0 | each other rank | all {processes} ranks | {ranks:,} ranks "
        "| seconds per rank |",
        "|---|---|---|---|---|---|",
    ]
    for way, r in report["results"].items():
        read = r["bytes_per_rank"]
        others = statistics.mean(read[1:])
        at_scale = r[f"bytes_at_{ranks}_ranks"]
        seconds = r["seconds_per_rank"]
        lines.append(
            f"| {way} | {read[0] / 1e6:.1f} MB | {_size(others)} | {r['bytes_in_all'] / 1e6:,.0f} "
            f"MB | {at_scale / 1e9:,.2f} GB | {min(seconds):.2f}-{max(seconds):.2f} |"
        )
    return "\n".join(lines) + "\n"


def _size(count: float) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e5 else f"{count / 1e3:.1f} kB"


if __name__ == "__main__":
    main()

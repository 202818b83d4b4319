"""Where our loader's time goes, on Imagenette's 224 px images with 2 workers on 2 cores: the
consuming process (the DataLoader's hand-over: the result queue, unpickling, the index queue;
collation is none, the workers send whole batches), the workers (their per-image cost beside
the one-core ceiling's, and how much of the wall time they compute), and the machine's share
to neither.

The consumer runs its loop under cProfile; the workers' CPU times come from psutil. Each
figure is per batch of the steady state, after one batch per worker.

    python benchmarks/loader_profile.py [--batches 120] [--batch 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from pathlib import Path

import psutil
import torch

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.loader import build_shards, ceiling  # noqa: E402
from benchmarks.report import write_benchmark_report  # noqa: E402
from pipeline.data.loader import ShardDataset, make_loader  # noqa: E402
from pipeline.data.samplers import TrainBatchSampler  # noqa: E402
from pipeline.data.transforms import TrainTransform  # noqa: E402


def profile(shards: Path, batch: int, workers: int, batches: int) -> dict:
    dataset = ShardDataset(shards, TrainTransform(224, seed=0))
    sampler = TrainBatchSampler(len(dataset), batch, seed=0)
    loader = make_loader(dataset, sampler, workers)
    iterator = iter(loader)
    for _ in range(workers):  # the workers' first batches arrive together: not steady state
        next(iterator)
    me = psutil.Process()
    children = me.children()
    before = {c.pid: c.cpu_times() for c in children}
    own_before = time.process_time()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(batches):
        next(iterator)
    profiler.disable()
    wall = time.perf_counter() - start
    consumer_cpu = time.process_time() - own_before
    worker_cpu = sum(
        (c.cpu_times().user + c.cpu_times().system) - (before[c.pid].user + before[c.pid].system)
        for c in children
    )
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    del iterator, loader
    images = batches * batch
    return {
        "images_per_s": images / wall,
        "wall_ms_per_batch": 1000 * wall / batches,
        "consumer_cpu_ms_per_batch": 1000 * consumer_cpu / batches,
        "worker_cpu_ms_per_batch": 1000 * worker_cpu / batches,
        "worker_cpu_us_per_image": 1e6 * worker_cpu / images,
        "cores_busy": (consumer_cpu + worker_cpu) / (wall * (os.cpu_count() or 1)),
        "workers_busy": worker_cpu / (wall * workers),
        "consumer_profile": text.getvalue(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=PROJECT.parent / "shared/data/imagenette")
    parser.add_argument("--work", type=Path, default=PROJECT / "results/bench")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=120)
    parser.add_argument("--out", type=Path, default=PROJECT / "results" / "bench")
    args = parser.parse_args()
    shards = build_shards(args.data, args.work, "loader")
    one_core = ceiling(shards, 1000)
    result = profile(shards, args.batch, args.workers, args.batches)
    result["ceiling_us_per_image"] = 1e6 / one_core
    result["ceiling_x_workers_img_s"] = one_core * args.workers
    torch.set_num_threads(os.cpu_count() or 1)
    write_benchmark_report(args.out / "loader_profile.json", "loader_profile", args, **result)
    print(result.pop("consumer_profile"))
    for key, value in result.items():
        print(f"{key}: {value:,.3f}")


if __name__ == "__main__":
    main()

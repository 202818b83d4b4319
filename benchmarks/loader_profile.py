"""Where our loader's time goes, on Imagenette's 224 px images with 2 workers on 2 cores: the
consuming process (the DataLoader's hand-over: the result queue, unpickling, the index queue;
collation is none, the workers send whole batches), the workers (their per-image cost beside
the one-core ceiling's, and how much of the wall time they compute), and the machine's share
to neither. Then what a worker's reading of each row and its writing into a shared batch add
to the ceiling's loop: in one process, paired batch by batch; and in as many processes as
workers at once, paired within each repeat (`loader_ceilings.py`).

The consumer runs its loop under cProfile; the workers' CPU times come from psutil, their page
faults from /proc (Linux). Each figure is per batch of the steady state, after one batch per
worker; with --repeats, the median of the runs (each run's figures are in the JSON too).

    python benchmarks/loader_profile.py [--batches 140] [--batch 64] [--workers 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import mmap
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import psutil
import torch

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.loader import build_shards  # noqa: E402
from benchmarks.loader_ceilings import (  # noqa: E402
    Keys,
    ceiling,
    concurrent_ceiling,
    shared_batch,
    warmup_batches,
    window_keys,
)
from benchmarks.report import write_benchmark_report  # noqa: E402
from pipeline.data.batch_pool import faulted_in_shared  # noqa: E402
from pipeline.data.loader import ShardDataset, make_loader  # noqa: E402
from pipeline.data.samplers import TrainBatchSampler  # noqa: E402
from pipeline.data.transforms import TrainTransform  # noqa: E402


def minor_faults(pid: int) -> int:
    """Page faults served without I/O so far (a page zero-filled or mapped), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])


def one_process_costs(shards: Path, batch: int, batches: int) -> dict:
    """A worker's per-image work in one process against the ceiling's loop, batch by batch in
    a rotating order: what reading a row (with its crc check) and writing each crop into a
    shared batch buffer add, without the DataLoader and without a second process; and what
    making one pool buffer costs, against private memory."""
    torch.set_num_threads(1)
    dataset = ShardDataset(shards, TrainTransform(224, seed=0))
    jpegs = [dataset.read(i)[0] for i in range(batch * batches)]
    hot = torch.empty(224, 224, 3, dtype=torch.uint8)
    shared = shared_batch(batch)
    nbytes = shared.nbytes

    def ceiling_loop(rows: range) -> None:
        for i in rows:
            dataset.transform(jpegs[i], 1, i, hot)

    def with_read(rows: range) -> None:
        for i in rows:
            dataset.transform(dataset.read(i)[0], 1, i, hot)

    def into_batch(rows: range) -> None:
        for k, i in enumerate(rows):
            dataset.transform(jpegs[i], 1, i, shared[k])

    variants = {"ceiling loop": ceiling_loop, "+ read": with_read, "+ batch buffer": into_batch}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for b in range(batches):
        rows = range(b * batch, (b + 1) * batch)
        names = list(variants)
        for name in names[b % 3 :] + names[: b % 3]:
            start = time.perf_counter()
            variants[name](rows)
            seconds[name].append(time.perf_counter() - start)
    torch.set_num_threads(os.cpu_count() or 1)
    base = seconds["ceiling loop"]
    make_ms = {"shared": [], "private": []}
    for _ in range(5):  # a pool buffer made and faulted in, against private memory
        start = time.perf_counter()
        faulted_in_shared(nbytes)
        make_ms["shared"].append(1e3 * (time.perf_counter() - start))
        start = time.perf_counter()
        private = mmap.mmap(-1, nbytes)  # fresh anonymous pages, as a new malloc'ed block
        torch.frombuffer(private, dtype=torch.uint8)[:: mmap.PAGESIZE].zero_()
        make_ms["private"].append(1e3 * (time.perf_counter() - start))

    def vs_base(name: str) -> float:
        return statistics.median(t / c for t, c in zip(seconds[name], base, strict=True))

    return {
        "ceiling_loop_us_per_image": 1e6 * statistics.median(base) / batch,
        "read_vs_ceiling_loop": vs_base("+ read"),
        "batch_buffer_vs_ceiling_loop": vs_base("+ batch buffer"),
        "buffer_mb": nbytes / 1e6,
        "make_shared_buffer_ms": statistics.median(make_ms["shared"]),
        "make_private_buffer_ms": statistics.median(make_ms["private"]),
    }


def concurrent_costs(shards: Path, keys: Keys, batch: int, workers: int, repeat: int) -> dict:
    """The ceiling's loop in `workers` processes at once, three ways, in a rotating order: into
    one hot image (the loader benchmark's loops at once), into rotating shared batch buffers
    as workers write, and reading each row (crc check) in the loop too. What those two parts of
    a worker's job cost while the cores run together, as images/s."""
    variants = {
        "loops_at_once_img_s": {},
        "into_batch_buffers_img_s": {"batch": batch},
        "reading_rows_too_img_s": {"batch": batch, "read_rows": True},
    }
    names = list(variants)
    turn = repeat % len(names)
    return {
        name: concurrent_ceiling(shards, keys, workers, **variants[name])
        for name in names[turn:] + names[:turn]
    }


def profile(shards: Path, batch: int, workers: int, batches: int, epoch: int) -> dict:
    dataset = ShardDataset(shards, TrainTransform(224, seed=0))
    sampler = TrainBatchSampler(len(dataset), batch, seed=0)
    sampler.set_epoch(epoch)
    loader = make_loader(dataset, sampler, workers)
    iterator = iter(loader)
    for _ in range(warmup_batches(workers)):  # not steady state yet
        next(iterator)
    me = psutil.Process()
    children = me.children()
    before = {c.pid: c.cpu_times() for c in children}
    faults_before = sum(minor_faults(c.pid) for c in children)
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
    worker_faults = sum(minor_faults(c.pid) for c in children) - faults_before
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
        "worker_page_faults_per_batch": worker_faults / batches,
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
    parser.add_argument("--batches", type=int, default=140)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=PROJECT / "results" / "bench")
    args = parser.parse_args()
    shards = build_shards(args.data, args.work, "loader")
    size = len(ShardDataset(shards, TrainTransform(224, seed=0)))
    runs = []
    for repeat in range(args.repeats):  # each repeat another epoch: other images and crops
        # The ceiling decodes the profiled window's images, crops and flips.
        keys = window_keys(size, args.batch, repeat, args.workers, args.batches)
        one_core = ceiling(shards, keys)
        run = profile(shards, args.batch, args.workers, args.batches, repeat)
        run["ceiling_us_per_image"] = 1e6 / one_core
        run["ceiling_x_workers_img_s"] = one_core * args.workers
        run |= concurrent_costs(shards, keys, args.batch, args.workers, repeat)
        for name in ("into_batch_buffers", "reading_rows_too"):
            run[f"{name}_vs_loops_at_once"] = run[f"{name}_img_s"] / run["loops_at_once_img_s"]
        run["loader_vs_reading_rows_too"] = run["images_per_s"] / run["reading_rows_too_img_s"]
        runs.append(run)
    in_one_process = one_process_costs(shards, args.batch, args.batches)
    figures = {
        key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "consumer_profile"
    }
    listing = runs[0]["consumer_profile"]  # one run's listing: cProfile's items, not figures
    per_run = [{k: v for k, v in r.items() if k != "consumer_profile"} for r in runs]
    write_benchmark_report(
        args.out / "loader_profile.json", "loader_profile", args,
        **figures, runs=per_run, one_process=in_one_process, consumer_profile=listing,
    )  # fmt: skip
    print(listing)
    for key, value in (figures | in_one_process).items():
        print(f"{key}: {value:,.3f}")


if __name__ == "__main__":
    main()

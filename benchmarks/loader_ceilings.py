"""What the loader benchmarks divide our loader's rate by: our decode + crop + resize in a
tight loop, on one core or in several processes at once, over the very images, crops and flips
that a loader run times.

By default each image goes into one hot buffer, as if the loader had nothing to do but decode.
The profile (`loader_profile.py`) also runs the loops as a loader's workers must: each image
into its own slot of batch-sized shared buffers, and each row read (with its crc check) inside
the loop, to show what those two parts of a worker's job cost when the cores run together.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import os
import time
from pathlib import Path

import torch

from pipeline.data.batch_pool import faulted_in_shared
from pipeline.data.loader import ShardDataset
from pipeline.data.samplers import TrainBatchSampler
from pipeline.data.transforms import TrainTransform

Keys = list[tuple[int, int]]  # (epoch, index) of each image, in decoding order
# A worker's pool cycles through a few buffers: the one it fills, the one the consumer holds,
# one in flight (`SharedBatchPool`).
ROTATING_BUFFERS = 3


def warmup_batches(workers: int) -> int:
    """Batches a loader run takes before its clock starts. The workers start together and
    their first batches arrive as one burst: timing from the first batch would count that
    burst as throughput. Steady state starts after one each."""
    return max(1, workers)


def window_keys(dataset_size: int, batch: int, epoch: int, workers: int, batches: int) -> Keys:
    """(epoch, index) of every image a loader run of `epoch` decodes while its clock runs:
    the ceilings decode the same images with the same crops and flips, so that a ratio
    compares the same work."""
    sampler = TrainBatchSampler(dataset_size, batch, seed=0)
    sampler.set_epoch(epoch)
    start = warmup_batches(workers)
    timed = itertools.islice(sampler, start, start + batches)
    return [(keys.epoch, index) for keys in timed for index in keys.indices]


def shared_batch(batch: int) -> torch.Tensor:
    """A (batch, 224, 224, 3) uint8 batch in shared memory, faulted in as the pool's are."""
    shape = (batch, 224, 224, 3)
    return torch.empty(0, dtype=torch.uint8).set_(faulted_in_shared(math.prod(shape)), 0, shape)


def ceiling(
    shards: Path,
    keys: Keys,
    start_together=None,
    batch: int | None = None,
    read_rows: bool = False,
) -> float:
    """Images/s of decode + crop + resize alone on one core, over `keys`. With `batch`, each
    image goes into its slot of rotating shared batch buffers instead of one hot image; with
    `read_rows`, each row is read and crc-checked inside the timed loop."""
    torch.set_num_threads(1)
    dataset = ShardDataset(shards, TrainTransform(224, seed=0))
    hot = torch.empty(224, 224, 3, dtype=torch.uint8)
    if batch is None:
        slots = itertools.repeat(hot)
    else:
        buffers = [shared_batch(batch) for _ in range(ROTATING_BUFFERS)]
        slots = (buffers[b % ROTATING_BUFFERS][k] for b in itertools.count() for k in range(batch))
    jpegs = [(dataset.read(index)[0], epoch, index) for epoch, index in keys]
    for jpeg, epoch, index in jpegs[:20]:
        dataset.transform(jpeg, epoch, index, hot)
    if start_together is not None:
        start_together.wait()
    start = time.perf_counter()
    for (jpeg, epoch, index), out in zip(jpegs, slots, strict=False):  # slots: endless
        if read_rows:
            jpeg = dataset.read(index)[0]
        dataset.transform(jpeg, epoch, index, out)
    rate = len(jpegs) / (time.perf_counter() - start)
    torch.set_num_threads(os.cpu_count() or 1)
    return rate


def _ceiling_process(shards: Path, keys: Keys, barrier, ends, variant: dict) -> None:
    ceiling(shards, keys, barrier, **variant)
    ends.put(time.perf_counter())  # CLOCK_MONOTONIC: comparable between processes


def concurrent_ceiling(shards: Path, keys: Keys, processes: int, **variant) -> float:
    """The tight loops of `processes` processes at once, each over all of `keys` from its own
    starting point: all their images over the time from their common start to the last one's
    end, which is what the workers could reach on this machine at best (cores shared with the
    system, memory bandwidth, neighbours). Summing each loop's own rate would overstate it: a
    loop that ends early leaves the other a free core. `variant`: `ceiling`'s options."""
    context = mp.get_context("fork")
    barrier, ends = context.Barrier(processes + 1), context.Queue()
    shift = len(keys) // processes
    started = [
        context.Process(
            target=_ceiling_process,
            args=(shards, keys[p * shift :] + keys[: p * shift], barrier, ends, variant),
        )
        for p in range(processes)
    ]
    for process in started:
        process.start()
    barrier.wait()
    start = time.perf_counter()
    last_end = max(ends.get() for _ in started)
    for process in started:
        process.join()
    return processes * len(keys) / (last_end - start)

"""Batch samplers that are exact under DDP and gradient accumulation, and resumable at any step.

The global minibatch of step t is a slice of a seeded permutation of the epoch, cut into
`world_size x accumulate` micro-batches, so ranks never overlap and 1 process x accumulate 2
sees exactly the images of 2 processes x accumulate 1. Every validation image is seen once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SampleKeys:
    """What the batch samplers yield: the indices of one micro-batch and the epoch they are
    drawn for (the epoch seeds the augmentation)."""

    epoch: int
    indices: list[int]


class TrainBatchSampler:
    """Exact DDP sampling with gradient accumulation, resumable at any step.

    Each epoch draws a seeded permutation of all samples. Step t uses the global minibatch
    `perm[t*G:(t+1)*G]` with G = batch_size * accumulate * world_size, cut into micro-batches of
    `batch_size`; rank r takes micro-batches r*accumulate ... r*accumulate + accumulate - 1.
    So the split of a global minibatch into (world_size, accumulate) does not change which
    images make it up, and ranks never overlap. The last `N mod G` samples of the permutation
    are left out of that epoch (a different set each epoch)."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        accumulate: int = 1,
        seed: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.accumulate = accumulate
        self.seed = seed
        self.global_batch = batch_size * accumulate * world_size
        self.steps_per_epoch = num_samples // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"global batch {self.global_batch} (batch_per_worker {batch_size} x accumulate "
                f"{accumulate} x world size {world_size}) exceeds the {num_samples} training "
                "images: not one full step per epoch"
            )
        self.epoch = 0
        self.start_step = 0
        self._perm_epoch: int | None = None
        self._perm = np.empty(0, dtype=np.int64)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps_per_epoch}")
        self.epoch = epoch
        self.start_step = start_step

    def permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            self._perm_epoch = epoch
        return self._perm

    def micro_batches(self, epoch: int, step: int) -> list[list[int]]:
        """This rank's `accumulate` micro-batches of step `step`."""
        perm = self.permutation(epoch)
        start = step * self.global_batch + self.rank * self.accumulate * self.batch_size
        return [
            perm[start + a * self.batch_size : start + (a + 1) * self.batch_size].tolist()
            for a in range(self.accumulate)
        ]

    def __iter__(self):
        epoch = self.epoch
        for step in range(self.start_step, self.steps_per_epoch):
            for micro in self.micro_batches(epoch, step):
                yield SampleKeys(epoch, micro)

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accumulate


class EvalBatchSampler:
    """Every sample exactly once across ranks, in order: rank r takes the r-th contiguous block
    (blocks differ in size by at most one), cut into batches (the last may be smaller)."""

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0):
        block = np.array_split(np.arange(num_samples), world_size)[rank]
        self.batches = [
            block[i : i + batch_size].tolist() for i in range(0, len(block), batch_size)
        ]

    def __iter__(self):
        for batch in self.batches:
            yield SampleKeys(0, batch)

    def __len__(self) -> int:
        return len(self.batches)

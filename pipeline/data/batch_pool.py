"""Shared-memory batch buffers that DataLoader workers reuse once the consumer is done.

A worker that allocates a fresh shared-memory buffer for every batch pays for the kernel
zero-filling its pages, several times what filling private memory costs. The pool lets each
worker cycle through a few buffers instead, and never hands one out while the consuming
process can still see it:

* One shared int32 flag per buffer, created in the main process before the workers start:
  1 while the buffer is out with the consumer, 0 when the worker may fill it again.
* The worker sets the flag before it sends the batch. The batch travels as `PooledBatch`,
  whose unpickling in the consumer makes a fresh tensor over the buffer and attaches a
  finalizer to that tensor's storage, which clears the flag when the last tensor viewing it
  is gone (a pinned or device copy is a different storage, so the buffer is free as soon as
  it has been copied).
* The buffer itself crosses to the consumer once: the consumer keeps it mapped, and later
  batches in it send only their slot, shape and labels. Sending the storage with every batch,
  as torch's reductions do, costs a socket round trip to the worker for its file descriptor
  (two, with the labels), a fresh mmap whose pages fault in again as the consumer reads them,
  and the worker's share of the round trip, all on the consumer's CPU.
* A worker makes all its buffers at its first batch and writes to every page of them, so that
  the page faults and the kernel's zero-filling are paid then, once, and not by whichever
  later batch first needs one more buffer (4-10 ms for a 9.6 MB buffer on a sandboxed
  kernel, up to a third of a worker's time for a batch at 224 px,
  `benchmarks/loader_profile.py`).
* A worker with no free buffer allocates a fresh, unpooled one: a consumer that keeps batches
  (a list of them, say) costs memory, never correctness.

The price: each worker keeps `buffers_per_worker` batches' buffers (in /dev/shm) while its
DataLoader lives, where fresh buffers lived only as long as the batch; the consumer maps the
same memory, which takes no more of it.
"""

from __future__ import annotations

import itertools
import math
import mmap
import weakref
from typing import NamedTuple

import numpy as np
import torch

_pool_ids = itertools.count()
# The consumer's pools by id, so that an unpickled batch finds the flag it must clear.
_POOLS: weakref.WeakValueDictionary[int, SharedBatchPool] = weakref.WeakValueDictionary()
_worker_pool: SharedBatchPool | None = None  # set in each worker by `SharedBatchPool.attach`


class Slot(NamedTuple):
    """Which flag a pooled buffer answers to."""

    pool_id: int
    index: int


class SharedBatchPool:
    """The flags of one DataLoader's worker buffers and, in each worker, its own buffers."""

    def __init__(self, workers: int, buffers_per_worker: int) -> None:
        self.id = next(_pool_ids)
        self.buffers_per_worker = buffers_per_worker
        self.flags = torch.zeros(workers * buffers_per_worker, dtype=torch.int32).share_memory_()
        self._flags = self.flags.numpy()  # the same shared memory, cheap to index
        self._worker_id = 0
        self._buffers: dict[int, torch.UntypedStorage] = {}  # this worker's, by flag index
        self._sent: set[int] = set()  # in a worker: buffers the consumer has mapped
        self._mapped: dict[int, np.ndarray] = {}  # in the consumer: the workers' buffers
        _POOLS[self.id] = self

    def __getstate__(self) -> dict:
        # Sent to workers started with "spawn": the flags go as shared memory (torch's
        # reductions), the numpy view of them and any buffers do not.
        return {"id": self.id, "buffers_per_worker": self.buffers_per_worker, "flags": self.flags}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._flags = self.flags.numpy()
        self._worker_id = 0
        self._buffers = {}
        self._sent = set()
        self._mapped = {}

    def attach(self, worker_id: int) -> None:
        """`worker_init_fn`: make this pool the one this worker process draws from."""
        global _worker_pool
        _worker_pool = self
        self._worker_id = worker_id

    def take(self, nbytes: int) -> tuple[torch.UntypedStorage, Slot | None]:
        """A shared storage of at least `nbytes` and its slot (None: a fresh, unpooled one)."""
        first = self._worker_id * self.buffers_per_worker
        slots = range(first, first + self.buffers_per_worker)
        if not self._buffers:  # this worker's first batch: all its buffers now (module doc)
            self._buffers = {index: faulted_in_shared(nbytes) for index in slots}
        for index in slots:
            if self._flags[index] == 0:
                storage = self._buffers[index]
                if storage.nbytes() < nbytes:
                    storage = faulted_in_shared(nbytes)
                    self._buffers[index] = storage
                    self._sent.discard(index)
                self._flags[index] = 1
                return storage, Slot(self.id, index)
        return torch.UntypedStorage._new_shared(nbytes), None

    def release(self, index: int) -> None:
        self._flags[index] = 0


def faulted_in_shared(nbytes: int) -> torch.UntypedStorage:
    """A shared storage of `nbytes` with every page already written (faulted in)."""
    storage = torch.UntypedStorage._new_shared(nbytes)
    torch.empty(0, dtype=torch.uint8).set_(storage)[:: mmap.PAGESIZE].zero_()
    return storage


class PooledBatch:
    """(images, labels) in a pooled buffer; arrives in the consumer as that plain tuple.

    `images` is an NCHW view of a channels-last (NHWC) buffer, as the dataset returns it."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, slot: Slot) -> None:
        self.images = images
        self.labels = labels
        self.slot = slot

    def __reduce__(self):
        # Runs in the worker (in its queue's feeder thread), batches in the order they were
        # put. The buffer goes along only if the consumer has not mapped it yet.
        assert _worker_pool is not None and _worker_pool.id == self.slot.pool_id
        storage = None
        if self.slot.index not in _worker_pool._sent:
            storage = self.images.untyped_storage()
            _worker_pool._sent.add(self.slot.index)
        nhwc_shape = tuple(self.images.permute(0, 2, 3, 1).shape)
        return _received, (storage, nhwc_shape, self.labels.numpy(), self.slot)


def _received(
    storage: torch.UntypedStorage | None,
    nhwc_shape: tuple[int, ...],
    labels: np.ndarray,
    slot: Slot,
) -> tuple[torch.Tensor, torch.Tensor]:
    pool = _POOLS.get(slot.pool_id)
    if pool is None:  # the DataLoader (which holds the pool) is gone: nobody reads this batch
        raise RuntimeError(f"a pooled batch arrived after its DataLoader was gone ({slot})")
    if storage is not None:
        pool._mapped[slot.index] = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()
    # A storage of its own over the mapped buffer: when the last tensor viewing this batch is
    # gone, the finalizer hands the buffer back to its worker.
    images = torch.frombuffer(
        pool._mapped[slot.index], dtype=torch.uint8, count=math.prod(nhwc_shape)
    )
    weakref.finalize(images.untyped_storage(), pool.release, slot.index)
    return images.view(nhwc_shape).permute(0, 3, 1, 2), torch.from_numpy(labels)


def pooled_uint8_batch(shape: tuple[int, ...]) -> tuple[torch.Tensor, Slot | None]:
    """An uninitialised uint8 tensor of `shape` in shared memory: from this worker's pool when
    it has a free buffer (with its slot), else freshly allocated (slot None)."""
    nbytes = math.prod(shape)
    if _worker_pool is None:
        storage, slot = torch.UntypedStorage._new_shared(nbytes), None
    else:
        storage, slot = _worker_pool.take(nbytes)
    return torch.empty(0, dtype=torch.uint8).set_(storage, 0, shape), slot

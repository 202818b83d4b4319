"""The training and validation datasets over the Arrow shards, and the DataLoader around them.

The dataset memory-maps every shard lazily in each worker process (zero-copy Arrow reads) and
checks each row's crc32 as it reads it; a shard that disagrees with `index.json` is refused
with an error naming it. Workers return whole uint8 batches, channels-last, in shared memory;
each worker reuses a few shared buffers once the consumer has dropped them, and each buffer
crosses to the consumer once (`batch_pool`).
"""

from __future__ import annotations

import json
import os
import warnings
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from pipeline.config import Config
from pipeline.data.batch_pool import PooledBatch, SharedBatchPool, pooled_uint8_batch
from pipeline.data.samplers import EvalBatchSampler, SampleKeys, TrainBatchSampler
from pipeline.data.shards import ShardError, open_checked, row_checksum
from pipeline.data.transforms import TrainTransform, Transform, ValTransform
from pipeline.paths import DataPaths

# Shard rows are read-only memory maps and Pillow's arrays read-only views; both are only read.
warnings.filterwarnings("ignore", message="The given buffer is not writable")
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


class _OpenShard:
    def __init__(self, path: Path, reader: pa.ipc.RecordBatchFileReader) -> None:
        self.path = path
        self.batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        sizes = [b.num_rows for b in self.batches]
        self.batch_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
        self.offsets = [
            np.frombuffer(b.column(0).buffers()[1], dtype=np.int32) for b in self.batches
        ]
        self.data = [memoryview(b.column(0).buffers()[2]).cast("B") for b in self.batches]
        self.labels = [b.column(1).to_numpy() for b in self.batches]
        self.crcs = [b.column(3).to_numpy() for b in self.batches]


class ShardDataset(Dataset):
    """A map-style dataset over all shards of one split (`shards/<split>/index.json`)."""

    def __init__(self, shard_dir: Path, transform: Transform) -> None:
        self.shard_dir = Path(shard_dir)
        index_path = self.shard_dir / "index.json"
        if not index_path.is_file():
            raise ShardError(f"{index_path} not found: build the shards first")
        self.index: dict[str, Any] = json.loads(index_path.read_text())
        self.entries = self.index["shards"]
        self.num_classes: int = self.index["num_classes"]
        self.transform = transform
        rows = [e["rows"] for e in self.entries]
        self.starts = np.concatenate([[0], np.cumsum(rows)]).tolist()
        for entry in self.entries:  # fail early and cheaply in the main process
            path = self.shard_dir / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["bytes"]:
                open_checked(path, entry)  # raises with the precise complaint
        self._shards: list[_OpenShard] | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.starts[-1]

    def labels(self) -> np.ndarray:
        """Every label in dataset order (reads only the label column)."""
        return np.concatenate([label for s in self._open() for label in s.labels])

    def _open(self) -> list[_OpenShard]:
        if self._shards is None or self._pid != os.getpid():  # each worker maps its own
            self._shards = [
                _OpenShard(self.shard_dir / e["file"], open_checked(self.shard_dir / e["file"], e))
                for e in self.entries
            ]
            self._pid = os.getpid()
        return self._shards

    def read(self, index: int) -> tuple[memoryview, int]:
        """The JPEG bytes (zero-copy) and label of sample `index`, crc-checked."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        shards = self._open()
        s = bisect_right(self.starts, index) - 1
        shard = shards[s]
        row_in_shard = index - self.starts[s]
        b = bisect_right(shard.batch_starts, row_in_shard) - 1
        row = row_in_shard - shard.batch_starts[b]
        offsets = shard.offsets[b]
        jpeg = shard.data[b][offsets[row] : offsets[row + 1]]
        label = int(shard.labels[b][row])
        if row_checksum(jpeg, label) != int(shard.crcs[b][row]):
            raise ShardError(
                f"shard {shard.path}: row {row_in_shard} fails its crc32 (the file is corrupt); "
                "rebuild it and run `python -m pipeline verify`"
            )
        return jpeg, label

    def __getitems__(self, keys: SampleKeys) -> tuple[torch.Tensor, torch.Tensor] | PooledBatch:
        size = self.transform.size
        shape = (len(keys.indices), size, size, 3)
        if get_worker_info() is None:
            images, slot = torch.empty(shape, dtype=torch.uint8), None
        else:  # built in shared memory: handing it over costs no copy (as default_collate)
            images, slot = pooled_uint8_batch(shape)
        label_list = []  # one tensor at the end: setting a tensor's elements one by one is slow
        for k, index in enumerate(keys.indices):
            jpeg, label = self.read(index)
            label_list.append(label)
            self.transform(jpeg, keys.epoch, index, images[k])
        labels = torch.tensor(label_list, dtype=torch.int64)
        nchw = images.permute(0, 3, 1, 2)  # NCHW view of channels-last memory
        return (nchw, labels) if slot is None else PooledBatch(nchw, labels, slot)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.__getitems__(SampleKeys(0, [index]))
        return images[0], int(labels[0])


def _batch_as_is(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def make_loader(
    dataset: ShardDataset,
    batch_sampler: Iterable[SampleKeys],
    workers: int,
    pin_memory: bool = False,
    prefetch_batches: int = 4,
    persistent: bool = True,
) -> DataLoader:
    # A worker has at most `prefetch_batches` batches queued; the consumer holds about two more
    # (the one in use, the one arriving). More in flight than that get fresh buffers.
    pool = SharedBatchPool(workers, prefetch_batches + 2) if workers > 0 else None
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=_batch_as_is,
        pin_memory=pin_memory,
        worker_init_fn=pool.attach if pool is not None else None,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=prefetch_batches if workers > 0 else None,
    )


@dataclass
class Feed:
    """What one process trains and validates on: both splits' datasets, its share of each
    (the samplers), and their loaders."""

    train_set: ShardDataset
    val_set: ShardDataset
    sampler: TrainBatchSampler
    train: DataLoader
    val: DataLoader

    @classmethod
    def of(cls, config: Config, rank: int, world_size: int, pin_memory: bool) -> Feed:
        data, t = DataPaths.of(config), config.train
        train_set = ShardDataset(
            data.shard_dir("train"), TrainTransform.from_config(config.data, config.seed)
        )
        val_set = ShardDataset(data.shard_dir("val"), ValTransform.from_config(config.data))
        sampler = TrainBatchSampler(
            len(train_set), t.batch_per_worker, world_size, rank, t.accumulate, config.seed
        )
        workers = config.data.loader_workers
        val_sampler = EvalBatchSampler(len(val_set), t.val_batch, world_size, rank)
        return cls(
            train_set,
            val_set,
            sampler,
            make_loader(train_set, sampler, workers, pin_memory=pin_memory),
            # Its workers live only while validating: kept alive, they would hold memory and
            # processes through training, beside the training loader's.
            make_loader(val_set, val_sampler, workers, pin_memory=pin_memory, persistent=False),
        )

"""Reading the shards for training: dataset, exact DDP batch samplers, and transforms.

Design choices, each measured in `benchmarks/loader.py`:

* The dataset memory-maps every shard lazily in each worker process (zero-copy Arrow reads)
  and checks each row's crc32 as it reads it; a shard that disagrees with `index.json` is
  refused with an error naming it.
* Workers return whole uint8 batches (channels-last, in shared memory): 4x fewer bytes through
  the worker queue than float32, and normalisation happens on the device (`Normalizer`). Each
  worker reuses a few shared buffers once the consumer has dropped them, and each buffer
  crosses to the consumer once (`batch_pool`).
* Decoding is the hot spot. A crop that is downscaled at least 2x is decoded with Pillow's JPEG
  draft mode (libjpeg-turbo DCT scaling: 1/2, 1/4, 1/8 of the pixels); otherwise torchvision's
  libjpeg-turbo decoder, then one antialiased bilinear resize of the crop in uint8.
* Augmentation randomness comes from (seed, epoch, sample index), not from worker RNG state, so
  a resumed run sees exactly the crops and flips of an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import warnings
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg

from pipeline.config import DataConfig
from pipeline.data.batch_pool import PooledBatch, SharedBatchPool, pooled_uint8_batch
from pipeline.data.shards import ShardError, open_checked, row_checksum

# Shard rows are read-only memory maps and Pillow's arrays read-only views; both are only read.
warnings.filterwarnings("ignore", message="The given buffer is not writable")
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Samplers


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


# --------------------------------------------------------------------------------------------
# Transforms


class Transform(Protocol):
    size: int

    def __call__(self, jpeg: memoryview, epoch: int, index: int, out: torch.Tensor) -> None:
        """Decode `jpeg`, crop and resize it into `out` (uint8, size x size x 3)."""


def jpeg_size(data: memoryview | bytes) -> tuple[int, int]:
    """(width, height) from the JPEG's SOF marker, without decoding."""
    view = memoryview(data)
    pos = 2
    while pos + 9 < len(view):
        if view[pos] != 0xFF:
            raise ValueError("corrupt JPEG: expected a marker")
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        length = (view[pos + 2] << 8) | view[pos + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height = (view[pos + 5] << 8) | view[pos + 6]
            width = (view[pos + 7] << 8) | view[pos + 8]
            return width, height
        pos += 2 + length
    raise ValueError("corrupt JPEG: no frame header")


def decode_resized_crop(
    jpeg: memoryview,
    image_size: tuple[int, int],
    box: tuple[int, int, int, int],
    out: torch.Tensor,
    flip: bool = False,
) -> None:
    """Decode the (top, left, height, width) `box` of a JPEG resized into `out` (H x W x 3)."""
    width, height = image_size
    top, left, box_h, box_w = box
    out_h, out_w = out.shape[0], out.shape[1]
    reduction = min(box_h / out_h, box_w / out_w)
    if reduction >= 2:
        image = Image.open(io.BytesIO(jpeg))
        image.draft("RGB", (math.ceil(width / reduction), math.ceil(height / reduction)))
        sx, sy = image.width / width, image.height / height
        crop = (left * sx, top * sy, (left + box_w) * sx, (top + box_h) * sy)
        resized = image.convert("RGB").resize((out_w, out_h), Image.Resampling.BILINEAR, box=crop)
        pixels = torch.from_numpy(np.asarray(resized))
    else:
        chw = decode_jpeg(torch.frombuffer(jpeg, dtype=torch.uint8), mode=ImageReadMode.RGB)
        region = chw[:, top : top + box_h, left : left + box_w].unsqueeze(0)
        region = region.contiguous(memory_format=torch.channels_last)  # the fast uint8 kernel
        resized = F.interpolate(
            region, size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False
        )
        pixels = resized[0].permute(1, 2, 0)
    out.copy_(pixels.flip(1) if flip else pixels)


class TrainTransform:
    """RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) and a horizontal flip with
    probability 1/2, as torchvision's reference (same parameter sampling)."""

    @classmethod
    def from_config(cls, data: DataConfig, seed: int) -> TrainTransform:
        return cls(data.image_size, seed, scale=(data.crop_scale_min, 1.0), hflip=data.hflip)

    def __init__(
        self,
        size: int,
        seed: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
    ) -> None:
        self.size = size
        self.seed = seed
        self.hflip = hflip
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.ratio = ratio

    def params(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        # Fallback: the largest central crop within the ratio range.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, jpeg: memoryview, epoch: int, index: int, out: torch.Tensor) -> None:
        rng = random.Random(f"{self.seed}/{epoch}/{index}")
        width, height = jpeg_size(jpeg)
        box = self.params(width, height, rng)
        flip = rng.random() < 0.5  # drawn even without flips, so crops do not depend on it
        decode_resized_crop(jpeg, (width, height), box, out, flip=self.hflip and flip)


class ValTransform:
    """Resize the shorter side to `resize`, then center-crop `size` x `size`, with torchvision's
    rounding: resizing the whole image first (not a rounded box of it) keeps the crop where
    torchvision's Resize + CenterCrop put it, to the sub-pixel."""

    def __init__(self, size: int, resize: int) -> None:
        self.size = size
        self.resize = resize

    @classmethod
    def from_config(cls, data: DataConfig) -> ValTransform:
        return cls(data.image_size, data.val_resize)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def __call__(self, jpeg: memoryview, epoch: int, index: int, out: torch.Tensor) -> None:
        width, height = jpeg_size(jpeg)
        resized_w, resized_h = self.resized_size(width, height)
        top = round((resized_h - self.size) / 2)
        left = round((resized_w - self.size) / 2)
        if min(width, height) / self.resize >= 2:
            image = Image.open(io.BytesIO(jpeg))
            image.draft("RGB", (resized_w, resized_h))
            crop = (left, top, left + self.size, top + self.size)
            resized = (
                image.convert("RGB")
                .resize((resized_w, resized_h), Image.Resampling.BILINEAR)
                .crop(crop)
            )
            out.copy_(torch.from_numpy(np.asarray(resized)))
            return
        chw = decode_jpeg(torch.frombuffer(jpeg, dtype=torch.uint8), mode=ImageReadMode.RGB)
        full = chw.unsqueeze(0).contiguous(memory_format=torch.channels_last)
        resized = F.interpolate(
            full, size=(resized_h, resized_w), mode="bilinear", antialias=True, align_corners=False
        )
        out.copy_(resized[0, :, top : top + self.size, left : left + self.size].permute(1, 2, 0))


# --------------------------------------------------------------------------------------------
# Dataset


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
        label_list = []  # one tensor at the end: setting a tensor's element costs 3 us
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
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_batches if workers > 0 else None,
    )


class Normalizer:
    """uint8 NCHW -> normalised float on the device, (x/255 - mean) / std, in the requested
    memory format, without temporaries."""

    def __init__(self, device: torch.device, channels_last: bool = False) -> None:
        self.device = device
        self.channels_last = channels_last
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(shape) * 255
        self.inv_std = 1 / (torch.tensor(IMAGENET_STD, device=device).view(shape) * 255)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"Normalizer takes uint8 images, got {images.dtype}")
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = images.to(self.device, non_blocking=True)  # uint8 over the bus: 4x fewer bytes
        # Cast and lay out in one pass, then normalise in place: no temporaries. On a CPU this
        # is 3.5x faster than `(x.float() - mean) * inv_std` followed by `.contiguous()`.
        x = x.to(dtype=torch.float32, memory_format=fmt)
        return x.sub_(self.mean).mul_(self.inv_std)

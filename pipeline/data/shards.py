"""The shard format: Arrow IPC *file* format, one row per image.

Columns: ``image`` (JPEG bytes), ``label`` (int32), ``key`` (source path) and ``crc32`` (uint32,
over the image bytes and the label). The CRC lets the loader check every row it reads for the
price of one pass of zlib's crc32 (several GB/s), so a flipped byte is caught where it is used
without hashing whole shards on every node. ``index.json`` holds each shard's row count, size,
sha256 and label histogram; `verify_shard` re-checks all of them.

Record batches hold `rows_per_batch` rows, far below Arrow's 2 GB limit for `binary` columns.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import atomic
from pipeline.errors import PipelineError

FORMAT_VERSION = 1
SCHEMA = pa.schema(
    [
        pa.field("image", pa.binary(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("crc32", pa.uint32(), nullable=False),
    ]
)


_NUMPY_TYPES = {pa.int32(): np.int32, pa.uint32(): np.uint32, pa.int64(): np.int64}


def arrow_array(values: Sequence[Any] | np.ndarray, type: pa.DataType) -> pa.Array:
    """`pa.array(values, type=type)` for the schema's types, built from buffers. `pa.array`
    first asks whether `values` is a pandas object, which imports pandas in every shard
    job."""
    if type in (pa.binary(), pa.string()):
        blobs = [v.encode() if isinstance(v, str) else v for v in values]
        offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in blobs], out=offsets[1:])
        if offsets[-1] >= 2**31:
            raise ValueError(f"{offsets[-1]} bytes in one record batch: lower data.rows_per_batch")
        buffers = [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(blobs))]
        return pa.Array.from_buffers(type, len(blobs), buffers)
    numbers = np.ascontiguousarray(values, dtype=_NUMPY_TYPES[type])
    return pa.Array.from_buffers(type, len(numbers), [None, pa.py_buffer(numbers)])


class ShardError(PipelineError, RuntimeError):
    """A shard does not match its index entry, or cannot be read."""


def row_checksum(image: bytes | memoryview, label: int) -> int:
    return zlib.crc32(int(label).to_bytes(4, "little", signed=True), zlib.crc32(image))


def assign_rows(num_rows: int, num_shards: int, seed: int, split: str) -> list[np.ndarray]:
    """Manifest row numbers for each shard, after a seeded global shuffle.

    Every shard mixes classes; shard sizes differ by at most one row. The permutation depends
    only on (seed, split, num_rows), so parallel shard jobs agree without talking."""
    split_key = zlib.crc32(split.encode())
    order = np.random.default_rng([seed, split_key]).permutation(num_rows)
    return np.array_split(order, num_shards)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class WrittenShard:
    rows: int
    bytes: int
    sha256: str
    label_histogram: list[int]


class ShardWriter:
    """Streams rows into `path` batch by batch; the file appears only when complete."""

    def __init__(
        self, path: Path, num_classes: int, rows_per_batch: int, metadata: dict[str, Any]
    ) -> None:
        self.path = path
        self.rows_per_batch = rows_per_batch
        self.histogram = np.zeros(num_classes, dtype=np.int64)
        meta = {"format_version": FORMAT_VERSION, "num_classes": num_classes, **metadata}
        self.schema = SCHEMA.with_metadata({k: json.dumps(v) for k, v in meta.items()})
        self._pending: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
        self.rows = 0

    def add(self, image: bytes, label: int, key: str) -> None:
        self._pending["image"].append(image)
        self._pending["label"].append(label)
        self._pending["key"].append(key)
        self._pending["crc32"].append(row_checksum(image, label))
        self.histogram[label] += 1
        self.rows += 1
        if len(self._pending["image"]) >= self.rows_per_batch:
            self._flush()

    def write(self, rows: Iterable[tuple[bytes, int, str]]) -> WrittenShard:
        with atomic.atomic_path(self.path) as tmp:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, self.schema) as writer:
                self._writer = writer
                for image, label, key in rows:
                    self.add(image, label, key)
                self._flush()
            sha256 = file_sha256(tmp)
            size = tmp.stat().st_size
        return WrittenShard(self.rows, size, sha256, self.histogram.tolist())

    def _flush(self) -> None:
        if not self._pending["image"]:
            return
        batch = pa.record_batch(
            [arrow_array(self._pending[f.name], f.type) for f in SCHEMA], schema=self.schema
        )
        self._writer.write_batch(batch)
        for values in self._pending.values():
            values.clear()


def read_metadata(schema: pa.Schema) -> dict[str, Any]:
    return {k.decode(): json.loads(v) for k, v in (schema.metadata or {}).items()}


def open_checked(path: Path, entry: dict[str, Any]) -> pa.ipc.RecordBatchFileReader:
    """Open a shard memory-mapped, refusing it if size, format or row count disagree with
    its `index.json` entry. Cheap: reads the footer only."""
    if not path.is_file():
        raise ShardError(f"shard {path} is missing (listed in index.json)")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise ShardError(
            f"shard {path} has {size} bytes but index.json records {entry['bytes']}: "
            "it was truncated or replaced; rebuild it (snakemake shard rule) and re-run verify"
        )
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    except (pa.ArrowInvalid, OSError) as err:
        raise ShardError(f"shard {path} is not a readable Arrow file: {err}") from None
    version = read_metadata(reader.schema).get("format_version")
    if version != FORMAT_VERSION:
        raise ShardError(f"shard {path} has format version {version}, expected {FORMAT_VERSION}")
    if not reader.schema.remove_metadata().equals(SCHEMA):
        raise ShardError(f"shard {path} has schema {reader.schema}, expected {SCHEMA}")
    rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    if rows != entry["rows"]:
        raise ShardError(f"shard {path} has {rows} rows but index.json records {entry['rows']}")
    return reader


def verify_shard(path: Path, entry: dict[str, Any], num_classes: int) -> list[str]:
    """Every difference between a shard and its index entry (empty when it matches)."""
    try:
        reader = open_checked(path, entry)
    except ShardError as err:
        return [str(err)]
    problems = []
    digest = file_sha256(path)
    if digest != entry["sha256"]:
        problems.append(f"sha256 {digest} differs from index.json's {entry['sha256']}")
    histogram = np.zeros(num_classes, dtype=np.int64)
    bad_rows = 0
    for b in range(reader.num_record_batches):
        batch = reader.get_batch(b)
        labels = batch.column("label").to_numpy()
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            problems.append(f"record batch {b} has labels outside 0..{num_classes - 1}")
            continue
        histogram += np.bincount(labels, minlength=num_classes)
        images = batch.column("image")
        crcs = batch.column("crc32").to_numpy()
        for i in range(batch.num_rows):
            if row_checksum(images[i].as_buffer(), int(labels[i])) != int(crcs[i]):
                bad_rows += 1
    if bad_rows:
        problems.append(f"{bad_rows} rows fail their crc32")
    if histogram.tolist() != entry["label_histogram"]:
        problems.append("label histogram differs from index.json")
    return [f"shard {path}: {p}" for p in problems]

"""The shard stages' work: one Arrow shard from its slice of the manifest, `index.json` and
`quarantine.csv` gathered from every shard's stats, and the verification of the shards.

Counts always reconcile: manifest rows = shard rows + quarantined rows, per shard and per split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import atomic
from pipeline.config import Config
from pipeline.data import layouts
from pipeline.data.images import BadImage, prepare_image
from pipeline.data.manifest import source_path
from pipeline.data.shards import (
    FORMAT_VERSION,
    ShardWriter,
    arrow_array,
    assign_rows,
    verify_shard,
)
from pipeline.errors import DataStageError
from pipeline.paths import SPLITS, DataPaths, shard_name
from pipeline.progress import progress
from pipeline.stage_keys import stage_values

EXAMPLES_PER_KIND = 3


def build_shard(config: Config, split: str, index: int) -> dict[str, Any]:
    """Build one shard: decode/convert its rows, quarantine what cannot be read; its stats."""
    data = config.data
    paths = DataPaths.of(config)
    count = getattr(data.num_shards, split)
    if not 0 <= index < count:
        raise DataStageError(f"--shard {index} is out of range: {split} has {count} shards")
    started = time.monotonic()
    # ParquetFile, not pq.read_table: that one imports pyarrow.dataset and pandas, a large
    # share of a short shard job.
    manifest = pq.ParquetFile(paths.manifest(split)).read()
    classes = json.loads(paths.classes.read_text())
    rows = assign_rows(manifest.num_rows, count, data.shuffle_seed, split)[index]
    part = manifest.take(arrow_array(rows, pa.int64())).to_pylist()

    quarantined: list[dict[str, str]] = []
    # Counted by kind, a fixed text, so a shard's summary stays a few entries long whatever the
    # sizes and decoder messages of its images; the first examples of each go to the log.
    actions: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    reader = layouts.SourceReader(data.root_path)
    name = shard_name(split, index, count)

    def tally(kind: str, path: str, detail: str) -> None:
        actions[kind] += 1
        if detail and len(shown := examples.setdefault(kind, [])) < EXAMPLES_PER_KIND:
            shown.append(f"{path}: {detail}")

    def quarantine(kind: str, path: str, reason: str) -> None:
        quarantined.append({"path": path, "reason": reason})
        tally(f"quarantined: {kind}", path, reason)

    def usable_rows() -> Iterator[tuple[bytes, int, str]]:
        for row in progress(part, total=len(part), desc=f"shard {name}"):
            if row["problem"] is not None:
                quarantine("no usable label", row["path"], row["problem"])
                continue
            try:
                raw = reader.read(source_path(row), row["offset"], row["bytes"])
            except OSError as err:
                quarantine("unreadable source file", row["path"], str(err))
                continue
            try:
                prepared = prepare_image(raw, data.max_side, data.jpeg_quality)
            except BadImage as err:
                quarantine(err.kind, row["path"], str(err))
                continue
            except OSError as err:  # Pillow fails late on a few broken files
                quarantine("cannot convert", row["path"], str(err))
                continue
            tally(prepared.action, row["path"], prepared.detail)
            yield prepared.data, row["label"], row["path"]

    metadata = {"split": split, "shard": index, "num_shards": count}
    metadata |= stage_values(config, "shard")
    writer = ShardWriter(
        paths.shard(split, index, count), classes["num_classes"], data.rows_per_batch, metadata
    )
    try:
        written = writer.write(usable_rows())
    finally:
        reader.close()
    if written.rows + len(quarantined) != len(part):
        raise DataStageError(f"{name}: {written.rows} + {len(quarantined)} != {len(part)} rows")
    stats = {
        "file": paths.shard(split, index, count).name,
        "manifest_rows": len(part),
        "rows": written.rows,
        "bytes": written.bytes,
        "sha256": written.sha256,
        "label_histogram": written.label_histogram,
        "actions": dict(sorted(actions.items())),
        "examples": examples,
        "quarantined": quarantined,
        "seconds": round(time.monotonic() - started, 3),
    }
    atomic.write_json(paths.shard_stats(split, index, count), stats)
    return stats


def write_shard_index(config: Config) -> dict[str, Any]:
    """Gather the per-shard stats into shards/{split}/index.json and one quarantine.csv."""
    paths = DataPaths.of(config)
    classes = json.loads(paths.classes.read_text())
    quarantine_rows = []
    totals = {}
    for split in SPLITS:
        count = getattr(config.data.num_shards, split)
        stats = []
        for i in range(count):
            stats_path = paths.shard_stats(split, i, count)
            if not stats_path.is_file():
                raise DataStageError(f"{stats_path} missing: build shard {i} of {split} first")
            stats.append(json.loads(stats_path.read_text()))
        manifest_rows = pq.read_metadata(paths.manifest(split)).num_rows
        rows = sum(s["rows"] for s in stats)
        quarantined = sum(len(s["quarantined"]) for s in stats)
        if rows + quarantined != manifest_rows:
            raise DataStageError(
                f"{split}: shards hold {rows} rows + {quarantined} quarantined, but the manifest "
                f"has {manifest_rows}; the shards are from an older index: rebuild them"
            )
        index = {
            "format_version": FORMAT_VERSION,
            "split": split,
            "num_shards": count,
            "num_classes": classes["num_classes"],
            "manifest_rows": manifest_rows,
            "rows": rows,
            "quarantined": quarantined,
            "params": stage_values(config, "shard"),
            "shards": [
                {k: s[k] for k in ("file", "rows", "bytes", "sha256", "label_histogram", "actions")}
                for s in stats
            ],
        }
        atomic.write_json(paths.shard_index(split), index)
        for s in stats:
            quarantine_rows += [
                {"path": q["path"], "split": split, "reason": q["reason"]} for q in s["quarantined"]
            ]
        totals[split] = {"manifest_rows": manifest_rows, "rows": rows, "quarantined": quarantined}

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", "split", "reason"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(quarantine_rows, key=lambda r: (r["split"], r["path"])))
    atomic.write_text(paths.quarantine, buffer.getvalue())
    return totals


def verify_shards(config: Config) -> tuple[list[str], dict[str, Any]]:
    """Re-check every shard against index.json: the problems (none when all match) and the
    counts per split."""
    paths = DataPaths.of(config)
    problems: list[str] = []
    summary = {}
    for split in SPLITS:
        index_path = paths.shard_index(split)
        if not index_path.is_file():
            problems.append(f"{index_path} missing: run the shard stage first")
            continue
        index = json.loads(index_path.read_text())
        manifest_rows = pq.read_metadata(paths.manifest(split)).num_rows
        if index["manifest_rows"] != manifest_rows:
            problems.append(
                f"{index_path}: built from a manifest of {index['manifest_rows']} rows, "
                f"{paths.manifest(split)} now has {manifest_rows}"
            )
        if index["rows"] + index["quarantined"] != index["manifest_rows"]:
            problems.append(f"{index_path}: rows + quarantined != manifest_rows")
        for entry in progress(index["shards"], len(index["shards"]), f"verify {split}", 60):
            problems += verify_shard(
                paths.shard_dir(split) / entry["file"], entry, index["num_classes"]
            )
        summary[split] = {k: index[k] for k in ("num_shards", "rows", "quarantined")}
    if problems:
        paths.verified.unlink(missing_ok=True)  # an older "verified" must not outlive this
    else:
        checked = "size, sha256, row count, crc32 of every row, label histogram"
        atomic.write_json(paths.verified, {"splits": summary, "checked": checked})
    return problems, summary


def describe_shards(config: Config) -> list[dict[str, Any]]:
    """The train and val shards as a training run records its inputs: a name, a digest of the
    split's index.json (which lists every shard's sha256, so other shards give another digest),
    the source folder, and row, class and shard counts."""
    data = DataPaths.of(config)
    described = []
    for split, context in (("train", "training"), ("val", "evaluation")):
        raw = data.shard_index(split).read_bytes()
        index = json.loads(raw)
        described.append(
            {
                "name": f"{config.data.name}/{split}",
                "digest": hashlib.sha256(raw).hexdigest()[:16],
                "source": str(config.data.root_path.resolve()),
                "context": context,
                "profile": {
                    "num_rows": index["rows"],
                    "num_classes": index["num_classes"],
                    "num_shards": index["num_shards"],
                    "quarantined": index["quarantined"],
                },
            }
        )
    return described

"""The data stages: index -> shard (one job per shard) -> shard-index -> verify.

Counts always reconcile: files found = manifest rows (+ non-image files reported as ignored);
manifest rows = shard rows + quarantined rows, per shard and per split.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import atomic
from pipeline.config import Config
from pipeline.data import layouts
from pipeline.data.images import BadImage, prepare_image
from pipeline.data.shards import (
    FORMAT_VERSION,
    ShardWriter,
    arrow_array,
    assign_rows,
    verify_shard,
)
from pipeline.errors import PipelineError
from pipeline.paths import SPLITS, DataPaths, shard_name
from pipeline.progress import progress

MANIFEST_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.int32()),
        ("wnid", pa.string()),
        ("split", pa.string()),
        ("bytes", pa.int64()),
        ("offset", pa.int64()),  # byte offset inside the outer tar; -1 for a plain file
        ("problem", pa.string()),  # why the row has no usable label (null when it has one)
    ]
)


class DataStageError(PipelineError, RuntimeError):
    """A data stage cannot go on; the message says which file and what to do."""


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# index


def run_index(config: Config) -> dict[str, Any]:
    paths = DataPaths.of(config)
    root = config.data.root_path
    scan = layouts.scan_source(root, config.data.layout)
    classes = layouts.class_list(scan, config.data.classes_path)
    labelled = layouts.assign_labels(scan, classes)

    summary: dict[str, Any] = {
        "root": str(root),
        "layout": scan.layout,
        "layout_detected": config.data.layout == "auto",
        "val_labels": scan.label_source,
        "num_classes": len(classes.wnids),
        "class_source": classes.source,
        "splits": {},
        "ignored_files": scan.ignored,
    }
    for split in SPLITS:
        rows = sorted((p for p in labelled if p[0].split == split), key=lambda p: p[0].path)
        if not rows:
            raise DataStageError(f"no {split} images found under {root} ({scan.layout} layout)")
        table = pa.table(
            {
                "path": [e.path for e, _ in rows],
                "label": [label for _, label in rows],
                "wnid": [e.wnid for e, _ in rows],
                "split": [split] * len(rows),
                "bytes": [e.size for e, _ in rows],
                "offset": [e.offset for e, _ in rows],
                "problem": [e.problem for e, _ in rows],
            },
            schema=MANIFEST_SCHEMA,
        )
        with atomic.atomic_path(paths.manifest(split)) as tmp:
            pq.write_table(table, tmp)
        unlabelled = sum(label < 0 for _, label in rows)
        summary["splits"][split] = {"files": len(rows), "unlabelled": unlabelled}

    atomic.write_json(
        paths.classes,
        {
            "num_classes": len(classes.wnids),
            "source": classes.source,
            "classes": [
                {"index": i, "wnid": w, "name": n}
                for i, (w, n) in enumerate(zip(classes.wnids, classes.names, strict=True))
            ],
        },
    )
    atomic.write_json(paths.index_summary, summary)

    how = "detected" if summary["layout_detected"] else "configured"
    _say(f"index: {root} is a {scan.layout} layout ({how}); val labels from {scan.label_source}")
    _say(f"index: {len(classes.wnids)} classes ({classes.source})")
    for split, counts in summary["splits"].items():
        extra = (
            f", {counts['unlabelled']} without a usable label (quarantined by the shard stage)"
            if counts["unlabelled"]
            else ""
        )
        _say(f"index: {split}: {counts['files']} image files{extra}")
    if scan.ignored:
        shown = ", ".join(scan.ignored[:5]) + (" ..." if len(scan.ignored) > 5 else "")
        _say(f"index: ignored {len(scan.ignored)} entries that are not image files: {shown}")
    return summary


# --------------------------------------------------------------------------------------------
# shard


def run_shard(config: Config, split: str, index: int) -> dict[str, Any]:
    """Build one shard: decode/convert its rows, quarantine what cannot be read."""
    data = config.data
    paths = DataPaths.of(config)
    count = getattr(data.num_shards, split)
    if not 0 <= index < count:
        raise DataStageError(f"--shard {index} is out of range: {split} has {count} shards")
    started = time.monotonic()
    # ParquetFile, not pq.read_table: that one imports pyarrow.dataset and pandas, about 0.3 s
    # of a ~1 s shard job of Imagenette's size.
    manifest = pq.ParquetFile(paths.manifest(split)).read()
    classes = json.loads(paths.classes.read_text())
    rows = assign_rows(manifest.num_rows, count, data.shuffle_seed, split)[index]
    part = manifest.take(arrow_array(rows, pa.int64())).to_pylist()

    quarantined: list[dict[str, str]] = []
    actions: Counter[str] = Counter()
    reader = layouts.SourceReader(data.root_path)
    name = shard_name(split, index, count)

    def usable_rows() -> Iterator[tuple[bytes, int, str]]:
        for row in progress(part, total=len(part), desc=f"shard {name}"):
            if row["problem"] is not None:
                quarantined.append({"path": row["path"], "reason": row["problem"]})
                continue
            try:
                raw = reader.read(row["path"], row["offset"], row["bytes"])
                prepared = prepare_image(raw, data.max_side, data.jpeg_quality)
            except (OSError, BadImage) as err:
                quarantined.append({"path": row["path"], "reason": str(err)})
                continue
            actions[prepared.action] += 1
            yield prepared.data, row["label"], row["path"]

    metadata = {
        "split": split,
        "shard": index,
        "num_shards": count,
        "max_side": data.max_side,
        "jpeg_quality": data.jpeg_quality,
    }
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
        "quarantined": quarantined,
        "seconds": round(time.monotonic() - started, 3),
    }
    atomic.write_json(paths.shard_stats(split, index, count), stats)
    _say(
        f"shard {name}: {len(part)} manifest rows = {written.rows} written "
        f"+ {len(quarantined)} quarantined; {_describe(actions)}"
    )
    return stats


def _describe(actions: Counter[str]) -> str:
    return ", ".join(f"{n} {what}" for what, n in sorted(actions.items())) or "nothing written"


def run_all_shards(config: Config, jobs: int) -> None:
    """Every shard of both splits (by hand; Snakemake runs one job per shard instead)."""
    tasks = [(s, i) for s in SPLITS for i in range(getattr(config.data.num_shards, s))]
    if jobs <= 1:
        for split, index in tasks:
            run_shard(config, split, index)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(run_shard, config, s, i) for s, i in tasks]
            for future in futures:
                future.result()
    run_shard_index(config)


# --------------------------------------------------------------------------------------------
# shard-index


def run_shard_index(config: Config) -> dict[str, Any]:
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
            "params": {
                "max_side": config.data.max_side,
                "jpeg_quality": config.data.jpeg_quality,
                "shuffle_seed": config.data.shuffle_seed,
                "rows_per_batch": config.data.rows_per_batch,
            },
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
        _say(f"shard-index: {split}: {manifest_rows} = {rows} + {quarantined} quarantined")

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", "split", "reason"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(quarantine_rows, key=lambda r: (r["split"], r["path"])))
    atomic.write_text(paths.quarantine, buffer.getvalue())
    return totals


# --------------------------------------------------------------------------------------------
# verify


def run_verify(config: Config) -> list[str]:
    """Re-check every shard against index.json; returns the problems (empty when all match)."""
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
        for split, counts in summary.items():
            _say(f"verify: {split}: {counts['num_shards']} shards, {counts['rows']} rows: ok")
    return problems

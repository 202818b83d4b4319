"""The index stage's output: every image found and its label, as one Parquet manifest per split,
plus `classes.json` (label -> wnid and name) and a summary of what was found.

Files found = manifest rows (+ non-image files, reported as ignored): an image without a usable
label keeps its row, with label -1 and the reason, for the shard stage to quarantine.

Linux file names are bytes, not text: a name that is not UTF-8 (a copy unpacked on another
system) is stored readable in `path`, with its exact bytes in `raw_path` for the shard stage.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import atomic
from pipeline.config import Config
from pipeline.data import layouts
from pipeline.errors import DataStageError
from pipeline.paths import SPLITS, DataPaths

MANIFEST_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.int32()),
        ("wnid", pa.string()),
        ("split", pa.string()),
        ("bytes", pa.int64()),
        ("offset", pa.int64()),  # byte offset inside the outer tar; -1 for a plain file
        ("problem", pa.string()),  # why the row has no usable label (null when it has one)
        ("raw_path", pa.binary()),  # the path's bytes when they are not UTF-8, else null
    ]
)


def readable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (surrogate escapes) become `\\xNN`."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def raw_bytes(name: str) -> bytes | None:
    """The name's bytes on disk when they are not UTF-8 (so `readable` lost them), else None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name)
    return None


def source_path(row: dict[str, Any]) -> str:
    """The path to open for a manifest row: from `raw_path` when the name is not UTF-8."""
    raw = row.get("raw_path")
    return row["path"] if raw is None else os.fsdecode(raw)


def write_manifest(config: Config) -> dict[str, Any]:
    """Find every image of `data.root` and its label: the manifest of each split, classes.json
    and a summary of what was found (returned, and written beside the manifests)."""
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
        "ignored_files": [readable(name) for name in scan.ignored],
    }
    for split in SPLITS:
        rows = sorted((p for p in labelled if p[0].split == split), key=lambda p: p[0].path)
        if not rows:
            raise DataStageError(f"no {split} images found under {root} ({scan.layout} layout)")
        table = pa.table(
            {
                "path": [readable(e.path) for e, _ in rows],
                "label": [label for _, label in rows],
                "wnid": [readable(e.wnid) for e, _ in rows],
                "split": [split] * len(rows),
                "bytes": [e.size for e, _ in rows],
                "offset": [e.offset for e, _ in rows],
                "problem": [e.problem and readable(e.problem) for e, _ in rows],
                "raw_path": [raw_bytes(e.path) for e, _ in rows],
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
                {"index": i, "wnid": readable(w), "name": readable(n)}
                for i, (w, n) in enumerate(zip(classes.wnids, classes.names, strict=True))
            ],
        },
    )
    atomic.write_json(paths.index_summary, summary)

    return summary

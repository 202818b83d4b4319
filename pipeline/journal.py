"""The journal, `runs/<experiment>/metrics.jsonl`: every metric rank 0 logs, appended and
flushed before MLflow sees it, so that a tracking server that is down loses nothing.

Journal records, one JSON object per line:
    {"type": "run", "run_id": ..., "experiment": ..., "run_name": ..., "params": {}, "tags": {}}
    {"type": "metrics", "scope": "epoch" | "iteration", "step": N, "time_ms": T, "metrics": {...}}
    {"type": "datasets", "datasets": [{"name": ..., "digest": ..., "source": ..., ...}]}
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from pipeline import atomic

# One MLflow key space per step kind; system metrics per node: "system/node_3".
SCOPE_PREFIX = {"epoch": "", "iteration": "iter/", "system": "system/"}


def scope_prefix(scope: str) -> str:
    """The MLflow key prefix of a journal scope: "" for epochs, "iter/", "system/node_3/"."""
    return SCOPE_PREFIX.get(scope, f"{scope}/")


class Journal:
    """`metrics.jsonl`: append-only, one record per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any], sync: bool = False) -> None:
        self.append_many([record], sync)

    def append_many(self, records: list[dict[str, Any]], sync: bool = False) -> None:
        """Several records in one write (a line each)."""
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()
        with atomic.errors_naming(self.path), open(self.path, "ab", buffering=0) as handle:
            start = handle.seek(0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[handle.write(view) :]
                if sync:
                    os.fsync(handle.fileno())
            except OSError:
                # Back to whole lines (a full disk may have taken half of one), so the next
                # append does not run into a torn record.
                with contextlib.suppress(OSError):
                    handle.truncate(start)
                raise

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash; everything before it is intact
        return records

    def run_id(self) -> str | None:
        ids = [r["run_id"] for r in self.read() if r.get("type") == "run" and r.get("run_id")]
        return ids[-1] if ids else None

    def logged_steps(self) -> set[tuple[str, int]]:
        return {(r["scope"], r["step"]) for r in self.read() if r.get("type") == "metrics"}


def metric_rows(records: list[dict[str, Any]]) -> list[tuple[str, float, int, int]]:
    """(mlflow key, value, timestamp ms, step) for every metric in the journal."""
    rows = []
    for record in records:
        if record.get("type") != "metrics":
            continue
        prefix = scope_prefix(record["scope"])
        for key, value in record["metrics"].items():
            rows.append((prefix + key, float(value), int(record["time_ms"]), int(record["step"])))
    return rows

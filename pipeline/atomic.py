"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader (or a Snakemake restart) never sees a half-written file: either the old file, no file,
or the complete new one. Each final path has one writer at a time (Snakemake locks its working
directory and gives every output one job), so a temporary file of the same final path found at
the start of a write was left by a writer that was killed, and is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with errors_naming(path, tmp):
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_leftovers(path: Path) -> list[Path]:
    """Remove the temporary files of `path` that killed writers left; the ones removed."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.\d+\.tmp")
    removed = []
    with contextlib.suppress(FileNotFoundError), os.scandir(path.parent) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def errors_naming(path: str | Path, tmp: Path | None = None) -> Iterator[None]:
    """OSErrors that name no file (pyarrow's, `write`'s) or only `tmp` are raised naming `path`,
    so the one-line report says which output; the same subclass, by errno."""
    try:
        yield
    except OSError as err:
        named = err.filename is not None and (tmp is None or os.fsdecode(err.filename) != str(tmp))
        if named or err.errno is None:
            raise
        raise OSError(err.errno, os.strerror(err.errno), str(path)) from err


def write_text(path: str | Path, text: str) -> None:
    # Text holding a file name that is not UTF-8 keeps it readable as \xNN instead of failing.
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="backslashreplace")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")

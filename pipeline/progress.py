"""Progress for people: a tqdm bar on a terminal, plain periodic lines in a log file."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str, every_s: float = 30.0) -> Iterator[T]:
    """Yield `items`, showing progress on stderr.

    Snakemake redirects a rule's output to its log file, where a carriage-return bar turns
    into one enormous line; there we print a plain line every `every_s` seconds instead."""
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, unit="img", dynamic_ncols=True)
        return
    start = last = time.monotonic()
    done = 0
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            rate = done / (now - start)
            print(f"{desc}: {done}/{total} ({rate:.0f}/s)", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - start
    print(f"{desc}: {done}/{total} done in {elapsed:.1f} s", file=sys.stderr, flush=True)

"""Real file-system faults for the tests: a size limit that fails writes as a full disk does,
and the one-line report every stage gives for such a fault."""

from __future__ import annotations

import resource
import signal
import subprocess
from collections.abc import Callable

# What root must give up for a permission check to apply to it (`setpriv --bounding-set`).
NO_BYPASS = "-dac_override,-dac_read_search,-fowner"


def size_limited(limit: int) -> Callable[[], None]:
    """A preexec_fn: files may grow to `limit` bytes; past it a write fails with EFBIG instead
    of the process dying of SIGXFSZ (as a full disk fails a write, not the process)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def assert_one_line_fault(result: subprocess.CompletedProcess, name: str, reason: str) -> str:
    """rc 2 and one `error: <stage>: <path>: <reason>. <hint>, then rerun` line, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    line = errors[0]
    assert line.startswith(f"error: {name}: /"), line
    assert f": {reason}. " in line and "then rerun (finished outputs are kept)" in line
    return line

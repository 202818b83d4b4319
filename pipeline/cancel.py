"""SIGTERM, how Slurm cancels and preempts a job, as an exception in the data stages.

By default SIGTERM ends Python at once and `finally` blocks never run, so a cancelled shard job
would leave its temporary file. Raised as `Cancelled` instead, the stage unwinds (temporary
files removed), then dies of the same signal, so Slurm and Snakemake see a cancelled job.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import psutil

T = TypeVar("T")


class Cancelled(BaseException):
    """The process was sent SIGTERM; BaseException so that no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


# False in an idle pool worker: there SIGTERM has nothing to clean up and ends the process.
_unwinding = True


def _on_sigterm(signum: int, frame: Any) -> None:
    if not _unwinding:
        die_of(signum)
    signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
    raise Cancelled(signum)


def unwind_on_sigterm() -> None:
    """From now on SIGTERM raises Cancelled in the main thread."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def init_worker() -> None:
    """A pool worker's initializer: SIGTERM ends it, after unwinding the task it runs, if any."""
    global _unwinding
    _unwinding = False
    unwind_on_sigterm()


def run_in_worker(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` in a pool worker; on SIGTERM its `finally` blocks run, then the worker dies
    of the signal (the pool sees a dead worker, not a task's result)."""
    global _unwinding
    _unwinding = True
    try:
        return func(*args)
    except Cancelled as stop:
        die_of(stop.signum)
        raise  # not reached
    finally:
        _unwinding = False


def stop_children(timeout_s: float = 30.0) -> None:
    """SIGTERM to this process's workers and wait for them, so that they remove their temporary
    files and none outlives this process; SIGKILL for any still running after `timeout_s`."""
    children = psutil.Process().children()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def die_of(signum: int) -> None:
    """End the process by `signum` itself, so its parent sees the signal, not an exit code."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)

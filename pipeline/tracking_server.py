"""A local `mlflow server` for the length of a `with` block: the tests' real server, and the
one the screenshots of the README are taken from."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def local_server(store: Path, port: int, log: Path, artifacts: Path | None = None) -> Iterator[str]:
    """`mlflow server` over the SQLite `store` on 127.0.0.1:`port` (its output in `log`);
    yields its URL once it answers, and stops it at the end of the block."""
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{store.resolve()}",
    ]
    if artifacts is not None:
        command += ["--artifacts-destination", str(artifacts)]
    with open(log, "w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=1):
                        break
                except OSError:
                    if process.poll() is not None:
                        raise RuntimeError(log.read_text()) from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no mlflow server within 60 s: {log}") from None
                    time.sleep(0.5)
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)

"""An MLflow tracking server for many jobs: `mlflow server` over PostgreSQL (or SQLite) with
proxied artifacts, as `python -m pipeline tracking-server` runs it; also the tests' server.

PostgreSQL takes concurrent writers where SQLite serialises them behind one file lock. It runs
as this user from a data folder of its own, listening on 127.0.0.1 only: the MLflow server is
its one client, and the jobs talk to the MLflow server.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError

DATABASE = "mlflow"


class ServerError(PipelineError, RuntimeError):
    """PostgreSQL or the MLflow server did not start; the message says where its log is."""


def allowed_hosts(host: str, port: int) -> list[str]:
    """The Host headers the server answers: MLflow's default (localhost and private addresses)
    plus this machine's names, so jobs may reach it as http://<its host name>:<port>."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    defaults = get_default_allowed_hosts()
    if host in ("127.0.0.1", "localhost"):
        return defaults
    names = {socket.gethostname(), socket.getfqdn()}
    if host not in ("0.0.0.0", "::"):
        names.add(host)
    return [*defaults, *sorted(f"{name}:{port}" for name in names)]


@contextlib.contextmanager
def mlflow_server(
    store_uri: str,
    port: int,
    log: Path,
    artifacts: Path | None = None,
    host: str = "127.0.0.1",
    workers: int = 1,
) -> Iterator[str]:
    """`mlflow server` over `store_uri` on `host`:`port` (its output in `log`), serving the
    artifacts it keeps under `artifacts`; yields its URL once it answers, stops it after."""
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        *("--host", host, "--port", str(port), "--workers", str(workers)),
        *("--backend-store-uri", store_uri),
        *("--allowed-hosts", ",".join(allowed_hosts(host, port))),
    ]
    if artifacts is not None:
        command += ["--serve-artifacts", "--artifacts-destination", str(artifacts.resolve())]
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
                        raise ServerError(f"mlflow server ended:\n{log.read_text()}") from None
                    if time.monotonic() > deadline:
                        raise ServerError(f"no mlflow server within 60 s: see {log}") from None
                    time.sleep(0.5)
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs: from PATH, else Debian's newest."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3])
    )
    if not debian:
        raise ServerError(
            "PostgreSQL's programs (initdb, pg_ctl) are not installed: `apt-get install "
            "postgresql` on Debian, `conda install postgresql` elsewhere, or give "
            "--store sqlite"
        )
    return debian[-1].parent


def _as_owner(command: list[str], data: Path) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user."""
    if os.geteuid() != 0:
        return command
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError("as root, PostgreSQL runs as the `postgres` user: create it") from None
    shutil.chown(data, "postgres", "postgres")
    return ["runuser", "-u", "postgres", "--", *command]


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ServerError(f"{what} failed ({' '.join(command)}):\n{result.stderr}{result.stdout}")


@contextlib.contextmanager
def postgres(folder: Path, port: int) -> Iterator[str]:
    """PostgreSQL from `folder` (made on first use) on 127.0.0.1:`port`, with the database
    `mlflow`; yields its SQLAlchemy URI and stops it at the end of the block."""
    import psycopg2

    bin_dir = postgres_bin()
    data = folder.resolve()
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "PG_VERSION").exists():
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", DATABASE, "--auth=trust"]
        _run(_as_owner([*initdb, "-E", "UTF8"], data), "initdb")
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
    _run(
        _as_owner([*pg_ctl, "-l", str(data / "server.log"), "-o", options, "start"], data),
        f"PostgreSQL (its log: {data / 'server.log'})",
    )
    try:
        with contextlib.closing(
            psycopg2.connect(host="127.0.0.1", port=port, user=DATABASE, dbname="postgres")
        ) as admin:
            admin.autocommit = True
            with admin.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cursor.fetchone() is None:
                    cursor.execute(f"CREATE DATABASE {DATABASE}")
        yield f"postgresql://{DATABASE}@127.0.0.1:{port}/{DATABASE}"
    finally:
        _run(_as_owner([*pg_ctl, "-m", "fast", "stop"], data), "stopping PostgreSQL")


def serve(folder: Path, store: str, host: str, port: int, pg_port: int, workers: int) -> None:
    """Run the server until SIGINT or SIGTERM: its store and artifacts under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    stopped: list[int] = []  # set from the start: a stop during start-up stops what started
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, f: stopped.append(s))
    with contextlib.ExitStack() as stack:
        if store == "postgresql":
            store_uri = stack.enter_context(postgres(folder / "postgres", pg_port))
        else:
            store_uri = f"sqlite:///{(folder / 'mlflow.db').resolve()}"
        log = folder / "mlflow-server.log"
        stack.enter_context(
            mlflow_server(store_uri, port, log, folder / "artifacts", host=host, workers=workers)
        )
        name = socket.getfqdn() if host not in ("127.0.0.1", "localhost") else "127.0.0.1"
        print(
            f"tracking-server: MLflow on http://{name}:{port} over {store_uri}, artifacts in "
            f"{folder / 'artifacts'}, log {log}; set tracking.uri: http://{name}:{port} in "
            "your config. Ctrl-C (or SIGTERM) stops it.",
            file=sys.stderr,
            flush=True,
        )
        while not stopped:
            signal.pause()

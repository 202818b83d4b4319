"""Opening an MLflow store as many trainings at once do: fail fast on an unreachable server,
a new SQLite store's tables made by one process at a time, an experiment created by two at
once, where a SQLite store's artifacts go, and a check of a run in the store against its
journal."""

from __future__ import annotations

import fcntl
import os
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.journal import Journal, scope_prefix

MLFLOW_ENV = {
    # Fail fast on an unreachable server instead of retrying for minutes inside training.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


_PREPARED: set[str] = set()  # SQLite stores this process has opened once


def mlflow_client(uri: str):  # -> mlflow.tracking.MlflowClient, imported late (slow)
    """A client that fails fast on an unreachable server (`MLFLOW_ENV`); a SQLite store is
    made ready by one process at a time."""
    for key, value in MLFLOW_ENV.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:///") or uri in _PREPARED:
        return MlflowClient(tracking_uri=uri)
    # MLflow creates and migrates a SQLite store's tables when a client first opens it,
    # unguarded: trainings that open a new store at once race ("table ... already exists") and
    # all but one lose MLflow. So the first opening, one process at a time, under a lock file.
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(f"{database.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        client = MlflowClient(tracking_uri=uri)
    _PREPARED.add(uri)
    return client


def experiment_id(client, uri: str, name: str) -> str:
    """The id of the experiment `name`, created if new; another training that creates it at
    the same moment is not an error."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location(uri, name))
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: with a SQLite store, `mlartifacts/<experiment>`
    beside the database file, so that the results folder holds everything (MLflow's default,
    `./mlruns`, is whatever folder the creating process ran in). A server decides for itself."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///")).resolve()
    return (database.parent / "mlartifacts" / experiment).as_uri()


def journal_metrics(records: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """(MLflow key, step) -> value of every metric a journal holds."""
    return {
        (scope_prefix(r["scope"]) + key, r["step"]): value
        for r in records
        if r.get("type") == "metrics"
        for key, value in r["metrics"].items()
    }


def compare_with_journal(client, run_id: str, journal: Journal) -> Counter[str]:
    """How the run's metrics in the store match its journal: counts of the journal's values
    found `once`, `missing`, `more than once`, and stored with an `other value`."""
    expected = journal_metrics(journal.read())
    stored: Counter[tuple[str, int]] = Counter()
    values = {}
    for key in {k for k, _ in expected}:
        for metric in client.get_metric_history(run_id, key):
            stored[(key, metric.step)] += 1
            values[(key, metric.step)] = metric.value
    counts: Counter[str] = Counter()
    for item, value in expected.items():
        found = stored[item]
        counts["once" if found == 1 else "missing" if found == 0 else "more than once"] += 1
        if found and values[item] != value:
            counts["other value"] += 1
    return counts

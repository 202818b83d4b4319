"""Experiment tracking: MLflow on rank 0, behind the journal (pipeline/journal.py) that never
loses a metric.

Every metric goes first to `metrics.jsonl` (append, flush), then to MLflow from a background
thread, so a slow or unreachable tracking server never stalls a training step. If MLflow fails,
training goes on with a warning, and `python -m pipeline sync-mlflow` (also run by the report
stage) later copies into the store whatever it lacks, without duplicates.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError, first_line
from pipeline.journal import Journal, metric_rows, scope_prefix
from pipeline.mlflow_store import experiment_id, mlflow_client

MLFLOW_BATCH = 1000  # metrics per log_batch request: the MLflow REST API's limit


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def dataset_inputs(datasets: list[dict[str, Any]]) -> list[Any]:
    """MLflow DatasetInputs for the journal's dataset records: the shards a run read, which the
    UI's Datasets view shows and run comparison tells apart by digest."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    return [
        DatasetInput(
            Dataset(
                name=d["name"],
                digest=d["digest"],
                source_type="local",
                source=json.dumps({"uri": d["source"]}),
                profile=json.dumps(d["profile"]),
            ),
            tags=[InputTag("mlflow.data.context", d["context"])],
        )
        for d in datasets
    ]


def create_run(
    uri: str, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str]
) -> str:
    from mlflow.entities import Param

    client = mlflow_client(uri)
    run = client.create_run(experiment_id(client, uri, experiment), run_name=run_name, tags=tags)
    params_list = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(params_list), 100):
        client.log_batch(run.info.run_id, params=params_list[i : i + 100])
    return run.info.run_id


GROUP_TAG = "pipeline.group"


def group_parent(uri: str, group: str) -> str:
    """The parent run that a sweep's (or experiments list's) runs nest under, in the MLflow
    experiment named after the group: found by its tag, else created (FINISHED: it holds no
    metrics of its own, only children)."""
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(group)
    if found is not None:
        runs = client.search_runs(
            [found.experiment_id], filter_string=f"tags.`{GROUP_TAG}` = '{group}'", max_results=1
        )
        if runs:
            return runs[0].info.run_id
    run_id = create_run(uri, group, group, {}, {GROUP_TAG: group})
    client.set_terminated(run_id, "FINISHED")
    return run_id


class TrackingStoreError(PipelineError):
    """The MLflow store could not be read or written; the journal still holds every metric."""


@contextmanager
def store_errors(uri: str, journal: Path) -> Iterator[None]:
    """Turn a failure to reach the MLflow store into an error that says what to do."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    try:
        yield
    except (MlflowException, RequestException, OSError) as err:
        raise TrackingStoreError(
            f"MLflow at {uri} failed ({type(err).__name__}: {first_line(err)}). Nothing is lost: "
            f"{journal} holds every metric. Start the tracking server (or fix tracking.uri) "
            "and run this stage again."
        ) from err


def run_exists(uri: str, run_id: str) -> bool:
    """False only when the store answers that the run does not exist; other errors propagate,
    so a server that is down never makes a second copy of a run."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client(uri).get_run(run_id)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


@dataclass
class SyncResult:
    run_id: str
    added: int
    created: bool


def sync_journal(journal: Journal, uri: str) -> SyncResult:
    """Copy into MLflow every journal metric the run lacks; create the run if it never was."""
    records = journal.read()
    run_records = [r for r in records if r.get("type") == "run"]
    if not run_records:
        raise PipelineError(f"{journal.path} has no run record: was training started?")
    with store_errors(uri, journal.path):
        return _sync(journal, uri, records, run_records)


def _sync(
    journal: Journal, uri: str, records: list[dict[str, Any]], run_records: list[dict[str, Any]]
) -> SyncResult:
    from mlflow.entities import Metric

    run_id = journal.run_id()
    created = False
    if run_id is None or not run_exists(uri, run_id):
        first = run_records[0]
        run_id = create_run(
            uri, first["experiment"], first["run_name"], first["params"], first["tags"]
        )
        journal.append({**first, "run_id": run_id, "time_ms": _now_ms()}, sync=True)
        created = True
    client = mlflow_client(uri)
    rows = metric_rows(records)
    present: set[tuple[str, int]] = set()
    for key in {row[0] for row in rows}:
        present |= {(key, m.step) for m in client.get_metric_history(run_id, key)}
    missing: dict[tuple[str, int], Metric] = {}
    for key, value, timestamp, step in rows:
        if (key, step) not in present:
            missing[(key, step)] = Metric(key, value, timestamp, step)  # last value wins
    batch = list(missing.values())
    for i in range(0, len(batch), MLFLOW_BATCH):
        client.log_batch(run_id, metrics=batch[i : i + MLFLOW_BATCH])
    datasets = [d for r in records if r.get("type") == "datasets" for d in r["datasets"]]
    if datasets and not client.get_run(run_id).inputs.dataset_inputs:
        client.log_inputs(run_id, datasets=dataset_inputs(datasets))
    return SyncResult(run_id, len(batch), created)


def _now_ms() -> int:
    return int(time.time() * 1000)


class Tracker:
    """Rank 0's metrics sink: the journal synchronously, MLflow from a background thread."""

    def __init__(
        self,
        journal: Journal,
        uri: str,
        experiment: str,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        run_id: str | None,
    ) -> None:
        self.journal = journal
        self.uri = uri
        self.logged = journal.logged_steps()  # a resumed run does not log a step twice
        self._lock = threading.RLock()
        self._next_step: dict[str, int] = {}  # system-metrics scope -> its next step
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._failed: str | None = None
        known = journal.run_id()
        self.run_id = run_id or known
        if self.run_id is None:
            try:
                self.run_id = create_run(uri, experiment, run_name, params, tags)
            except Exception as err:  # any failure to reach the store
                self._fail(err)
        else:
            self._safe(lambda: self._client().update_run(self.run_id, status="RUNNING"))
        has_record = any(r.get("type") == "run" for r in journal.read())
        if not has_record or (self.run_id is not None and self.run_id != known):
            journal.append(
                {
                    "type": "run",
                    "run_id": self.run_id,
                    "experiment": experiment,
                    "run_name": run_name,
                    "params": params,
                    "tags": tags,
                    "time_ms": _now_ms(),
                },
                sync=True,
            )
        self._thread = threading.Thread(target=self._work, name="mlflow-logger", daemon=True)
        self._thread.start()

    def _client(self):
        return mlflow_client(self.uri)

    def _fail(self, err: Exception) -> None:
        if self._failed is None:
            self._failed = f"{type(err).__name__}: {first_line(err, 200)}"
            print(
                f"warning: MLflow at {self.uri} failed ({self._failed}); training goes on and "
                f"every metric is kept in {self.journal.path}; run `python -m pipeline "
                "sync-mlflow` (or the report stage) to copy them into MLflow later",
                file=sys.stderr,
                flush=True,
            )

    def _safe(self, call: Callable[[], None]) -> None:
        if self._failed is not None or self.run_id is None:
            return
        try:
            call()
        except Exception as err:  # a down server raises connection errors of many kinds
            self._fail(err)

    def _work(self) -> None:
        while (call := self._queue.get()) is not None:
            self._safe(call)

    def log(self, scope: str, step: int, metrics: dict[str, float]) -> None:
        """Thread-safe: the training loop and the system-metrics sampler both log."""
        self.log_many([(scope, step, metrics)])

    def log_many(self, entries: list[tuple[str, int, dict[str, float]]]) -> None:
        """Several (scope, step, metrics) records: the journal gets a line each, MLflow as few
        requests as its batch limit allows (at 128 nodes, every node's system sample of an
        epoch would otherwise be a request of its own)."""
        with self._lock:
            fresh = [e for e in entries if (e[0], e[1]) not in self.logged]
            self.logged.update((scope, step) for scope, step, _ in fresh)
            now = _now_ms()
            records = [
                {"type": "metrics", "scope": scope, "step": step, "time_ms": now, "metrics": m}
                for scope, step, m in fresh
            ]
            if records:
                self.journal.append_many(records, sync=any(s == "epoch" for s, _, _ in fresh))
        if not fresh:
            return

        def send() -> None:
            from mlflow.entities import Metric

            batch = [
                Metric(scope_prefix(scope) + k, float(v), now, step)
                for scope, step, metrics in fresh
                for k, v in metrics.items()
            ]
            for start in range(0, len(batch), MLFLOW_BATCH):
                self._client().log_batch(self.run_id, metrics=batch[start : start + MLFLOW_BATCH])

        self._queue.put(send)

    def set_tag(self, key: str, value: str) -> None:
        self._queue.put(lambda: self._client().set_tag(self.run_id, key, value))

    def log_system(self, scope: str, sample: dict[str, float]) -> None:
        """One system-metrics sample of a node, at the next step of its scope (a resumed run
        goes on counting where the journal left off)."""
        self.log_system_samples([(scope, sample)])

    def log_system_samples(self, samples: list[tuple[str, dict[str, float]]]) -> None:
        """Several nodes' samples (scope, sample), as `log_system` each, in one `log_many`."""
        entries = []
        with self._lock:
            for scope, sample in samples:
                if scope not in self._next_step:  # once per scope, not a scan of every sample
                    done = [step for kind, step in self.logged if kind == scope]
                    self._next_step[scope] = max(done, default=-1) + 1
                entries.append((scope, self._next_step[scope], sample))
                self._next_step[scope] += 1
        self.log_many(entries)

    def log_datasets(self, datasets: list[dict[str, Any]]) -> None:
        """The data the run trains and validates on, once per run (a resumed job skips it)."""
        if any(r.get("type") == "datasets" for r in self.journal.read()):
            return
        self.journal.append({"type": "datasets", "datasets": datasets}, sync=True)
        inputs = dataset_inputs(datasets)
        self._queue.put(lambda: self._client().log_inputs(self.run_id, datasets=inputs))

    def close(self, status: str = "FINISHED", timeout_s: float = 60.0) -> None:
        self._queue.put(lambda: self._client().set_terminated(self.run_id, status))
        self._queue.put(None)
        self._thread.join(timeout_s)

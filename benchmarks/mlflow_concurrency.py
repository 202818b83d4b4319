"""Several trainings logging to one MLflow store at once: what each store loses or delays.

N processes each run the training's own `Tracker` (journal first, MLflow from a background
thread) as a training would, but flat out: iteration metrics every step, an epoch's metrics
every `--steps-per-epoch` steps, one node's system metrics every 10 steps. Each MLflow request
is timed. Afterwards every run in the store is compared with its journal, metric by metric.
Stores: the default SQLite file opened by every process itself, `mlflow server` over that
SQLite file, and `mlflow server` over PostgreSQL (where PostgreSQL's programs are installed).

    python benchmarks/mlflow_concurrency.py [--runs 4] [--steps 300] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.report import write_benchmark_report  # noqa: E402
from pipeline.journal import Journal  # noqa: E402
from pipeline.mlflow_store import compare_with_journal, journal_metrics  # noqa: E402
from pipeline.ports import free_port  # noqa: E402
from pipeline.tracking import Tracker, mlflow_client  # noqa: E402

EXPERIMENT = "concurrency"


def one_training(uri: str, journal: Path, name: str, args, out) -> None:
    """A training's logging, timed per MLflow request; (name, latencies, warning) to `out`."""
    from mlflow import MlflowClient

    latencies: list[float] = []
    original = MlflowClient.log_batch

    def timed(self, *a, **k):
        start = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            latencies.append(time.perf_counter() - start)

    MlflowClient.log_batch = timed  # measures the real call; changes nothing it does
    warnings: list[str] = []
    original_fail = Tracker._fail

    def noted(self, err):
        warnings.append(f"{type(err).__name__}: {err}"[:300])
        original_fail(self, err)

    Tracker._fail = noted
    tracker = Tracker(Journal(journal), uri, EXPERIMENT, name, {"run": name}, {}, None)
    for step in range(args.steps):
        tracker.log("iteration", step, {"train_loss": 1.0 / (step + 1), "lr": 0.1, "epoch": step})
        if step % 10 == 9:
            tracker.log_system("system/node_0", {"cpu_percent": 50.0, "memory_gb": 1.5})
        if step % args.steps_per_epoch == args.steps_per_epoch - 1:
            metrics = {f"val_{k}": float(step) for k in ("loss", "top1", "top5", "noise_scale")}
            tracker.log("epoch", step // args.steps_per_epoch, metrics)
    tracker.close()
    out.put((name, latencies, warnings, tracker.run_id))


def run_store(label: str, uri: str, work: Path, args) -> dict:
    context = mp.get_context("spawn")
    out = context.Queue()
    journals = {f"{label}-{i}": work / f"{label}-run{i}.jsonl" for i in range(args.runs)}
    started = time.perf_counter()
    procs = [
        context.Process(target=one_training, args=(uri, journal, name, args, out))
        for name, journal in journals.items()
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - started
    latencies = sorted(x for _, lat, _, _ in results for x in lat)
    counts: Counter[str] = Counter()
    for name, _, _, run_id in results:
        if run_id is None:  # the run was never made: every value is missing
            counts["missing"] += len(journal_metrics(Journal(journals[name]).read()))
        else:
            counts += compare_with_journal(mlflow_client(uri), run_id, Journal(journals[name]))
    warnings = [w for _, _, ws, _ in results for w in ws]
    row = {
        "store": label,
        "runs": args.runs,
        "requests": len(latencies),
        "wall_s": round(wall, 2),
        "request_ms_median": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "request_ms_p99": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1)
        if latencies
        else None,
        "request_ms_max": round(1000 * latencies[-1], 1) if latencies else None,
        "metric_values": sum(counts.values()) - counts["other value"],
        **{k.replace(" ", "_"): counts[k] for k in ("once", "missing", "more than once")},
        "other_value": counts["other value"],
        "runs_failed_over_to_journal": len(warnings),
        "warnings": warnings,
    }
    print(
        f"{label}: {row['requests']} requests in {wall:.1f} s; median {row['request_ms_median']} "
        f"ms, p99 {row['request_ms_p99']} ms, max {row['request_ms_max']} ms; metric values "
        f"once {row['once']}, missing {row['missing']}, twice+ {row['more_than_once']}; "
        f"{len(warnings)} runs gave up on MLflow",
        flush=True,
    )
    return row


def over_postgresql(work: Path, args) -> list[dict]:
    """The run on `mlflow server` (4 workers) over PostgreSQL; none where it is not installed."""
    from pipeline import tracking_server

    with contextlib.ExitStack() as stack:
        try:
            store = stack.enter_context(tracking_server.postgres(work / "pg", free_port()))
        except tracking_server.ServerError as err:
            print(f"PostgreSQL: skipped ({err})")
            return []
        log = work / "pg-server.log"
        url = stack.enter_context(tracking_server.mlflow_server(store, free_port(), log, workers=4))
        return [run_store("server over postgresql", url, work, args)]


def markdown(report: dict) -> str:
    lines = [
        "| store | runs at once | requests | median ms | p99 ms | max ms | values once | "
        "missing | twice or more | runs that gave up on MLflow |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['store']} | {r['runs']} | {r['requests']} | {r['request_ms_median']} | "
            f"{r['request_ms_p99']} | {r['request_ms_max']} | {r['once']} | {r['missing']} | "
            f"{r['more_than_once']} | {r['runs_failed_over_to_journal']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--steps-per-epoch", type=int, default=30)
    parser.add_argument(
        "--stores", default="sqlite-file,sqlite-server,postgresql-server", help="comma-separated"
    )
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=PROJECT / "results" / "bench")
    args = parser.parse_args()
    from pipeline import tracking_server

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # PostgreSQL, run as its own user under root, must reach its folder
        stores = args.stores.split(",")
        results = []
        if "sqlite-file" in stores:
            results.append(run_store("sqlite file", f"sqlite:///{work / 'direct.db'}", work, args))
        if "sqlite-server" in stores:
            with tracking_server.mlflow_server(
                f"sqlite:///{work / 'served.db'}", free_port(), work / "sqlite-server.log"
            ) as url:
                results.append(run_store("server over sqlite", url, work, args))
        if "postgresql-server" in stores:
            results += over_postgresql(work, args)
    report = write_benchmark_report(
        args.out / "mlflow_concurrency.json", "mlflow_concurrency", args, results=results
    )
    print(markdown(report))


if __name__ == "__main__":
    main()

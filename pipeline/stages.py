"""The stages of the pipeline, one function each: what `python -m pipeline <stage>` and the
Snakemake rule of the same name run.

Each is a thin layer over the data, training, tracking and report code: it calls them and says
in a few lines what happened, with the counts a person checks (files found, rows written and
quarantined, accuracy reached).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pipeline.config import Config, ConfigError
from pipeline.errors import DataStageError
from pipeline.paths import SPLITS, ComparisonPaths, ReportPaths, RunPaths


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def demo_data(config: Config) -> dict[str, int]:
    """Write scikit-learn's digits as an ImageNet-style JPEG tree (the embedded demo)."""
    from pipeline.data.demo import write_demo_tree

    counts = write_demo_tree(config)
    say(f"demo-data: wrote {counts['train']} train and {counts['val']} val JPEGs")
    return counts


def index(config: Config) -> dict[str, Any]:
    """Find every image and its label: the manifests and classes.json."""
    from pipeline.data.manifest import write_manifest

    summary = write_manifest(config)
    how = "detected" if summary["layout_detected"] else "configured"
    say(
        f"index: {summary['root']} is a {summary['layout']} layout ({how}); "
        f"val labels from {summary['val_labels']}"
    )
    say(f"index: {summary['num_classes']} classes ({summary['class_source']})")
    for split, counts in summary["splits"].items():
        extra = (
            f", {counts['unlabelled']} without a usable label (quarantined by the shard stage)"
            if counts["unlabelled"]
            else ""
        )
        say(f"index: {split}: {counts['files']} image files{extra}")
    ignored = summary["ignored_files"]
    if ignored:
        shown = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
        say(f"index: ignored {len(ignored)} entries that are not image files: {shown}")
    return summary


def _say_shard(stats: dict[str, Any]) -> None:
    actions = stats["actions"]
    done = ", ".join(f"{n} {what}" for what, n in actions.items()) or "nothing written"
    say(
        f"shard {Path(stats['file']).stem}: {stats['manifest_rows']} manifest rows = "
        f"{stats['rows']} written + {len(stats['quarantined'])} quarantined; {done}"
    )
    for kind, shown in stats["examples"].items():
        more = actions[kind] - len(shown)
        say(f"  {kind}, e.g. " + "; ".join(shown) + (f" (+{more} more)" if more else ""))


def shard(config: Config, split: str, number: int) -> dict[str, Any]:
    """Build one Arrow shard (Snakemake runs one job per shard)."""
    from pipeline.data.sharding import build_shard

    stats = build_shard(config, split, number)
    _say_shard(stats)
    return stats


def all_shards(config: Config, jobs: int) -> dict[str, Any]:
    """Every shard of both splits in `jobs` processes, then the shard index (by hand)."""
    from pipeline.cancel import init_worker, run_in_worker, stop_children
    from pipeline.data.sharding import build_shard

    tasks = [(s, i) for s in SPLITS for i in range(getattr(config.data.num_shards, s))]
    if jobs <= 1:
        for split, number in tasks:
            _say_shard(build_shard(config, split, number))
    else:
        with ProcessPoolExecutor(max_workers=jobs, initializer=init_worker) as pool:
            futures = [pool.submit(run_in_worker, build_shard, config, s, i) for s, i in tasks]
            try:
                for future in futures:
                    _say_shard(future.result())
            except BaseException as err:  # a failed shard or SIGTERM: stop the others now
                pool.shutdown(wait=False, cancel_futures=True)
                stop_children()
                if isinstance(err, BrokenProcessPool):
                    raise DataStageError(
                        "a shard process died without a result (killed by a signal or out of "
                        "memory): see the messages above, then rerun"
                    ) from None
                raise
    return shard_index(config)


def shard_index(config: Config) -> dict[str, Any]:
    """Gather the shards' stats into index.json per split and one quarantine.csv."""
    from pipeline.data.sharding import write_shard_index

    totals = write_shard_index(config)
    for split, t in totals.items():
        say(
            f"shard-index: {split}: {t['manifest_rows']} = {t['rows']} "
            f"+ {t['quarantined']} quarantined"
        )
    return totals


def verify(config: Config) -> list[str]:
    """Re-check every shard against index.json; the problems found (none when all match)."""
    from pipeline.data.sharding import verify_shards

    problems, counts = verify_shards(config)
    for problem in problems:
        say(f"verify: FAILED: {problem}")
    if not problems:
        for split, c in counts.items():
            say(f"verify: {split}: {c['num_shards']} shards, {c['rows']} rows: ok")
    return problems


def train(config: Config, fresh: bool = False) -> dict[str, Any]:
    """Submit the training job through submitit and wait; resume or re-attach when possible."""
    from pipeline.launch import submit_and_wait

    summary = submit_and_wait(config, fresh=fresh)
    final = summary.get("final", {})
    if final:
        say(
            f"train: done: val_top1 {100 * final['val_top1']:.2f} %, "
            f"val_top5 {100 * final['val_top5']:.2f} % after {summary['epochs']} epochs "
            f"({summary['wall_time_s']:.0f} s); weights in {summary['final_weights']}"
        )
    return summary


def sync_mlflow(config: Config) -> None:
    """Copy into MLflow whatever the run's journal holds and the store lacks."""
    from pipeline.tracking import Journal, sync_journal

    journal = Journal(RunPaths.of(config).journal)
    if not journal.path.is_file():
        raise ConfigError(f"{journal.path} not found: nothing to sync (has training run?)")
    result = sync_journal(journal, config.tracking_uri)
    made = " (created: the run did not exist in the store)" if result.created else ""
    say(f"sync-mlflow: run {result.run_id}{made}: {result.added} metrics added")


def report(config: Config) -> dict[str, Any]:
    """metrics.csv, curves.png, summary.json and report.md of one experiment, from MLflow."""
    from pipeline.report import write_report

    summary = write_report(config)
    say(
        f"report: {ReportPaths.of(config).root}: final val_top1 "
        f"{100 * summary['final_val_top1']:.2f} % (best {100 * summary['best_val_top1']:.2f} %)"
    )
    return summary


def mlflow_group(config: Config, out: Path) -> str | None:
    """The parent run of the config's experiments in MLflow, made once before they train (so
    that training jobs started together do not each make one); its id into `out`. An
    unreachable store is a warning: training must not wait for MLflow."""
    from pipeline import atomic
    from pipeline.tracking import group_parent

    try:
        run_id = group_parent(config.tracking_uri, config.experiment)
        say(f"mlflow-group: runs of {config.experiment} nest under MLflow run {run_id}")
    except Exception as err:  # the store is down
        run_id = None
        say(
            f"mlflow-group: warning: MLflow at {config.tracking_uri} failed ({err}); the runs "
            "will not be nested"
        )
    atomic.write_json(out, {"group": config.experiment, "parent_run_id": run_id})
    return run_id


def evaluate(config: Config, checkpoint: Path | None = None) -> dict[str, Any]:
    """Single-crop top-1/top-5 of a checkpoint (default: final.pt) on the val shards, at the
    config's val_resize / image_size: into the report folder and the run's MLflow metrics."""
    import torch

    from pipeline import atomic
    from pipeline.tracking import mlflow_client, store_errors
    from pipeline.train.evaluate import evaluate_checkpoint

    run = RunPaths.of(config)
    path = checkpoint or run.final
    if not path.is_file():
        raise ConfigError(f"evaluate: {path} not found; train first, or pass --checkpoint FILE")
    d = config.data
    state = torch.load(path, map_location="cpu", weights_only=True)
    metrics = evaluate_checkpoint(config, state)
    result = {
        "checkpoint": str(path),
        "val_resize": d.val_resize,
        "image_size": d.image_size,
        **{key.replace("val_", ""): value for key, value in metrics.items()},
    }
    run_id = state.get("mlflow_run_id") or state.get("summary", {}).get("mlflow_run_id")
    out = ReportPaths.of(config).evaluation(path.stem, d.val_resize, d.image_size)
    atomic.write_json(out, {**result, "mlflow_run_id": run_id})
    if run_id:
        prefix = f"eval/{path.stem}/r{d.val_resize}-c{d.image_size}"
        with store_errors(config.tracking_uri, run.journal):
            client = mlflow_client(config.tracking_uri)
            for key in ("top1", "top5", "loss"):
                client.log_metric(run_id, f"{prefix}/{key}", result[key])
    say(
        f"evaluate: {path.name} at {d.val_resize}/{d.image_size}: top-1 "
        f"{100 * result['top1']:.2f} %, top-5 {100 * result['top5']:.2f} % ({out})"
    )
    return result


def compare(config: Config, summaries: Iterable[Path] | None = None) -> None:
    """summary.md and summary.png over several experiments' reports."""
    from pipeline.compare import write_comparison

    write_comparison(config, None if summaries is None else list(summaries))
    say(f"compare: wrote {ComparisonPaths.of(config).markdown}")

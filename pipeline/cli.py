"""`python -m pipeline <stage> --config FILE [--set dotted.key=value ...]`.

One subcommand per stage; each parses its arguments, loads the config and calls the stage.
Snakemake rules call exactly these commands, so any stage can be re-run by hand.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.config import SCHEMA_PATH, Config, ConfigError, load_config, schema_text
from pipeline.errors import PipelineError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="YAML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one dotted key, e.g. --set data.max_side=400 (repeatable)",
    )


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from pipeline.data.demo import write_demo_tree

    counts = write_demo_tree(_config(args))
    print(
        f"demo-data: wrote {counts['train']} train and {counts['val']} val JPEGs", file=sys.stderr
    )
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from pipeline.data.stages import run_index

    run_index(_config(args))
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from pipeline.data.stages import run_all_shards, run_shard

    config = _config(args)
    if (args.split is None) != (args.shard is None):
        raise ConfigError("give both --split and --shard to build one shard, or neither for all")
    if args.split is None:
        run_all_shards(config, jobs=args.jobs)
    else:
        run_shard(config, args.split, args.shard)
    return 0


def cmd_shard_index(args: argparse.Namespace) -> int:
    from pipeline.data.stages import run_shard_index

    run_shard_index(_config(args))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.data.stages import run_verify

    problems = run_verify(_config(args))
    for problem in problems:
        print(f"verify: FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.launch import run_train

    summary = run_train(_config(args), fresh=args.fresh)
    final = summary.get("final", {})
    if final:
        print(
            f"train: done: val_top1 {100 * final['val_top1']:.2f} %, "
            f"val_top5 {100 * final['val_top5']:.2f} % after {summary['epochs']} epochs "
            f"({summary['wall_time_s']:.0f} s); weights in {summary['final_weights']}",
            file=sys.stderr,
        )
    return 0


def cmd_sync_mlflow(args: argparse.Namespace) -> int:
    from pipeline.paths import RunPaths
    from pipeline.tracking import Journal, sync_journal

    config = _config(args)
    journal = Journal(RunPaths.of(config).journal)
    if not journal.path.is_file():
        raise ConfigError(f"{journal.path} not found: nothing to sync (has training run?)")
    result = sync_journal(journal, config.tracking_uri)
    made = " (created: the run did not exist in the store)" if result.created else ""
    print(f"sync-mlflow: run {result.run_id}{made}: {result.added} metrics added", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.paths import ReportPaths
    from pipeline.report import run_report

    config = _config(args)
    summary = run_report(config)
    print(
        f"report: {ReportPaths.of(config).root}: final val_top1 "
        f"{100 * summary['final_val_top1']:.2f} % (best {100 * summary['best_val_top1']:.2f} %)",
        file=sys.stderr,
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.paths import ComparisonPaths
    from pipeline.report import run_compare

    config = _config(args)
    run_compare(config)
    print(f"compare: wrote {ComparisonPaths.of(config).markdown}", file=sys.stderr)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    text = schema_text()
    if args.write:
        SCHEMA_PATH.write_text(text)
        print(f"wrote {SCHEMA_PATH}", file=sys.stderr)
    elif args.check:
        if not SCHEMA_PATH.is_file() or SCHEMA_PATH.read_text() != text:
            print(
                f"{SCHEMA_PATH} is stale: run `python -m pipeline schema --write`", file=sys.stderr
            )
            return 1
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def stage(name: str, func: Callable[[argparse.Namespace], int], text: str):
        p = sub.add_parser(name, help=text, description=text)
        p.set_defaults(func=func)
        return p

    _add_config_args(stage("demo-data", cmd_demo_data, "write the embedded digits demo tree"))
    _add_config_args(stage("index", cmd_index, "find images and labels -> manifest parquet"))
    p = stage("shard", cmd_shard, "write Arrow shards (one with --split/--shard, else all)")
    _add_config_args(p)
    p.add_argument("--split", choices=["train", "val"])
    p.add_argument("--shard", type=int, metavar="I", help="shard number, from 0")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes (all shards)")
    _add_config_args(stage("shard-index", cmd_shard_index, "gather index.json, quarantine.csv"))
    _add_config_args(stage("verify", cmd_verify, "re-check every shard against index.json"))
    p = stage("train", cmd_train, "train through submitit; resume or re-attach when possible")
    _add_config_args(p)
    p.add_argument("--fresh", action="store_true", help="start over (the old run is kept aside)")
    _add_config_args(stage("sync-mlflow", cmd_sync_mlflow, "copy journal metrics into MLflow"))
    _add_config_args(stage("report", cmd_report, "metrics.csv, curves.png, report.md from MLflow"))
    _add_config_args(stage("compare", cmd_compare, "summary.md/png over the config's experiments"))
    p = stage("schema", cmd_schema, "print, write or check the JSON schema of the config")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {SCHEMA_PATH.name}")
    group.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PipelineError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

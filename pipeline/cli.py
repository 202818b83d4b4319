"""`python -m pipeline <stage> --config FILE [--set dotted.key=value ...]`.

One subcommand per stage; each parses its arguments, loads the config and calls the stage in
pipeline/stages.py. Snakemake rules call exactly these commands, so any stage can be re-run by
hand.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from pipeline import atomic, cancel, stages
from pipeline.config import Config, ConfigError
from pipeline.config_files import SCHEMA_PATH, load_config, schema_text
from pipeline.errors import PipelineError, file_fault_line


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="YAML config file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override dotted keys, e.g. --set data.max_side=400 data.jpeg_quality=80",
    )


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def cmd_demo_data(args: argparse.Namespace) -> int:
    stages.demo_data(_config(args))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    stages.index(_config(args))
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    config = _config(args)
    if (args.split is None) != (args.shard is None):
        raise ConfigError("give both --split and --shard to build one shard, or neither for all")
    if args.split is None:
        stages.all_shards(config, jobs=args.jobs)
    else:
        stages.shard(config, args.split, args.shard)
    return 0


def cmd_shard_index(args: argparse.Namespace) -> int:
    stages.shard_index(_config(args))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    return 1 if stages.verify(_config(args)) else 0


def cmd_train(args: argparse.Namespace) -> int:
    stages.train(_config(args), fresh=args.fresh)
    return 0


def cmd_sync_mlflow(args: argparse.Namespace) -> int:
    stages.sync_mlflow(_config(args))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    stages.report(_config(args))
    return 0


def cmd_mlflow_group(args: argparse.Namespace) -> int:
    stages.mlflow_group(_config(args), args.out)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    stages.evaluate(_config(args), args.checkpoint)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    stages.compare(_config(args), args.summaries)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline import plan

    if args.images_per_s is None:
        images_per_s, source = plan.GPUS[args.gpu]
    else:
        images_per_s, source = args.images_per_s, "given (--images-per-s)"
    parameters, parameter_source = args.parameters, "given (--parameters)"
    if parameters is None:
        import torchvision

        model = torchvision.models.get_model(args.arch)
        parameters = sum(p.numel() for p in model.parameters())
        parameter_source = f"torchvision {args.arch}"
    network, network_source = plan.NETWORKS[args.network]
    node, node_source = plan.NODE_LINKS[args.node_link]
    inputs = plan.Inputs(
        gpus=args.gpus,
        batch_per_gpu=args.batch,
        images_per_s_per_gpu=images_per_s,
        parameters=parameters,
        allreduce_dtype=args.dtype,
        gpus_per_node=args.gpus_per_node,
        network_bytes_per_s=network,
        nics_per_node=args.nics,
        node_bytes_per_s=node,
        latency_s=args.latency_us * 1e-6,
        overlap=args.overlap,
        bandwidth_efficiency=args.bandwidth_efficiency,
        epochs=args.epochs,
        images=args.images,
    )
    prediction = plan.predict(inputs)
    print(plan.describe(inputs, prediction))
    print("Sources:")
    print(f"  per-GPU throughput {images_per_s:g} img/s: {source}")
    print(f"  {parameters:,} parameters: {parameter_source}")
    print(f"  network {args.network}: {network_source}")
    print(f"  inside a node {args.node_link}: {node_source}")
    if args.check_paper:
        check = plan.check_against_paper()
        print("Check against the paper (1,024 P100 PCIe, 32 images each, FDR InfiniBand, fp16):")
        print(
            f"  at rated link speed: {check['rated_time_s']:.0f} s, "
            f"{100 * check['rated_efficiency']:.0f} % efficiency (an optimistic bound)"
        )
        print(
            f"  the paper: about {check['paper_time_s']:.0f} s, "
            f"about {100 * check['paper_efficiency']:.0f} %"
        )
        print(
            f"  the paper's time needs {100 * check['bandwidth_efficiency_matching_paper']:.0f}"
            f" % of rated bandwidth, which gives {100 * check['matched_efficiency']:.0f} %"
        )
    if args.json is not None:
        record = {"inputs": asdict(inputs), "prediction": asdict(prediction)}
        if args.check_paper:
            record["check_against_paper"] = check
        atomic.write_json(args.json, record)
    return 0


def cmd_tracking_server(args: argparse.Namespace) -> int:
    from pipeline.tracking_server import serve

    serve(args.folder, args.store, args.host, args.port, args.pg_port, args.workers)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """The JSON schema and config/README.md, both generated from pipeline/config.py."""
    from pipeline.config_reference import REFERENCE_PATH, reference_text

    generated = {SCHEMA_PATH: schema_text(), REFERENCE_PATH: reference_text()}
    if args.write:
        for path, text in generated.items():
            path.write_text(text)
            print(f"wrote {path}", file=sys.stderr)
    elif args.check:
        stale = [p for p, text in generated.items() if not p.is_file() or p.read_text() != text]
        for path in stale:
            print(f"{path} is stale: run `python -m pipeline schema --write`", file=sys.stderr)
        return 1 if stale else 0
    else:
        sys.stdout.write(generated[SCHEMA_PATH])
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
    p = stage("mlflow-group", cmd_mlflow_group, "the MLflow parent run of a sweep's runs")
    _add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="where to write its run id (JSON)")
    p = stage("evaluate", cmd_evaluate, "top-1/top-5 of a checkpoint on the val shards")
    _add_config_args(p)
    p.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="final.pt (the default) or a periodic checkpoint; the resolution comes from "
        "--set data.val_resize=N data.image_size=M",
    )
    p = stage("compare", cmd_compare, "summary.md/png over the config's experiments")
    _add_config_args(p)
    p.add_argument(
        "--summaries",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="compare exactly these summary.json files (the Snakemake rule passes its inputs) "
        "instead of every experiment of the config",
    )
    p = sub.add_parser("plan", help="predict time per iteration and time to train on N GPUs")
    p.set_defaults(func=cmd_plan)
    p.add_argument("--gpus", type=int, default=1024)
    p.add_argument("--batch", type=int, default=32, help="images per GPU per iteration")
    p.add_argument("--gpu", choices=["p100-pcie", "a100"], default="p100-pcie")
    p.add_argument("--images-per-s", type=float, help="measured per-GPU throughput instead")
    p.add_argument("--arch", default="resnet50", help="torchvision model for the parameter count")
    p.add_argument("--parameters", type=int, help="parameter count instead of --arch")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp16")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--network", choices=["fdr-ib", "edr-ib", "hdr-ib", "100gbe"], default="fdr-ib")
    p.add_argument("--nics", type=int, default=1, help="network adapters per node")
    p.add_argument("--node-link", choices=["pcie3", "nvlink3"], default="pcie3")
    p.add_argument("--latency-us", type=float, default=5.0, help="per ring step")
    p.add_argument("--overlap", type=float, default=0.0, help="share of backward hiding comms")
    p.add_argument("--bandwidth-efficiency", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("--images", type=int, default=1_281_167, help="training images")
    p.add_argument("--check-paper", action="store_true", help="compare with the paper's run")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    p = stage(
        "tracking-server",
        cmd_tracking_server,
        "an MLflow server for many jobs: PostgreSQL store, proxied artifacts, until Ctrl-C",
    )
    p.add_argument("--folder", type=Path, required=True, help="its store and artifacts")
    p.add_argument("--store", choices=["postgresql", "sqlite"], default="postgresql")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--pg-port", type=int, default=5433, help="PostgreSQL's, on 127.0.0.1")
    p.add_argument("--workers", type=int, default=4, help="the MLflow server's processes")
    p = stage("schema", cmd_schema, "print, write or check the config's schema and reference")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--write", action="store_true", help=f"write {SCHEMA_PATH.name} and config/README.md"
    )
    group.add_argument("--check", action="store_true", help="exit 1 if either is stale")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A file name that is not UTF-8 prints as \xNN rather than ending the stage.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="backslashreplace")
    if args.stage != "train":  # train's job handles its own signals (checkpoint, requeue)
        cancel.unwind_on_sigterm()
    try:
        return args.func(args)
    except (PipelineError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {file_fault_line(args.stage, err)}", file=sys.stderr)
        return 2
    except cancel.Cancelled as stop:
        print(f"{args.stage}: {stop}; its temporary files are removed", file=sys.stderr)
        cancel.die_of(stop.signum)
        raise  # not reached: the signal ends the process

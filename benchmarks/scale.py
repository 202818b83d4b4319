"""What indexing, sharding, planning, verifying, loading and checkpointing cost as the dataset
grows to ImageNet (1,281,167 train files in 1,000 classes, 50,000 val) and the world size to
1,024, measured on inputs generated here (docs/scaling.md).

* index: devkit-style folders (train/<wnid>/, a flat val/ with the devkit's ground truth) and
  the original tar-of-tars, N train files hard-linked (or tar members copied) from a pool of
  small distinct JPEGs: the index stage reads names and sizes, never pixels.
* shard: one shard job of ImageNet-sized photographs (the ILSVRC2012 sample under
  ../shared/data when present, else drawn ones), rows per job as ImageNet's shard counts give.
* snakemake: `snakemake -n` and the time until the first job starts, for 256 to 4,096 shards.
* verify: MB/s of the verify stage's checks over that shard (file in the page cache).
* loader: the train sampler at 1.28 M rows for world sizes up to 1,024 (exact cover checked
  for every rank), and opening the dataset over up to 1,024 shard files per worker.
* checkpoint: ResNet-50 with the hybrid optimizer's state and every rank's part, for world
  sizes up to 1,024: bytes, save and load time.

Each quantity is fitted as c x size^k over the sizes run; k is its growth, and the fit gives the
value at ImageNet's size or 1,024 workers, labelled as extrapolated where that was not run.

    python benchmarks/scale.py                   # make bench-scale: the full sizes (~7 min)
    python benchmarks/scale.py --smoke           # small sizes, seconds (the test suite runs it)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.report import write_benchmark_report  # noqa: E402
from benchmarks.scale_data import bench_index, bench_shard, bench_snakemake  # noqa: E402
from benchmarks.scale_inputs import IMAGENET_TRAIN, IMAGENET_VAL, Row, growth_row  # noqa: E402
from benchmarks.scale_training import (  # noqa: E402
    bench_checkpoint,
    bench_open,
    bench_sampler,
    bench_tracking,
)

SECTIONS = ("index", "shard", "snakemake", "sampler", "open", "checkpoint", "tracking")

# --------------------------------------------------------------------------------------------


def summary_rows(results: dict[str, Any]) -> list[Row]:
    rows = []
    for layout in ("devkit", "tar"):
        points = [p for p in results["index"] if p["layout"] == layout]
        n = [float(p["train_files"]) for p in points]
        for key, name, unit in (
            ("index_s", f"index ({layout}): wall time", "s"),
            ("peak_mb", f"index ({layout}): peak memory", "MB"),
            ("manifest_mb", f"index ({layout}): manifest size", "MB"),
        ):
            values = [p[key] for p in points]
            rows.append(growth_row(name, unit, n, values, IMAGENET_TRAIN, "ImageNet"))
    sm = results["snakemake"]
    shards = [float(p["train_shards"]) for p in sm]
    rows.append(
        growth_row("snakemake -n", "s", shards, [p["dry_run_s"] for p in sm], 1024, "1,024 shards")
    )
    first = [p["first_job_s"] or 0.0 for p in sm]
    rows.append(
        growth_row("snakemake: first job starts after", "s", shards, first, 1024, "1,024 shards")
    )
    sampler = results["sampler"]
    w = [float(p["world_size"]) for p in sampler]
    rows.append(growth_row(
        "train sampler: one rank's epoch", "s", w, [p["per_rank_epoch_s"] for p in sampler],
        1024, "1,024 ranks",
    ))  # fmt: skip
    opened = results["open"]
    s = [float(p["shards"]) for p in opened]
    for key, name, unit in (
        ("worker_open_s", "dataset: open in a worker", "s"),
        ("worker_private_mb", "dataset: private memory per worker", "MB"),
        ("worker_file_pages_mb", "dataset: shard pages mapped per worker", "MB"),
        ("worker_fds", "dataset: file descriptors per worker", "fds"),
        ("main_s", "dataset: checks in the main process", "s"),
    ):
        values = [max(float(p[key]), 1e-6) for p in opened]
        rows.append(growth_row(name, unit, s, values, 1024, "1,024 shards"))
    for variant in ("rng only", "rng + BN buffers"):
        points = [p for p in results["checkpoint"] if p["variant"] == variant]
        w = [float(p["world_size"]) for p in points]
        for key, name, unit in (
            ("checkpoint_mb", "checkpoint size", "MB"),
            ("save_s", "checkpoint save", "s"),
            ("load_s", "checkpoint load (each rank)", "s"),
        ):
            rows.append(growth_row(
                f"{name} ({variant})", unit, w, [p[key] for p in points], 1024, "1,024 ranks"
            ))  # fmt: skip
    tracking = results["tracking"]
    w = [float(p["world_size"]) for p in tracking]
    for key, name, unit in (
        ("journal_kb_per_epoch", "journal written per epoch", "kB"),
        ("mlflow_requests_per_epoch", "MLflow requests per epoch", "req"),
        ("sqlite_seconds_per_epoch", "MLflow (SQLite) logging time per epoch", "s"),
    ):
        values = [float(p[key]) for p in tracking]
        rows.append(growth_row(name, unit, w, values, 1024, "1,024 ranks"))
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"\n{'quantity':52} {'unit':>5} {'k':>6} {'k top':>6} {'at target':>10}  target")
    for r in rows:
        label = r["target_label"] + (" (extrapolated)" if r["extrapolated"] else "")
        print(
            f"{r['quantity']:52} {r['unit']:>5} {r['growth_exponent']:>6.2f} "
            f"{r['growth_exponent_largest']:>6.2f} {r['at_target']:>10.4g}  {label}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="small sizes, for the tests")
    parser.add_argument("--out", type=Path, default=PROJECT / "results" / "bench" / "scale.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: tmp)")
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, help="only these; the rest from --out"
    )
    args = parser.parse_args()
    if args.smoke:
        sizes, n_val, classes, shard_files, shard_count = [500, 2000], 200, 50, 2000, 50
        sm_counts, worlds, open_counts, ckpt_worlds, arch = (
            [4, 16],
            [1, 4, 16],
            [4, 16],
            [1, 4],
            "resnet18",
        )
        sampler_rows, node_counts = 20_000, [1, 2]
    else:
        sizes, n_val, classes = [10_000, 100_000, 300_000, IMAGENET_TRAIN], IMAGENET_VAL, 1000
        # the shard count config/experiments/imagenet-*.yaml set: about 5,000 rows per job
        shard_files, shard_count = IMAGENET_TRAIN, 256
        sm_counts, worlds, open_counts = [256, 1024, 4096], [8, 64, 256, 1024], [64, 256, 1024]
        ckpt_worlds, arch, sampler_rows = [8, 64, 256, 1024], "resnet50", IMAGENET_TRAIN
        node_counts = [1, 16, 128]
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=args.work))
    try:
        results: dict[str, Any] = {}
        if args.sections is not None:  # re-measure some sections, keep the others from --out
            results = {k: v for k, v in json.loads(args.out.read_text()).items() if k in SECTIONS}
        sections: dict[str, Callable[[], Any]] = {
            "index": lambda: bench_index(work, sizes, n_val, classes),
            "shard": lambda: bench_shard(work, shard_files, shard_count),
            "snakemake": lambda: bench_snakemake(work, sm_counts),
            "sampler": lambda: bench_sampler(sampler_rows, worlds, 32),
            "open": lambda: bench_open(work, open_counts, 1251 if not args.smoke else 50),
            "checkpoint": lambda: bench_checkpoint(work, ckpt_worlds, arch),
            "tracking": lambda: bench_tracking(work, node_counts, 2 if args.smoke else 3),
        }
        for name in SECTIONS if args.sections is None else args.sections:
            print(f"== {name}", flush=True)
            started = time.perf_counter()
            results[name] = sections[name]()
            print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)
        rows = summary_rows(results)
        print_table(rows)
        write_benchmark_report(args.out, "scale", args, summary=rows, **results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

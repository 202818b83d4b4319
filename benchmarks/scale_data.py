"""benchmarks/scale.py's sections on the data stages: index (folders and tars), one shard job
and verify, and Snakemake's planning."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.scale_inputs import (  # noqa: E402
    IMAGENET_CLASSES,
    REAL_DATA,
    Row,
    devkit_tree,
    photographs,
    pipeline_stage,
    run_measured,
    small_jpegs,
    tar_tree,
    write_config,
)

# --------------------------------------------------------------------------------------------
# Sections


def bench_index(work: Path, sizes: list[int], n_val: int, classes: int) -> list[Row]:
    pool_bytes = small_jpegs(256)
    pool_dir = work / "pool"
    pool_dir.mkdir()
    pool = []
    for i, data in enumerate(pool_bytes):
        (pool_dir / f"{i}.JPEG").write_bytes(data)
        pool.append(pool_dir / f"{i}.JPEG")
    points = []
    for n in sizes:
        for layout in ("devkit", "tar"):
            folder = work / f"index-{layout}-{n}"
            folder.mkdir()
            made = time.perf_counter()
            if layout == "devkit":
                root = devkit_tree(folder / "images", pool, n, n_val, classes)
            else:
                root = tar_tree(folder / "images", pool_bytes, n, n_val, classes)
            made = time.perf_counter() - made
            config = write_config(folder, root, layout=layout)
            seconds, peak_mb = pipeline_stage("index", "--config", str(config), log=folder / "log")
            manifests = list((folder / "results").rglob("manifest/*.parquet"))
            point = {
                "layout": layout,
                "train_files": n,
                "val_files": n_val,
                "generate_s": round(made, 2),
                "index_s": round(seconds, 2),
                "peak_mb": round(peak_mb, 1),
                "manifest_mb": round(sum(p.stat().st_size for p in manifests) / 1e6, 3),
            }
            print(json.dumps(point), flush=True)
            points.append(point)
            shutil.rmtree(folder)
    return points


def bench_shard(work: Path, train_files: int, shards: int) -> dict[str, Any]:
    """Shard 0 of `shards` over a manifest of `train_files` ImageNet-sized photographs (every
    job reads the whole manifest), then `verify` over it."""
    from pipeline.config_files import load_config
    from pipeline.data.shards import verify_shard
    from pipeline.paths import DataPaths

    photos = photographs(64)
    pool_dir = work / "photos"
    pool_dir.mkdir()
    pool = []
    for i, data in enumerate(photos):
        pool.append(pool_dir / f"{i}.JPEG")
        pool[-1].write_bytes(data)
    classes = IMAGENET_CLASSES
    root = devkit_tree(work / "shard-images", pool, train_files, 50, classes)
    config_path = write_config(work, root, num_shards={"train": shards, "val": 1})
    pipeline_stage("index", "--config", str(config_path), log=work / "index.log")
    seconds, peak_mb = pipeline_stage(
        "shard", "--config", str(config_path), "--split", "train", "--shard", "0",
        log=work / "shard.log",
    )  # fmt: skip
    config = load_config(config_path)
    paths = DataPaths.of(config)
    stats = json.loads(paths.shard_stats("train", 0, shards).read_text())
    shard = paths.shard("train", 0, shards)
    rows = stats["manifest_rows"]
    entry = {k: stats[k] for k in ("rows", "bytes", "sha256", "label_histogram")}
    verify_s = []
    for _ in range(3):
        started = time.perf_counter()
        problems = verify_shard(shard, entry, classes)
        verify_s.append(time.perf_counter() - started)
        assert not problems, problems
    source_bytes = sum(p.stat().st_size for p in pool) / len(pool) * rows  # links in turn
    result = {
        "source": "ILSVRC2012 sample" if (REAL_DATA / "ilsvrc2012-sample").is_dir() else "drawn",
        "manifest_rows": train_files,
        "shards": shards,
        "rows": rows,
        "job_s": round(seconds, 2),
        "images_per_s": round(rows / seconds, 1),
        "peak_mb": round(peak_mb, 1),
        "source_kb_per_image": round(source_bytes / rows / 1e3, 1),
        "shard_kb_per_image": round(stats["bytes"] / rows / 1e3, 1),
        "actions": stats["actions"],
        "summary_line_chars": max(
            len(line) for line in (work / "shard.log").read_text().split("\n")
        ),
        "verify_mb_per_s": round(stats["bytes"] / 1e6 / sorted(verify_s)[1], 1),
    }
    print(json.dumps(result), flush=True)
    return result


def bench_snakemake(work: Path, shard_counts: list[int]) -> list[Row]:
    """`snakemake -n` and the seconds until the first shard job starts, per shard count."""
    pool = [work / "sm-pool.JPEG"]
    pool[0].write_bytes(small_jpegs(1)[0])
    root = devkit_tree(work / "sm-images", pool, 2000, 100, 10)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    points = []
    for count in shard_counts:
        folder = work / f"sm-{count}"
        folder.mkdir()
        config = write_config(folder, root, num_shards={"train": count, "val": max(1, count // 64)})
        base = ["snakemake", "--configfile", str(config), "--cores", "1", "--nolock"]
        base += ["--directory", str(folder), "--snakefile", str(PROJECT / "Snakefile")]
        subprocess.run(
            [*base, "--until", "index", "--quiet", "all"], env=env, check=True, cwd=PROJECT,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with open(folder / "dry-run.log", "w") as log:
            dry_s, dry_mb = run_measured(
                [*base, "-n", "--quiet", "rules"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        # the job count Snakemake planned: the "total" line of its job stats
        totals = re.findall(r"^total\s+(\d+)", (folder / "dry-run.log").read_text(), re.M)
        # The first job has started when its shell command has created its log file.
        logs = folder / "results" / "logs" / "shard"
        started = time.perf_counter()
        process = subprocess.Popen(
            base, env=env, cwd=PROJECT, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        first_job_s = None
        while process.poll() is None and time.perf_counter() - started < 1800:
            if logs.is_dir() and any(logs.glob("*.log")):
                first_job_s = time.perf_counter() - started
                break
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        point = {
            "train_shards": count,
            "jobs": int(totals[-1]) if totals else None,
            "dry_run_s": round(dry_s, 2),
            "dry_run_peak_mb": round(dry_mb, 1),
            "first_job_s": round(first_job_s, 2) if first_job_s else None,
        }
        print(json.dumps(point), flush=True)
        points.append(point)
        shutil.rmtree(folder)
    return points

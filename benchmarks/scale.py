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
import copy
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.report import write_benchmark_report  # noqa: E402

IMAGENET_TRAIN = 1_281_167
IMAGENET_VAL = 50_000
IMAGENET_CLASSES = 1000
IMAGENET_BYTES = 140e9  # the train tar's size, about what `verify` reads
REAL_DATA = Path(os.environ.get("PIPELINE_SHARED_DATA", PROJECT.parent / "shared" / "data"))
Row = dict[str, Any]
SECTIONS = ("index", "shard", "snakemake", "sampler", "open", "checkpoint", "tracking")


# --------------------------------------------------------------------------------------------
# Inputs


def wnid(i: int) -> str:
    return f"n{10_000_000 + 7919 * i:08d}"


def small_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """`count` distinct small JPEGs (a few hundred bytes): names and sizes are all `index`
    reads, so the bytes only need to be valid and distinct enough."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        pixels = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=50)
        out.append(buffer.getvalue())
    return out


def devkit_labels(root: Path, n_val: int, classes: int) -> None:
    """The devkit's ground truth (line i: the ILSVRC2012_ID of val image i) and id map."""
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{1 + i % classes}\n" for i in range(n_val))
    )
    (root / "map_clsloc.txt").write_text(
        "".join(f"{wnid(i)} {i + 1} class_{i}\n" for i in range(classes))
    )


def val_name(i: int) -> str:
    return f"ILSVRC2012_val_{i + 1:08d}.JPEG"


def devkit_tree(root: Path, pool: list[Path], n_train: int, n_val: int, classes: int) -> Path:
    """train/<wnid>/*.JPEG and a flat val/, hard links to `pool` in turn."""
    for c in range(classes):
        (root / "train" / wnid(c)).mkdir(parents=True)
    (root / "val").mkdir()
    for i in range(n_train):
        c = i % classes
        os.link(pool[i % len(pool)], root / "train" / wnid(c) / f"{wnid(c)}_{i}.JPEG")
    for i in range(n_val):
        os.link(pool[i % len(pool)], root / "val" / val_name(i))
    devkit_labels(root, n_val, classes)
    return root


def tar_tree(root: Path, pool: list[bytes], n_train: int, n_val: int, classes: int) -> Path:
    """ILSVRC2012_img_train.tar (one tar per class inside) and ILSVRC2012_img_val.tar."""
    root.mkdir(parents=True)

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    per_class = [list(range(c, n_train, classes)) for c in range(classes)]
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w", format=tarfile.GNU_FORMAT) as outer:
        for c, members in enumerate(per_class):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for i in members:
                    add(tar, f"{wnid(c)}_{i}.JPEG", pool[i % len(pool)])
            add(outer, f"{wnid(c)}.tar", inner.getvalue())
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(n_val):
            add(tar, val_name(i), pool[i % len(pool)])
    devkit_labels(root, n_val, classes)
    return root


def photographs(count: int) -> list[bytes]:
    """ImageNet-sized JPEGs: the ILSVRC2012 sample's real files when present, else drawn
    500 x 375 photographs-like images (smooth shading plus noise) at quality 90."""
    sample = REAL_DATA / "ilsvrc2012-sample"
    if sample.is_dir():
        files = sorted(p for p in sample.rglob("*") if p.suffix.upper() == ".JPEG")
        if files:
            return [p.read_bytes() for p in files]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        w, h = [(500, 375), (375, 500), (500, 333), (640, 480)][i % 4]
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(40, 200, 3)
        pixels = base + 40 * np.sin(x / (7 + i % 5))[..., None] + (x - y)[..., None] / 8
        pixels += rng.normal(0, 12, pixels.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def write_config(folder: Path, root: Path, **data: Any) -> Path:
    import yaml

    config = {
        "experiment": "scale",
        "results_dir": str(folder / "results"),
        "data": {"name": "scale", "root": str(root), **data},
        "launcher": {"cluster": "local"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# --------------------------------------------------------------------------------------------
# Measuring


# Runs the command and reports its peak memory. Linux counts a child's peak from the moment it
# was forked, so a child of this (large) process would report at least this process's size:
# the command is forked from this small interpreter instead.
PEAK_OF = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(args: list[str], **kwargs: Any) -> tuple[float, float]:
    """Run a command; its wall seconds and peak resident MB."""
    with tempfile.NamedTemporaryFile() as peak:
        started = time.perf_counter()
        returncode = subprocess.run(
            [sys.executable, "-c", PEAK_OF, peak.name, *args], cwd=PROJECT, **kwargs
        ).returncode
        seconds = time.perf_counter() - started
        if returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited with {returncode}")
        return seconds, int(Path(peak.name).read_text()) / 1024


def pipeline_stage(*args: str, log: Path) -> tuple[float, float]:
    with open(log, "w") as handle:
        return run_measured(
            [sys.executable, "-m", "pipeline", *args], stdout=handle, stderr=subprocess.STDOUT
        )


def fit_growth(sizes: list[float], values: list[float]) -> tuple[float, float]:
    """(k, c) of value = c x size^k, least squares in log-log; k = 0 for one size."""
    if len(sizes) < 2 or min(values) <= 0:
        return 0.0, (values[-1] if values else 0.0)
    k, log_c = np.polyfit(np.log(sizes), np.log(values), 1)
    return float(k), float(math.exp(log_c))


def growth_row(
    quantity: str, unit: str, sizes: list[float], values: list[float], target: float, what: str
) -> Row:
    """One line of the summary table: the measured points, the growth exponent and the value
    at `target` (measured there, or extrapolated from the fit)."""
    k, c = fit_growth(sizes, values)
    # The slope between the two largest sizes: a fixed cost (start-up, imports) flattens the
    # fit over all sizes, so faster-than-linear growth shows here first.
    k_top = fit_growth(sizes[-2:], values[-2:])[0] if len(sizes) > 1 else 0.0
    measured = dict(zip(sizes, values, strict=True))
    at_target = measured.get(target, c * target**k)
    return {
        "quantity": quantity,
        "unit": unit,
        "sizes": sizes,
        "values": [round(v, 4) for v in values],
        "growth_exponent": round(k, 2),
        "growth_exponent_largest": round(k_top, 2),
        "target": target,
        "target_label": what,
        "at_target": round(at_target, 4),
        "extrapolated": target not in measured,
    }


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


def bench_sampler(rows: int, worlds: list[int], batch: int) -> list[Row]:
    """Every rank's sampler of one epoch: construction, permutation, and the exact cover."""
    from pipeline.data.samplers import EvalBatchSampler, TrainBatchSampler

    points = []
    for world in worlds:
        started = time.perf_counter()
        seen = np.zeros(rows, dtype=np.int32)
        per_rank_s = []
        for rank in range(world):
            t = time.perf_counter()
            sampler = TrainBatchSampler(rows, batch, world, rank, seed=0)
            sampler.set_epoch(3)
            batches = [keys.indices for keys in sampler]
            per_rank_s.append(time.perf_counter() - t)
            for indices in batches:
                np.add.at(seen, indices, 1)
        used = sampler.steps_per_epoch * sampler.global_batch
        exact = bool((seen <= 1).all() and seen.sum() == used)
        val_seen = np.zeros(IMAGENET_VAL, dtype=np.int32)
        for rank in range(world):
            for keys in EvalBatchSampler(IMAGENET_VAL, 250, world, rank):
                np.add.at(val_seen, keys.indices, 1)
        point = {
            "world_size": world,
            "rows": rows,
            "per_rank_epoch_s": round(float(np.median(per_rank_s)), 4),
            "all_ranks_checked_s": round(time.perf_counter() - started, 2),
            "exact_cover": exact,
            "left_out": rows - used,
            "val_exactly_once": bool((val_seen == 1).all()),
        }
        if not exact or not point["val_exactly_once"]:
            raise AssertionError(f"sampler cover broken: {point}")
        print(json.dumps(point), flush=True)
        points.append(point)
    return points


OPEN_DATASET = """
import json, os, resource, sys, time
from pathlib import Path
def rss():  # private memory, and file pages mapped (shared with every process on the node)
    fields = dict(line.split(":") for line in open("/proc/self/status") if line.startswith("Rss"))
    return {k: int(v.split()[0]) / 1e3 for k, v in fields.items()}
from pipeline.data.loader import ShardDataset
from pipeline.data.transforms import ValTransform
fds1, rss1 = len(os.listdir("/proc/self/fd")), rss()
t = time.perf_counter()
dataset = ShardDataset(Path(sys.argv[1]), ValTransform(32, 32))
main_s = time.perf_counter() - t
t = time.perf_counter()
dataset._open()  # what each loader worker does on its first batch
open_s = time.perf_counter() - t
for i in range(0, len(dataset), max(1, len(dataset) // 2000)):
    dataset.read(i)
rss2 = rss()
print(json.dumps({"main_s": main_s, "worker_open_s": open_s,
                  "fds": len(os.listdir("/proc/self/fd")) - fds1,
                  "private_mb": rss2["RssAnon"] - rss1["RssAnon"],
                  "file_mb": rss2["RssFile"] - rss1["RssFile"]}))
"""


def bench_open(work: Path, shard_counts: list[int], rows_per_shard: int) -> list[Row]:
    """Open the dataset over many shard files in a fresh process: seconds, memory, fds."""
    from pipeline.data.shards import ShardWriter

    image = small_jpegs(1)[0]
    points = []
    for count in shard_counts:
        folder = work / f"open-{count}"
        folder.mkdir()
        entries = []
        for s in range(count):
            name = f"train-{s:05d}-of-{count:05d}.arrow"
            writer = ShardWriter(folder / name, 1000, 256, {"split": "train", "shard": s})
            written = writer.write((image, i % 1000, f"k{i}") for i in range(rows_per_shard))
            entries.append(
                {"file": name, "rows": written.rows, "bytes": written.bytes,
                 "sha256": written.sha256, "label_histogram": written.label_histogram}
            )  # fmt: skip
        index = {"format_version": 1, "split": "train", "num_shards": count, "num_classes": 1000}
        (folder / "index.json").write_text(json.dumps(index | {"shards": entries}))
        out = subprocess.run(
            [sys.executable, "-c", OPEN_DATASET, str(folder)],
            cwd=PROJECT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        measured = json.loads(out.strip().splitlines()[-1])
        point = {
            "shards": count,
            "rows": count * rows_per_shard,
            "index_json_kb": round((folder / "index.json").stat().st_size / 1e3, 1),
            "main_s": round(measured["main_s"], 3),
            "worker_open_s": round(measured["worker_open_s"], 3),
            "worker_fds": measured["fds"],
            "worker_private_mb": round(measured["private_mb"], 1),
            "worker_file_pages_mb": round(measured["file_mb"], 1),
        }
        print(json.dumps(point), flush=True)
        points.append(point)
        shutil.rmtree(folder)
    return points


def bench_checkpoint(work: Path, worlds: list[int], arch: str) -> list[Row]:
    """A checkpoint of `arch` with the hybrid optimizer's state and `world` ranks' parts: what
    the pipeline writes, and what it wrote when every rank's BN buffers went in too."""
    import torch
    import torchvision

    from pipeline.train import checkpoint
    from pipeline.train.optim import HybridRMSpropSGD

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=1000)
    optimizer = HybridRMSpropSGD(
        model.parameters(), lr=0.1, alpha_sgd=0.5, lr_rmsprop=3e-4, momentum=0.9,
        rms_decay=0.99, eps=1e-8,
    )  # fmt: skip
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    points = []
    for world in worlds:
        for variant, with_bn in (("rng only", False), ("rng + BN buffers", True)):
            part = checkpoint.rank_state(model, bn_moving_average=with_bn)
            part_bytes = len(pickle.dumps(part))  # what the object collectives send
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                # distinct copies: torch.save would store one shared object once
                "per_rank": [copy.deepcopy(part) for _ in range(world)],
                "epoch": 1,
                "step": 0,
            }
            folder = work / f"ckpt-{world}-{with_bn}"
            folder.mkdir()
            started = time.perf_counter()
            path = checkpoint.save(folder, state, keep=1)
            save_s = time.perf_counter() - started
            started = time.perf_counter()
            loaded = checkpoint.load_latest(folder)
            load_s = time.perf_counter() - started
            assert loaded is not None and len(loaded.state["per_rank"]) == world
            point = {
                "world_size": world,
                "variant": variant,
                "checkpoint_mb": round(path.stat().st_size / 1e6, 2),
                "per_rank_kb": round(part_bytes / 1e3, 1),
                "save_s": round(save_s, 3),
                "load_s": round(load_s, 3),
                # what the per-rank parts cost to collect, received over all ranks together
                "all_gather_total_mb": round(world * (world - 1) * part_bytes / 1e6, 2),
                "gather_total_mb": round((world - 1) * part_bytes / 1e6, 2),
            }
            print(json.dumps(point), flush=True)
            points.append(point)
            shutil.rmtree(folder)
    return points


def bench_tracking(work: Path, node_counts: list[int], epochs: int) -> list[Row]:
    """Rank 0's journal and MLflow traffic for epochs of the paper's run (39 steps of 32,768,
    log_every 10, one system-metrics sample per node per 10 s epoch) with `nodes` x 8 ranks:
    the real Tracker into a SQLite store. A node's sample is this machine's (MLflow's own
    monitors) plus eight GPUs' keys as MLflow's GPU monitor names them, values made up."""
    from pipeline.tracking import MLFLOW_BATCH, Journal, Tracker
    from pipeline.train.system_metrics import SystemSampler

    sample = SystemSampler(10.0, lambda _: None).sample()
    for gpu in range(8):
        for key in ("memory_usage_percentage", "memory_usage_megabytes", "utilization_percentage",
                    "power_usage_watts", "power_usage_percentage"):  # fmt: skip
            sample[f"gpu_{gpu}_{key}"] = 50.0 + gpu
    epoch_metrics = dict.fromkeys(
        ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "alpha_sgd",
         "epoch_time_s", "images_per_s", "data_wait_fraction", "noise_scale", "noise_trace",
         "noise_grad_sq"), 0.5,
    )  # fmt: skip
    steps, log_every = IMAGENET_TRAIN // 32768, 10
    points = []
    for nodes in node_counts:
        folder = work / f"tracking-{nodes}"
        folder.mkdir()
        journal = Journal(folder / "metrics.jsonl")
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        tracker = Tracker(journal, uri, "scale", "scale", {}, {}, None)
        before = journal.path.stat().st_size
        started = time.perf_counter()
        values = requests = 0
        for epoch in range(epochs):
            for step in range(steps):
                if (step + 1) % log_every == 0 or step == steps - 1:
                    metrics = {"lr": 1.0, "alpha_sgd": 1.0, "train_loss": 2.0, "epoch": epoch}
                    tracker.log("iteration", epoch * steps + step + 1, metrics)
                    values, requests = values + len(metrics), requests + 1
            tracker.log("epoch", epoch, epoch_metrics)
            # rank 0's node logs its own sample; the others' come together at the epoch's end
            tracker.log_system("system/node_0" if nodes > 1 else "system", sample)
            others = [(f"system/node_{n}", sample) for n in range(1, nodes)]
            if others:
                tracker.log_system_samples(others)
            values += len(epoch_metrics) + nodes * len(sample)
            requests += 2 + math.ceil(len(others) * len(sample) / MLFLOW_BATCH)
        tracker.close(timeout_s=600)
        seconds = time.perf_counter() - started
        point = {
            "nodes": nodes,
            "world_size": nodes * 8,
            "metric_values_per_epoch": values // epochs,
            "mlflow_requests_per_epoch": requests // epochs,
            "journal_kb_per_epoch": round((journal.path.stat().st_size - before) / epochs / 1e3, 1),
            "sqlite_seconds_per_epoch": round(seconds / epochs, 3),
        }
        print(json.dumps(point), flush=True)
        points.append(point)
        shutil.rmtree(folder)
    return points


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

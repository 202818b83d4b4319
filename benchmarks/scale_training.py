"""benchmarks/scale.py's sections on training: the sampler, opening the dataset in a worker,
checkpoints and tracking, up to 1,024 ranks."""

from __future__ import annotations

import copy
import json
import math
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.scale_inputs import (  # noqa: E402
    IMAGENET_TRAIN,
    IMAGENET_VAL,
    Row,
    small_jpegs,
)


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

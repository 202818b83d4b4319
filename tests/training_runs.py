"""Running the real trainer from a test: variants of a module's config, in this process or in
several spawned gloo processes, and what a run leaves behind."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
import yaml

from conftest import build_shards, free_port, write_config
from host_tensors import HostTensors
from pipeline.config import Config
from pipeline.config_files import deep_merge, load_config
from pipeline.launch import run_fingerprint
from pipeline.paths import RunPaths
from pipeline.tracking import Journal
from pipeline.train.job import TrainJob
from synthetic import write_image_tree

RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def small_images(folder: Path, train_per_class: int, **changes: Any) -> Path:
    """A config over 3 classes of plain 40 x 40 images (`train_per_class` train and 4 val
    images each), sharded: 32 px crops, ResNet-18, deterministic, a log point every step, the
    loader in the training process; `changes` update its sections."""
    images = folder / "images"
    write_image_tree(images, classes=3, train=train_per_class, val=4, sizes=[(40, 40)], plain=True)
    base = {
        "data": {"image_size": 32, "val_resize": 32, "loader_workers": 0},
        "model": {"arch": "resnet18"},
        "train": {"deterministic": True, "log_every": 1},
    }
    path = write_config(folder, images, **deep_merge(base, changes))
    build_shards(path)
    return path


def experiment(data_config: Path, name: str, **changes: dict[str, Any]) -> Config:
    """`data_config` with experiment `name` and each section updated by `changes`."""
    config = yaml.safe_load(data_config.read_text())
    config["experiment"] = name
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    path = data_config.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


def run_in_process(config: Config) -> dict[str, Any]:
    for key in RANK_VARIABLES:
        os.environ.pop(key, None)
    return TrainJob(config.model_dump(mode="json"), run_fingerprint(config), {})()


def _rank_entry(
    rank: int,
    world: int,
    configs: list[dict],
    fingerprint: str,
    port: int,
    watch: Path | None,
) -> None:
    config_dict = configs[rank % len(configs)]
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank % config_dict["launcher"]["tasks_per_node"]),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    job = TrainJob(config_dict, fingerprint, {})
    if watch is None:
        job()
        return
    opened: list[str] = []  # checkpoint files this rank opened for reading

    def audit(event: str, args: tuple) -> None:
        if event != "open":
            return
        path, mode = args[0], args[1]
        if isinstance(path, str | Path) and str(path).endswith(".pt") and "r" in str(mode):
            opened.append(str(path))

    sys.addaudithook(audit)
    with HostTensors() as host:
        job()
    report = {"opened": opened, "collectives": host.calls, "violations": host.violations}
    (watch / f"rank{rank}.json").write_text(json.dumps(report))


def run_processes(
    config: Config,
    world: int,
    rank_configs: list[Config] | None = None,
    watch: Path | None = None,
    timeout_s: float = 300,
) -> None:
    """The training job in `world` spawned processes, as torchrun would start it; rank r takes
    `rank_configs[r]` where given. With `watch`, each rank writes watch/rank<r>.json: the
    checkpoint files it read, the collectives it called and any host tensor handed to one
    (tests/host_tensors.py). Ranks that have not ended after `timeout_s` (a hang) are killed."""
    configs = [c.model_dump(mode="json") for c in rank_configs or [config]]
    context = mp.start_processes(
        _rank_entry,
        args=(world, configs, run_fingerprint(config), free_port(), watch),
        nprocs=world,
        start_method="spawn",
        join=False,
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the {world} ranks did not end within {timeout_s} s")


def epoch_metrics(config: Config) -> list[dict[str, float]]:
    records = Journal(RunPaths.of(config).journal).read()
    return [r["metrics"] for r in records if r.get("type") == "metrics" and r["scope"] == "epoch"]


def final_state(config: Config) -> dict[str, torch.Tensor]:
    return torch.load(RunPaths.of(config).final, weights_only=True)["model"]


def assert_same_updates(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], base: dict[str, torch.Tensor]
) -> None:
    """Two runs from `base` made the same updates, up to the order of their sums.

    Weights: the distance between the runs, relative to the length of the update, over the
    whole model, at most 1e-3 (float32 sums in another order give about 1e-4; a wrong average
    or wrong BN statistics give 1e-2 and more). Not tensor by tensor: a gradient that is a sum
    of nearly cancelling terms, as a BN bias has behind per-micro-batch BN, differs by a
    percent on its own between summation orders, on one CPU and not on another. BN running
    statistics tensor by tensor, within 1e-3 of the tensor's largest value: computed by
    weights that differ by 1e-4 of the update (BN averaged over the wrong workers is off by
    their spread, several percent)."""
    assert a.keys() == b.keys() == base.keys()
    weights = [k for k in a if a[k].is_floating_point() and "running_" not in k]
    flat = {
        name: torch.cat([s[k].flatten().double() for k in weights])
        for name, s in (("a", a), ("b", b), ("base", base))
    }
    apart = (flat["a"] - flat["b"]).norm() / (flat["a"] - flat["base"]).norm()
    assert apart <= 1e-3, f"the runs' weights differ by {apart:.2e} of the update"
    statistics = [k for k in a if "running_" in k]
    assert statistics
    for name in statistics:
        apart = (a[name] - b[name]).abs().max() / b[name].abs().max()
        assert apart <= 1e-3, f"{name} differs by {apart:.2e} of its largest value"

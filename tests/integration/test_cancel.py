"""SIGTERM (how Slurm cancels and preempts) and SIGKILL in the middle of a shard: the stage
removes its temporary files, dies of the signal, leaves no worker behind, and the rerun finishes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import PROJECT, write_config
from synthetic import write_image_tree


@pytest.fixture(scope="module")
def large_images(module_tmp) -> Path:
    """Large images, so that a shard takes seconds: time to be stopped mid-write."""
    root = module_tmp("large") / "images"
    write_image_tree(root, classes=2, train=24, val=6, sizes=[(1600, 1200)])
    return root


@pytest.fixture
def large_tree(large_images, tmp_path) -> Path:
    """The large images indexed into a results folder of this test's own."""
    config = write_config(tmp_path, large_images, data={"num_shards": {"train": 2}})
    subprocess.run(
        [sys.executable, "-m", "pipeline", "index", "--config", str(config)],
        cwd=PROJECT,
        check=True,
        capture_output=True,
    )
    return config


def start(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args, "--config", str(config)],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def temporary_files(config: Path) -> list[Path]:
    return sorted((config.parent / "results").rglob(".*.tmp"))


def wait_for_temporary_files(config: Path, count: int) -> None:
    deadline = time.monotonic() + 120
    while len(temporary_files(config)) < count:
        assert time.monotonic() < deadline, "the shard never began writing"
        time.sleep(0.02)


def shards_of(config: Path) -> list[Path]:
    return sorted((config.parent / "results").rglob("*.arrow"))


def finish(config: Path) -> None:
    for args in (["shard", "--jobs", "2"], ["verify"]):
        result = start(config, *args)
        _, err = result.communicate(timeout=600)
        assert result.returncode == 0, err


def test_sigterm_mid_shard_removes_its_temporary_file_and_dies_of_the_signal(large_tree):
    process = start(large_tree, "shard", "--split", "train", "--shard", "0")
    wait_for_temporary_files(large_tree, 1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM, err  # Slurm and Snakemake see a cancel
    assert "shard: stopped by SIGTERM; its temporary files are removed" in err
    assert "Traceback" not in err
    assert temporary_files(large_tree) == [] and shards_of(large_tree) == []
    finish(large_tree)


def test_sigterm_to_a_parallel_shard_stops_its_workers_too(large_tree):
    process = start(large_tree, "shard", "--jobs", "2")
    wait_for_temporary_files(large_tree, 2)
    workers = psutil.Process(process.pid).children()
    assert len(workers) == 2
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM, err
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []  # no worker outlives the stage, writing on
    assert temporary_files(large_tree) == []
    finish(large_tree)


def test_a_worker_killed_alone_fails_the_stage_with_a_clear_error(large_tree):
    process = start(large_tree, "shard", "--jobs", "2")
    wait_for_temporary_files(large_tree, 2)
    psutil.Process(process.pid).children()[0].terminate()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2, err
    assert "error: a shard process died without a result" in err
    assert temporary_files(large_tree) == []
    finish(large_tree)


def test_the_temporary_file_a_sigkill_leaves_is_removed_by_the_next_run(large_tree):
    process = start(large_tree, "shard", "--split", "train", "--shard", "0")
    wait_for_temporary_files(large_tree, 1)
    process.kill()  # nothing runs after SIGKILL: the temporary file stays
    process.communicate(timeout=60)
    [left] = temporary_files(large_tree)
    finish(large_tree)
    assert not left.exists() and temporary_files(large_tree) == []
    assert len(shards_of(large_tree)) == 3

"""A full file system, as a quota or a scratch disk fills: a small tmpfs under the results.

In the system tier (PIPELINE_TEST_SLURM=1): mounting needs root.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT, SLURM_TIER, write_config
from faults import assert_one_line_fault
from synthetic import write_image_tree

pytestmark = SLURM_TIER


def stage(name: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", name, "--config", str(config)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def small_disk(tmp_path):
    """A 256 kB tmpfs: room for the manifests, not for the shards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_stops_shard_in_one_line_and_the_rerun_with_space_finishes(
    small_disk, tmp_path
):
    write_image_tree(tmp_path / "images", classes=3, train=12, val=4, sizes=[(400, 300)])
    config = write_config(tmp_path, tmp_path / "images")
    text = config.read_text().replace(str(tmp_path / "results"), str(small_disk / "results"))
    config.write_text(text)
    assert stage("index", config).returncode == 0
    full = stage("shard", config)
    line = assert_one_line_fault(full, "shard", os.strerror(errno.ENOSPC))
    assert str(small_disk / "results") in line and "The file system is full" in line
    assert sorted(small_disk.rglob(".*.tmp")) == []  # nothing half-written, nothing left over
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    for name in ("shard", "verify"):
        result = stage(name, config)
        assert result.returncode == 0, result.stderr
    assert sorted(small_disk.rglob(".*.tmp")) == []

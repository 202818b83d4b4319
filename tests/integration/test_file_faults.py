"""A full disk, a size limit, a read-only folder: each stage stops with one line naming the file
and what to do, leaves no temporary file, and the rerun finishes.

The faults are real: `RLIMIT_FSIZE` makes every write past the limit fail with EFBIG, as a full
disk fails with ENOSPC, and a folder without write permission fails with EACCES (as root, with
the capabilities that bypass permissions dropped by `setpriv`).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT, write_config
from faults import NO_BYPASS, assert_one_line_fault, size_limited
from pipeline.config_files import load_config
from pipeline.journal import Journal
from pipeline.paths import DataPaths
from synthetic import write_image_tree

# The largest file (bytes) each stage may write: smaller than what it must write (measured on
# the tree below: manifests 2.4 kB, shards 70 kB, train's index.json 0.9 kB, verified.json
# 0.27 kB), larger than the files written before it.
STAGE_LIMITS = {"index": 1000, "shard": 10_000, "shard-index": 700, "verify": 200}
STAGES = [["index"], ["shard", "--jobs", "2"], ["shard-index"], ["verify"]]


def stage(args: list[str], config: Path, *, limit: int | None = None, wrap: list[str] = ()):
    return subprocess.run(
        [*wrap, sys.executable, "-m", "pipeline", *args, "--config", str(config)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=size_limited(limit) if limit else None,
    )


def temporary_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


@pytest.fixture
def small_tree(tmp_path) -> Path:
    write_image_tree(tmp_path / "images", classes=3, train=4, val=2, sizes=[(400, 300)], plain=True)
    return write_config(tmp_path, tmp_path / "images", data={"num_shards": {"train": 2, "val": 1}})


@pytest.mark.parametrize("position", range(len(STAGES)), ids=[s[0] for s in STAGES])
def test_a_size_limit_stops_a_data_stage_in_one_line_and_the_rerun_finishes(small_tree, position):
    config = small_tree
    for args in STAGES[:position]:
        assert stage(args, config).returncode == 0
    args = STAGES[position]
    results = config.parent / "results"
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    result = stage(args, config, limit=STAGE_LIMITS[args[0]])
    line = assert_one_line_fault(result, args[0], os.strerror(errno.EFBIG))
    path = Path(line.split(": ")[2])
    assert path.is_relative_to(results), line
    # the file it could not write is as it was (absent, or a previous run's whole file)
    assert (path.read_bytes() if path.exists() else None) == before.get(path)
    assert "`ulimit -f`" in line
    assert temporary_files(config.parent) == []
    for rest in STAGES[position:]:
        assert stage(rest, config).returncode == 0
    assert "ok" in stage(["verify"], config).stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not here")
def test_a_read_only_output_folder_is_named_and_nothing_is_half_written(small_tree):
    config = small_tree
    assert stage(["index"], config).returncode == 0
    shards = DataPaths.of(load_config(config)).shard_index("train").parent
    shards.mkdir(parents=True)
    shards.chmod(0o555)
    # root writes anywhere unless the capabilities that bypass permissions are dropped
    wrap = ["setpriv", f"--bounding-set={NO_BYPASS}", "--"] if os.geteuid() == 0 else []
    try:
        result = stage(["shard", "--split", "train", "--shard", "0"], config, wrap=wrap)
    finally:
        shards.chmod(0o755)
    line = assert_one_line_fault(result, "shard", "Permission denied")
    assert str(shards) in line and "fix the permissions" in line
    assert list(shards.iterdir()) == []
    for args in STAGES[1:]:
        assert stage(args, config).returncode == 0


def test_a_full_disk_mid_append_leaves_the_journal_whole_lines(tmp_path):
    """The journal is appended to for a whole run: a write cut by a full disk must not leave
    half a record that the next append runs into."""
    path = tmp_path / "metrics.jsonl"
    Journal(path).append_many([{"type": "metrics", "step": 0, "metrics": {"loss": 1.0}}])
    size = path.stat().st_size
    script = (
        "from pathlib import Path\nfrom pipeline.journal import Journal\n"
        f"j = Journal(Path({str(path)!r}))\n"
        "try:\n"
        "    j.append_many([{'type': 'metrics', 'step': i, 'metrics': {'loss': 0.5}}"
        " for i in range(1, 200)])\n"
        "except OSError as err:\n"
        "    print(err.errno, err.filename)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        preexec_fn=size_limited(size + 500),  # room for a few of the 199 records, not all
        check=True,
    )
    assert result.stdout.split() == [str(errno.EFBIG), str(path)], result.stdout + result.stderr
    assert path.stat().st_size == size  # back to where the append began
    journal = Journal(path)
    journal.append_many([{"type": "metrics", "step": 1, "metrics": {"loss": 0.5}}])
    assert [r["step"] for r in journal.read()] == [0, 1]

"""File names as Linux has them: bytes that are not UTF-8 (a copy unpacked on another system),
and names holding a newline, a tab, a comma or a quote. Every file is indexed, sharded or
quarantined under a name a person can read, and the counts reconcile."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import PROJECT, write_config
from pipeline.config_files import load_config
from pipeline.paths import DataPaths
from synthetic import write_image_tree

# Name on disk (bytes) -> the name as the manifest, shards and quarantine.csv show it.
ODD_NAMES = {
    b"caf\xe9.JPEG": "caf\\xe9.JPEG",  # Latin-1, not UTF-8
    b"new\nline.JPEG": "new\nline.JPEG",
    b"tab\there.JPEG": "tab\there.JPEG",
    b'comma, "quote".JPEG': 'comma, "quote".JPEG',
    "caf\u00e9 utf8.JPEG".encode(): "caf\u00e9 utf8.JPEG",  # UTF-8: kept as it is
}
BAD_NAME = (b"notes \xff.JPEG", "notes \\xff.JPEG")  # not UTF-8, and not an image


def run(stage: str, config: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", stage, "--config", str(config), *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def odd_tree(module_tmp):
    tmp = module_tmp("names")
    root = tmp / "images"
    write_image_tree(root, classes=2, train=8, val=2, plain=True)
    folder = sorted((root / "train").iterdir())[0]
    originals = sorted(folder.iterdir())
    expected = {}
    for original, (raw, shown) in zip(originals, ODD_NAMES.items(), strict=False):
        os.rename(os.fsencode(original), os.fsencode(folder) + b"/" + raw)
        expected[f"train/{folder.name}/{shown}"] = f"train/{folder.name}/".encode() + raw
    (Path(os.fsdecode(os.fsencode(folder) + b"/" + BAD_NAME[0]))).write_text("not a picture\n")
    config = write_config(tmp, root, data={"num_shards": {"train": 2, "val": 1}})
    for stage, *args in (["index"], ["shard", "--jobs", "2"], ["verify"]):
        run(stage, config, *args)
    return load_config(config), expected, f"train/{folder.name}/{BAD_NAME[1]}"


def test_every_name_is_indexed_readably_with_its_exact_bytes_kept(odd_tree):
    config, expected, bad = odd_tree
    manifest = pq.read_table(DataPaths.of(config).manifest("train")).to_pylist()
    assert len(manifest) == 2 * 8 + 1
    by_path = {row["path"]: row for row in manifest}
    assert len(by_path) == len(manifest)
    for shown, raw in expected.items():
        row = by_path[shown]
        utf8 = raw.decode("utf-8", "replace") == shown
        # raw_path only where the name is not UTF-8; the bytes open the very file
        assert row["raw_path"] == (None if utf8 else raw)
        assert os.path.isfile(os.fsencode(config.data.root) + b"/" + raw)
    folder = bad.rsplit("/", 1)[0]
    assert by_path[bad]["raw_path"] == f"{folder}/".encode() + BAD_NAME[0]


def test_odd_names_are_sharded_and_quarantined_under_their_readable_names(odd_tree):
    config, expected, bad = odd_tree
    paths = DataPaths.of(config)
    with open(paths.quarantine, newline="") as handle:
        quarantined = list(csv.DictReader(handle))
    assert [(q["path"], q["split"]) for q in quarantined] == [(bad, "train")]
    assert "not an image" in quarantined[0]["reason"]

    keys = []
    for shard in sorted(paths.shard_index("train").parent.glob("*.arrow")):
        with pa.memory_map(str(shard)) as source:
            keys += pa.ipc.open_file(source).read_all().column("key").to_pylist()
    assert set(expected) <= set(keys) and bad not in keys
    index = json.loads(paths.shard_index("train").read_text())
    assert index["rows"] + index["quarantined"] == index["manifest_rows"] == 17
    assert len(keys) == index["rows"] == 16

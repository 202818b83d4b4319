"""Atomic writes: the old file or the whole new one, never half of one, and errors that name
the file a person asked for rather than its temporary twin."""

import errno
import os

import pytest

from pipeline import atomic
from pipeline.errors import file_fault_line


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "out.json"
    atomic.write_json(path, {"old": 1})
    with pytest.raises(RuntimeError), atomic.atomic_path(path) as tmp:
        tmp.write_text('{"new": ')
        raise RuntimeError("the writer failed")
    assert path.read_text().startswith('{\n  "old"') and os.listdir(tmp_path) == ["out.json"]


def test_only_the_leftovers_of_the_same_final_path_are_removed(tmp_path):
    names = [".a.parquet.123.tmp", ".a.parquet.9.tmp", ".a.parquet.tmp", ".b.parquet.1.tmp"]
    for name in [*names, "a.parquet"]:
        (tmp_path / name).write_text("x")
    removed = atomic.remove_leftovers(tmp_path / "a.parquet")
    assert sorted(p.name for p in removed) == names[:2]
    assert sorted(os.listdir(tmp_path)) == sorted(["a.parquet", *names[2:]])


def test_an_error_naming_no_file_or_the_temporary_one_is_raised_naming_the_output(tmp_path):
    path = tmp_path / "shard.arrow"
    with pytest.raises(OSError) as caught, atomic.atomic_path(path) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    with pytest.raises(OSError) as caught, atomic.errors_naming(path):
        raise OSError(errno.EIO, "pyarrow says: IOError")  # no file name at all
    assert caught.value.filename == str(path)
    with pytest.raises(OSError) as caught, atomic.errors_naming(path):
        raise FileNotFoundError(errno.ENOENT, "No such file", "/data/input.JPEG")
    assert caught.value.filename == "/data/input.JPEG"  # another file: named as it was


def test_the_fault_line_names_the_file_the_reason_and_what_to_do():
    err = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/scratch/run/final.pt")
    assert file_fault_line("train", err) == (
        f"train: /scratch/run/final.pt: {os.strerror(errno.EDQUOT)}. Your disk quota is used "
        "up: free space or ask for a larger quota, then rerun (finished outputs are kept)"
    )
    unnamed = OSError("IOError: write failed at offset 10")
    assert file_fault_line("shard", unnamed).startswith("shard: IOError: write failed")

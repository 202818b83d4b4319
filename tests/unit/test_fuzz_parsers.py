"""Fuzzing what the pipeline parses itself, with a fixed example budget: every input gives what
the reference reader gives (Pillow's size, the csv module, tarfile, a spec-level parser) or the
project's own error naming the input; never another exception, never a hang."""

from __future__ import annotations

import csv
import io
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.config import ConfigError
from pipeline.config_files import load_config
from pipeline.data.label_files import (
    parse_map_clsloc,
    parse_meta_mat,
    read_class_lines,
    read_kaggle_solution,
)
from pipeline.data.layouts import read_tar
from pipeline.data.transforms import jpeg_size
from pipeline.errors import LayoutError

BUDGET = settings(
    max_examples=150,
    deadline=2000,  # ms per example: a parser that loops would be cut off here
    derandomize=True,  # the same examples every run: a failure is a failure, not luck
    suppress_health_check=[HealthCheck.too_slow],
)
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)


def _jpeg(width: int, height: int, progressive: bool) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (width, height), (width % 256, height % 256, 7))
    image.save(buffer, "JPEG", quality=80, progressive=progressive)
    return buffer.getvalue()


@st.composite
def jpeg_like(draw) -> bytes:
    """A real JPEG, then cut short, flipped at a few bytes, or given junk before its end."""
    data = bytearray(
        _jpeg(draw(st.integers(1, 300)), draw(st.integers(1, 300)), draw(st.booleans()))
    )
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data) + draw(st.binary(max_size=20))


@BUDGET
@given(st.one_of(jpeg_like(), st.binary(max_size=400)))
def test_jpeg_size_is_pillows_or_a_value_error(data):
    try:
        ours = jpeg_size(data)
    except ValueError:
        return  # the project's own "corrupt JPEG" error
    try:
        pillow = Image.open(io.BytesIO(data)).size
    except Exception:  # Pillow refuses it: ours only read a frame header, which may be fine
        return
    assert ours == pillow


@BUDGET
@given(TEXT)
def test_map_clsloc_is_the_spec_or_a_layout_error(text):
    expected = {}
    failed = False
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[1].isdigit():
            failed = True
            break
        expected[int(parts[1])] = (parts[0], " ".join(parts[2:]))
    try:
        got = parse_map_clsloc(text, "map_clsloc.txt")
    except LayoutError as err:
        assert failed and "map_clsloc.txt:" in str(err)
        return
    assert not failed and got == expected


@BUDGET
@given(st.lists(TEXT, max_size=20))
def test_class_lines_are_the_spec_or_a_layout_error(lines):
    try:
        wnids, names = read_class_lines(lines, "classes.txt")
    except LayoutError as err:
        assert "classes.txt" in str(err)
        return
    expected = [line.strip().partition(" ")[0] for line in lines if line.strip()]
    assert wnids == expected and len(set(wnids)) == len(wnids)
    assert set(names) == set(wnids)


@BUDGET
@given(st.lists(st.lists(TEXT, min_size=0, max_size=4), max_size=8), st.booleans())
def test_kaggle_solution_is_the_csv_modules_or_a_layout_error(rows, with_header):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "LOC_val_solution.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            if with_header:
                writer.writerow(["ImageId", "PredictionString"])
            writer.writerows(rows)
        try:
            got = read_kaggle_solution(path)
        except LayoutError as err:
            assert str(path) in str(err)
            return
        with open(path, newline="") as handle:
            reference = list(csv.DictReader(handle))
    expected = {r["ImageId"]: (r["PredictionString"] or "").split()[0] for r in reference}
    assert got == expected


@BUDGET
@given(st.binary(max_size=600))
def test_meta_mat_garbage_is_a_layout_error(data):
    try:
        parse_meta_mat(data, "meta.mat")
    except LayoutError as err:
        assert "meta.mat" in str(err)


@BUDGET
@given(
    st.lists(
        st.tuples(
            st.integers(1, 2000),
            st.from_regex(r"n\d{8}", fullmatch=True),
            st.text(alphabet=st.characters(categories=["L", "N", "P", "Zs"]), max_size=40),
            st.booleans(),
        ),
        max_size=12,
        unique_by=lambda s: s[0],
    )
)
def test_meta_mat_gives_scipys_leaf_synsets(synsets):
    """Class names as the devkit's are (printable text, MATLAB char arrays)."""
    table = np.array(
        [(i, wnid, words, 0 if leaf else 3) for i, wnid, words, leaf in synsets],
        dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")],
    )
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"synsets": table})
    try:
        got = parse_meta_mat(buffer.getvalue(), "meta.mat")
    except LayoutError:
        assert not synsets  # an empty table has no fields to read
        return
    expected = {i: (wnid, words) for i, wnid, words, leaf in synsets if leaf}
    assert got == expected


@st.composite
def train_tar(draw) -> tuple[bytes, dict[str, list[str]]]:
    """ILSVRC2012_img_train.tar in miniature: an outer tar of per-class tars of JPEG names."""
    classes: dict[str, list[str]] = {}
    outer = io.BytesIO()
    with tarfile.open(fileobj=outer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for c in range(draw(st.integers(1, 3))):
            wnid = f"n{c:08d}"
            names = draw(
                st.lists(
                    st.text("abcdefgh_ .,'\"\t\n0123456789é", min_size=1, max_size=12),
                    max_size=4,
                    unique=True,
                )
            )
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w", format=tarfile.GNU_FORMAT) as class_tar:
                for name in names:
                    info = tarfile.TarInfo(f"{name}.JPEG")
                    payload = draw(st.binary(min_size=1, max_size=30))
                    info.size = len(payload)
                    class_tar.addfile(info, io.BytesIO(payload))
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = len(inner.getvalue())
            tar.addfile(info, io.BytesIO(inner.getvalue()))
            classes[wnid] = sorted(f"{n}.JPEG" for n in names)
    data = bytearray(outer.getvalue())
    if draw(st.booleans()):  # damaged: a few bytes flipped, or cut short
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data), classes


@pytest.mark.slow
@BUDGET
@given(train_tar())
def test_the_tar_index_is_whole_or_a_layout_error(archive):
    """Flipped bytes or a cut give the full index (damage inside JPEG bytes shows at decode) or
    an error naming the tar: never a shorter list that loses the images after the damage."""
    data, classes = archive
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "ILSVRC2012_img_train.tar").write_bytes(data)
        with tarfile.open(root / "ILSVRC2012_img_val.tar", "w"):
            pass  # no val images: the train tar is what is fuzzed
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n")
        try:
            scan = read_tar(root)
        except LayoutError as err:
            assert "ILSVRC2012_img_train.tar" in str(err)
            return
    # Indexed or listed as ignored (a name like "..JPEG" is not an image name): never dropped.
    listed = [e.path for e in scan.entries if e.split == "train"] + scan.ignored
    found: dict[str, list[str]] = {}
    for path in listed:
        _, class_tar, name = path.split("::")
        found.setdefault(class_tar[: -len(".tar")], []).append(name)
    assert {w: sorted(n) for w, n in found.items()} == {w: n for w, n in classes.items() if n}


@BUDGET
@given(
    st.one_of(
        TEXT,
        st.dictionaries(
            st.sampled_from(["experiment", "data", "train", "model", "seed", "launcher", "xx"]),
            st.one_of(
                st.integers(), TEXT, st.none(), st.dictionaries(TEXT, st.integers(), max_size=3)
            ),
            max_size=5,
        ).map(yaml.safe_dump),
    )
)
def test_a_config_file_is_a_config_or_a_config_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        try:
            load_config(path)
        except ConfigError as err:
            assert str(path) in str(err)


def test_a_val_tar_damaged_at_its_second_header_is_an_error_not_a_short_list(tmp_path):
    """tarfile itself ends the listing quietly at a bad header after the first one."""
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w"):
        pass
    val = io.BytesIO()
    with tarfile.open(fileobj=val, mode="w") as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"ILSVRC2012_val_{i:08d}.JPEG")
            info.size = 10
            tar.addfile(info, io.BytesIO(b"x" * 10))
    data = bytearray(val.getvalue())
    data[1024 + 100] ^= 0xFF  # the second header's mode field: its checksum no longer matches
    (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(data)
    with tarfile.open(tmp_path / "ILSVRC2012_img_val.tar") as tar:
        assert len(tar.getmembers()) == 1  # what a plain reader would index
    with pytest.raises(LayoutError, match=r"ILSVRC2012_img_val.tar stops at byte 1024 .*1 member"):
        read_tar(tmp_path)

"""index -> shard -> shard-index -> verify on an ImageNet-shaped tree plus crafted bad files."""

import csv
import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import run_stage, write_config
from pipeline.config_files import load_config
from pipeline.data.sharding import build_shard, describe_shards
from pipeline.paths import DataPaths

BAD_FILES = {
    "truncated.JPEG": "JPEG does not decode",
    "empty.JPEG": "empty file: 0 bytes",
    "notes.JPEG": "not an image",
}


def _jpeg(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def dataset(module_tmp, image_tree):
    """The tree plus one more of each kind of file ImageNet really contains, and some it
    should not."""
    tmp = module_tmp("stages")
    root = tmp / "images"
    shutil.copytree(image_tree.root, root)
    wnid = sorted(p.name for p in (root / "train").iterdir())[0]
    folder = root / "train" / wnid
    real = next(
        root / p for p, action in sorted(image_tree.train_actions.items()) if action == "kept"
    )
    rgb = Image.open(real).convert("RGB")
    (folder / "cmyk.JPEG").write_bytes(_jpeg(rgb.convert("CMYK")))
    (folder / "gray.JPEG").write_bytes(_jpeg(rgb.convert("L")))
    png = io.BytesIO()
    rgb.save(png, format="PNG")
    (folder / "png.JPEG").write_bytes(png.getvalue())
    (folder / "big.JPEG").write_bytes(_jpeg(rgb.resize((600, 450))))
    (folder / "truncated.JPEG").write_bytes(real.read_bytes()[:3000])
    (folder / "empty.JPEG").write_bytes(b"")
    (folder / "notes.JPEG").write_text("this is not a picture\n")
    config_path = write_config(tmp, root, data={"num_shards": {"train": 3, "val": 2}})
    run_stage("index", "--config", str(config_path))
    run_stage("shard", "--config", str(config_path), "--jobs", "2")
    return load_config(config_path), config_path, image_tree


def test_counts_reconcile_and_every_bad_file_is_quarantined_with_its_reason(dataset):
    config, _, image_tree = dataset
    paths = DataPaths.of(config)
    summary = json.loads(paths.index_summary.read_text())
    assert summary["layout"] == "folder"
    assert summary["splits"]["train"] == {"files": 207, "unlabelled": 0}
    assert summary["splits"]["val"] == {"files": 100, "unlabelled": 0}
    assert pq.read_metadata(paths.manifest("train")).num_rows == 207

    with open(paths.quarantine) as handle:
        quarantined = {row["path"].split("/")[-1]: row for row in csv.DictReader(handle)}
    assert set(quarantined) == set(BAD_FILES)
    for name, reason in BAD_FILES.items():
        assert reason in quarantined[name]["reason"]
        assert quarantined[name]["split"] == "train"

    index = json.loads(paths.shard_index("train").read_text())
    assert index["manifest_rows"] == 207
    assert index["rows"] == 204 and index["quarantined"] == 3
    assert sum(s["rows"] for s in index["shards"]) == 204
    assert sum(sum(s["label_histogram"]) for s in index["shards"]) == 204
    actions = {}
    for shard in index["shards"]:
        for what, n in shard["actions"].items():
            actions[what] = actions.get(what, 0) + n
    # The tree's own files (the real tier's hold grayscale JPEGs too), plus the added ones.
    expected = image_tree.action_counts()
    assert expected["kept"] < 200 and expected["re-encoded: grayscale JPEG"] > 0
    expected.update(
        {
            "re-encoded: CMYK JPEG": 1,
            "re-encoded: grayscale JPEG": 1,
            "re-encoded: PNG file": 1,
            "re-encoded: downscaled": 1,
            "quarantined: JPEG does not decode": 1,
            "quarantined: empty file": 1,
            "quarantined: not an image (no known image header)": 1,
        }
    )
    assert actions == dict(expected)
    assert sum(actions.values()) == index["manifest_rows"]  # each row counted once


def test_shard_log_counts_by_kind_and_shows_examples(dataset):
    config, _, _ = dataset
    paths = DataPaths.of(config)
    stats = [json.loads(paths.shard_stats("train", i, 3).read_text()) for i in range(3)]
    big = next(s for s in stats if "re-encoded: downscaled" in s["actions"])
    assert big["examples"]["re-encoded: downscaled"] == [
        next(p for p in big["examples"]["re-encoded: downscaled"] if "big.JPEG" in p)
    ]
    assert big["examples"]["re-encoded: downscaled"][0].endswith("longer side 600 > max_side 256")
    for s in stats:  # every kind is fixed text: no sizes, no decoder messages
        assert all(not any(c.isdigit() for c in kind) for kind in s["actions"])
        assert sum(s["actions"].values()) == s["manifest_rows"]


def test_every_shard_mixes_classes(dataset):
    config, _, _ = dataset
    index = json.loads(DataPaths.of(config).shard_index("train").read_text())
    for shard in index["shards"]:
        assert sum(n > 0 for n in shard["label_histogram"]) == 10


def test_a_shard_rebuilt_alone_is_byte_identical(dataset, tmp_path):
    config, _, _ = dataset
    paths = DataPaths.of(config)
    before = json.loads(paths.shard_stats("train", 1, 3).read_text())
    build_shard(config, "train", 1)
    after = json.loads(paths.shard_stats("train", 1, 3).read_text())
    assert after["sha256"] == before["sha256"]


def test_verify_passes_then_names_a_flipped_byte_and_a_truncated_shard(dataset, tmp_path):
    config, config_path, _ = dataset
    ok = run_stage("verify", "--config", str(config_path))
    assert "train: 3 shards, 204 rows: ok" in ok.stderr

    # Work on a copy so the other tests keep intact shards.
    copy = tmp_path / "copy"
    shutil.copytree(DataPaths.of(config).root, copy / "data" / config.data.name)
    broken = write_config(tmp_path, config.data.root_path)
    text = broken.read_text().replace(str(tmp_path / "results"), str(copy))
    text = text.replace("train: 2", "train: 3").replace("val: 1", "val: 2")
    broken.write_text(text)
    shards = DataPaths.of(load_config(broken))
    flipped = shards.shard("train", 0, 3)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x40
    flipped.write_bytes(bytes(data))
    truncated = shards.shard("val", 1, 2)
    truncated.write_bytes(truncated.read_bytes()[:-500])

    result = run_stage("verify", "--config", str(broken), check=False)
    assert result.returncode == 1
    assert f"shard {flipped}: sha256" in result.stderr
    assert f"shard {truncated} has" in result.stderr and "index.json records" in result.stderr
    assert not shards.verified.exists()


def test_stage_errors_are_one_clear_line(tmp_path):
    config = write_config(tmp_path, tmp_path / "no-such-folder")
    result = run_stage("index", "--config", str(config), check=False)
    assert result.returncode == 2
    assert "error: data.root" in result.stderr and "is not a folder" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_stage("shard", "--config", str(config), "--split", "train", check=False)
    assert result.returncode == 2 and "give both --split and --shard" in result.stderr


def test_demo_data_writes_a_real_digits_tree(tmp_path):
    config = write_config(tmp_path, tmp_path / "digits", data={"demo": {"image_size": 24}})
    run_stage("demo-data", "--config", str(config))
    train = sorted((tmp_path / "digits" / "train").glob("*/*.JPEG"))
    val = sorted((tmp_path / "digits" / "val").glob("*/*.JPEG"))
    assert len(train) + len(val) == 1797  # every digit in scikit-learn's copy
    assert len({p.parent.name for p in val}) == 10
    image = Image.open(train[0])
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (24, 24)
    assert np.asarray(image).std() > 10  # real strokes, not a blank
    # Re-running replaces its own folder, but never a folder it did not write.
    run_stage("demo-data", "--config", str(config))
    other = write_config(tmp_path, tmp_path, data={"demo": {"image_size": 24}})
    result = run_stage("demo-data", "--config", str(other), check=False)
    assert result.returncode == 2 and "refusing to replace" in result.stderr


def test_shards_are_described_by_a_digest_that_changes_with_them(dataset, tmp_path):
    """What a training run records as its MLflow dataset inputs: the same rows sharded
    otherwise are other shards, and get another digest."""
    config, _, _ = dataset
    described = {d["name"]: d for d in describe_shards(config)}
    train = described[f"{config.data.name}/train"]
    index = json.loads(DataPaths.of(config).shard_index("train").read_text())
    assert train["profile"]["num_rows"] == index["rows"] and train["context"] == "training"
    assert described[f"{config.data.name}/val"]["context"] == "evaluation"
    assert train["source"] == str(config.data.root_path.resolve())
    other = write_config(
        tmp_path, config.data.root_path, data={"num_shards": {"train": 2, "val": 2}}
    )
    run_stage("index", "--config", str(other))
    run_stage("shard", "--config", str(other), "--jobs", "2")
    resharded = {d["name"]: d for d in describe_shards(load_config(other))}
    assert resharded[train["name"]]["profile"]["num_rows"] == train["profile"]["num_rows"]
    assert resharded[train["name"]]["digest"] != train["digest"]

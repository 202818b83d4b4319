"""Every ImageNet layout, built in a temporary folder from the ILSVRC2012 sample files (drawn
by tests/synthetic.py, and the real ones in the real-data tier)."""

import csv
import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pipeline.data import label_files, layouts
from pipeline.data.layouts import SourceReader
from pipeline.errors import LayoutError


def kaggle_truth(sample: Path) -> dict[str, str]:
    with open(sample / "LOC_val_solution.csv") as handle:
        return {r["ImageId"]: r["PredictionString"].split()[0] for r in csv.DictReader(handle)}


def link_tree(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_dir():
            link_tree(item, target / item.name)
        else:
            os.symlink(item, target / item.name)


def build_kaggle(sample: Path, root: Path) -> Path:
    base = root / "ILSVRC" / "Data" / "CLS-LOC"
    link_tree(sample / "train", base / "train")
    link_tree(sample / "val_flat", base / "val")
    for name in ("LOC_val_solution.csv", "LOC_synset_mapping.txt"):
        os.symlink(sample / name, root / name)
    return root


def build_devkit(sample: Path, root: Path, id_map: str = "map_clsloc.txt") -> Path:
    link_tree(sample / "train", root / "train")
    link_tree(sample / "val_flat", root / "val")
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    os.symlink(sample / "ILSVRC2012_validation_ground_truth.txt", data / label_files.GROUND_TRUTH)
    if id_map == "map_clsloc.txt":
        os.symlink(sample / "map_clsloc.txt", data / "map_clsloc.txt")
    else:
        (data / "meta.mat").write_bytes(meta_mat_from(sample / "map_clsloc.txt"))
    return root


def meta_mat_from(map_clsloc: Path) -> bytes:
    """A meta.mat like the devkit's: leaf synsets with ILSVRC2012_ID, WNID, words, plus one
    inner node (num_children > 0) that must not become a class."""
    rows = [line.split(maxsplit=2) for line in map_clsloc.read_text().splitlines() if line]
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    table = np.zeros((len(rows) + 1, 1), dtype=dtype)
    for i, (wnid, ilsvrc_id, name) in enumerate(rows):
        table[i, 0] = (
            np.array([[int(ilsvrc_id)]]),
            np.array([wnid]),
            np.array([name]),
            np.array([[0]]),
        )
    table[len(rows), 0] = (
        np.array([[1001]]),
        np.array(["n00001740"]),
        np.array(["entity"]),
        np.array([[3]]),
    )
    out = io.BytesIO()
    scipy.io.savemat(out, {"synsets": table})
    return out.getvalue()


def build_tar(sample: Path, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / layouts.TRAIN_TAR, "w") as outer:
        for class_dir in sorted((sample / "train").iterdir()):
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for image in sorted(class_dir.iterdir()):
                    inner.add(image, arcname=image.name)
            info = tarfile.TarInfo(f"{class_dir.name}.tar")
            info.size = inner_bytes.tell()
            inner_bytes.seek(0)
            outer.addfile(info, inner_bytes)
    with tarfile.open(root / layouts.VAL_TAR, "w") as val:
        for image in sorted((sample / "val_flat").iterdir()):
            val.add(image, arcname=image.name)
    with tarfile.open(root / label_files.DEVKIT_TAR, "w:gz") as devkit:
        devkit.add(
            sample / "ILSVRC2012_validation_ground_truth.txt",
            arcname=f"ILSVRC2012_devkit_t12/data/{label_files.GROUND_TRUTH}",
        )
        meta = meta_mat_from(sample / "map_clsloc.txt")
        info = tarfile.TarInfo("ILSVRC2012_devkit_t12/data/meta.mat")
        info.size = len(meta)
        devkit.addfile(info, io.BytesIO(meta))
    return root


BUILDERS = {
    "kaggle": build_kaggle,
    "devkit": build_devkit,
    "devkit-meta.mat": lambda s, r: build_devkit(s, r, id_map="meta.mat"),
    "tar": build_tar,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_ilsvrc_layouts_give_the_kaggle_labels_to_the_50_val_images(name, ilsvrc_sample, tmp_path):
    root = BUILDERS[name](ilsvrc_sample, tmp_path / name)
    expected_layout = name.split("-")[0]
    assert layouts.detect_layout(root) == expected_layout
    scan = layouts.scan_source(root, "auto")
    truth = kaggle_truth(ilsvrc_sample)

    val = [e for e in scan.entries if e.split == "val"]
    assert len(val) == 50
    for entry in val:
        image_id = Path(entry.path.split(label_files.TAR_SEP)[-1]).stem
        assert entry.wnid == truth[image_id], entry.path

    train = [e for e in scan.entries if e.split == "train"]
    assert sorted(e.wnid for e in train) == sorted(
        p.name for p in (ilsvrc_sample / "train").iterdir()
    )
    assert scan.ignored == []

    # 20 train classes; val images of other classes get label -1 and a reason, not dropped.
    classes = layouts.class_list(scan, None)
    labelled = layouts.assign_labels(scan, classes)
    assert len(labelled) == 70
    for entry, label in labelled:
        if entry.wnid in classes.wnids:
            assert classes.wnids[label] == entry.wnid and entry.problem is None
        else:
            assert label == -1 and "is not in the class list" in entry.problem
    assert any(label == -1 for e, label in labelled if e.split == "val")
    assert classes.wnids == sorted(classes.wnids)


@pytest.mark.parametrize("name", ["devkit", "tar"])
def test_devkit_names_come_with_the_classes(name, ilsvrc_sample, tmp_path):
    root = BUILDERS[name](ilsvrc_sample, tmp_path / name)
    scan = layouts.scan_source(root, name)
    classes = layouts.class_list(scan, None)
    lines = (ilsvrc_sample / "map_clsloc.txt").read_text().splitlines()
    names = {wnid: name for wnid, _, name in (line.split(maxsplit=2) for line in lines)}
    assert len(classes.wnids) == 20
    assert classes.names == [names[wnid] for wnid in classes.wnids]


def test_tar_members_are_read_in_place_byte_for_byte(ilsvrc_sample, tmp_path):
    root = build_tar(ilsvrc_sample, tmp_path / "tar")
    scan = layouts.scan_source(root, "tar")
    reader = SourceReader(root)
    try:
        for entry in scan.entries:
            name = entry.path.split(label_files.TAR_SEP)[-1]
            original = (
                ilsvrc_sample / "train" / entry.wnid / name
                if entry.split == "train"
                else ilsvrc_sample / "val_flat" / name
            )
            data = reader.read(entry.path, entry.offset, entry.size)
            assert data == original.read_bytes(), entry.path
    finally:
        reader.close()


def test_full_class_list_labels_every_val_image_in_standard_order(ilsvrc_sample, tmp_path):
    root = build_kaggle(ilsvrc_sample, tmp_path / "kaggle")
    scan = layouts.scan_source(root, "kaggle")
    mapping = ilsvrc_sample / "LOC_synset_mapping.txt"
    classes = layouts.class_list(scan, mapping)
    standard = [line.split()[0] for line in mapping.read_text().splitlines()]
    assert len(classes.wnids) == 1000 and classes.wnids == sorted(standard) == standard
    assert classes.names[0] == mapping.read_text().splitlines()[0].split(" ", 1)[1]
    for entry, label in layouts.assign_labels(scan, classes):
        assert label == standard.index(entry.wnid)


def test_folder_layout_with_wnid_folders(image_tree):
    scan = layouts.scan_source(image_tree.root, "auto")
    assert scan.layout == "folder"
    classes = layouts.class_list(scan, None)
    assert len(classes.wnids) == 10 and classes.wnids == sorted(classes.wnids)
    labelled = layouts.assign_labels(scan, classes)
    assert sum(e.split == "train" for e, _ in labelled) == 200
    assert sum(e.split == "val" for e, _ in labelled) == 100
    for entry, label in labelled:
        assert entry.path.split("/")[1] == classes.wnids[label]


def test_class_name_folders_any_extension_case_and_val_only_classes(tmp_path, synthetic_tree):
    source = sorted(synthetic_tree.root.glob("train/*/*.JPEG"))
    files = {
        "train/tabby cat/a.jpg": source[0],
        "train/tabby cat/b.JPG": source[1],
        "train/dog/c.Jpeg": source[2],
        "val/dog/d.jpeg": source[3],
        "val/zebra/e.JPEG": source[4],  # a class the train split lacks
        "train/dog/notes.txt": None,
    }
    for rel, src in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if src is None:
            (tmp_path / rel).write_text("not an image")
        else:
            shutil.copy(src, tmp_path / rel)
    scan = layouts.scan_source(tmp_path, "auto")
    assert scan.layout == "folder"
    assert scan.ignored == ["train/dog/notes.txt"]
    classes = layouts.class_list(scan, None)
    assert classes.wnids == ["dog", "tabby cat"]
    labels = {e.path: (label, e.problem) for e, label in layouts.assign_labels(scan, classes)}
    assert labels["train/tabby cat/b.JPG"] == (1, None)
    assert labels["val/dog/d.jpeg"] == (0, None)
    assert labels["val/zebra/e.JPEG"][0] == -1
    assert "class zebra is not in the class list" in labels["val/zebra/e.JPEG"][1]


def test_layout_errors_say_what_was_expected(tmp_path, ilsvrc_sample):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="(?s)cannot tell the layout.*kaggle.*devkit"):
        layouts.scan_source(tmp_path / "empty", "auto")
    with pytest.raises(LayoutError, match="is not a folder"):
        layouts.scan_source(tmp_path / "missing", "folder")
    root = build_devkit(ilsvrc_sample, tmp_path / "devkit")
    (root / "ILSVRC2012_devkit_t12" / "data" / "map_clsloc.txt").unlink()
    with pytest.raises(LayoutError, match="neither map_clsloc.txt nor meta.mat"):
        layouts.scan_source(root, "devkit")
    with pytest.raises(LayoutError, match="tar layout: .*ILSVRC2012_img_train.tar not found"):
        layouts.scan_source(root, "tar")


def test_classes_file_errors(tmp_path, synthetic_tree):
    scan = layouts.scan_source(synthetic_tree.root, "folder")
    with pytest.raises(LayoutError, match="data.classes_file .* not found"):
        layouts.class_list(scan, tmp_path / "nope.txt")
    dup = tmp_path / "dup.txt"
    dup.write_text("n01440764 tench\nn01440764 again\n")
    with pytest.raises(LayoutError, match="dup.txt:2: class n01440764 is listed twice"):
        layouts.class_list(scan, dup)

"""Find the images of an ImageNet copy and their classes, whatever its layout.

Four layouts (DESIGN section 3):

* ``folder``: ``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG`` (wnid or class-name folders,
  any case of the extension).
* ``kaggle``: ``ILSVRC/Data/CLS-LOC/train/<wnid>/`` and a flat ``.../val/``, labelled by
  ``LOC_val_solution.csv``, class names from ``LOC_synset_mapping.txt``.
* ``devkit``: ``train/<wnid>/`` and a flat ``val/``, labelled by the devkit's
  ``ILSVRC2012_validation_ground_truth.txt`` (ILSVRC2012_IDs, *not* sorted-wnid order) and the
  id -> wnid map (``map_clsloc.txt`` or ``meta.mat``).
* ``tar``: the original ``ILSVRC2012_img_train.tar`` (a tar of per-class tars) and
  ``ILSVRC2012_img_val.tar``, read in place: the index records where each member's bytes start
  in the outer tar, so the shard jobs seek to them without extracting 1.28 M files.

Class indices come from ``data.classes_file`` or the sorted train classes, never from val: a
val image whose class is not in the list keeps a row with label -1 and a ``problem`` that the
shard stage turns into a quarantine entry, so nothing disappears silently.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png"})
TAR_SEP = "::"
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d+)")


class LayoutError(PipelineError, ValueError):
    """The folder does not look like the layout asked for, or a label file is unusable."""


@dataclass
class Entry:
    """One image found in the source."""

    path: str  # relative to the data root; "outer.tar::inner.tar::member" inside tars
    split: str
    wnid: str  # class folder / synset id; "" when unknown
    size: int
    offset: int = -1  # where the member's bytes start in the outer tar; -1 for a plain file
    problem: str | None = None  # why it cannot be labelled


@dataclass
class Scan:
    """What a layout reader found."""

    layout: str
    entries: list[Entry]
    names: dict[str, str] = field(default_factory=dict)  # wnid -> human-readable name
    ignored: list[str] = field(default_factory=list)  # non-image files that were skipped
    label_source: str = "class folders"


@dataclass(frozen=True)
class ClassList:
    wnids: list[str]
    names: list[str]
    source: str

    def index(self) -> dict[str, int]:
        return {wnid: i for i, wnid in enumerate(self.wnids)}


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------------
# Detection


def detect_layout(root: Path) -> str:
    if not root.is_dir():
        raise LayoutError(f"data.root {root} is not a folder")
    if (root / TRAIN_TAR).is_file() or (root / VAL_TAR).is_file():
        return "tar"
    if (root / "ILSVRC" / "Data" / "CLS-LOC").is_dir():
        return "kaggle"
    val = root / "val"
    if (root / "train").is_dir() and val.is_dir():
        if any(e.is_file() and is_image_name(e.name) for e in os.scandir(val)):
            return "devkit"
        return "folder"
    raise LayoutError(
        f"cannot tell the layout of {root}: expected one of\n"
        f"  tar:    {TRAIN_TAR} and {VAL_TAR}\n"
        f"  kaggle: ILSVRC/Data/CLS-LOC/{{train,val}} with {KAGGLE_SOLUTION}\n"
        f"  devkit: train/<wnid>/ and a flat val/ with {GROUND_TRUTH}\n"
        f"  folder: train/<class>/ and val/<class>/\n"
        "Set data.layout explicitly to get a precise error for the one you meant."
    )


# --------------------------------------------------------------------------------------------
# Readers


def _class_folders(split_dir: Path, split: str, root: Path, scan: Scan) -> None:
    """Append `split_dir/<class>/<image>` entries; loose files are reported as ignored."""
    for cls in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if not cls.is_dir():
            scan.ignored.append(os.path.relpath(cls.path, root))
            continue
        # One relpath per folder, not per file: per file it took 60 % of the scan (profiled).
        folder = os.path.relpath(cls.path, root)
        for item in sorted(os.scandir(cls.path), key=lambda e: e.name):
            rel = f"{folder}/{item.name}"
            if item.is_file() and is_image_name(item.name):
                scan.entries.append(Entry(rel, split, cls.name, item.stat().st_size))
            else:
                scan.ignored.append(rel)


def _flat_files(split_dir: Path, split: str, root: Path, scan: Scan) -> list[Entry]:
    found = []
    folder = os.path.relpath(split_dir, root)
    for item in sorted(os.scandir(split_dir), key=lambda e: e.name):
        rel = f"{folder}/{item.name}"
        if item.is_file() and is_image_name(item.name):
            found.append(Entry(rel, split, "", item.stat().st_size))
        else:
            scan.ignored.append(rel)
    scan.entries.extend(found)
    return found


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise LayoutError(f"{what}: folder {path} not found")
    return path


def read_folder(root: Path) -> Scan:
    scan = Scan("folder", [])
    for split in ("train", "val"):
        _class_folders(_require_dir(root / split, "folder layout"), split, root, scan)
    return scan


def read_kaggle(root: Path) -> Scan:
    base = _require_dir(root / "ILSVRC" / "Data" / "CLS-LOC", "kaggle layout")
    scan = Scan("kaggle", [], label_source=KAGGLE_SOLUTION)
    _class_folders(_require_dir(base / "train", "kaggle layout"), "train", root, scan)
    val = _flat_files(_require_dir(base / "val", "kaggle layout"), "val", root, scan)
    labels = read_kaggle_solution(_find_file(root, KAGGLE_SOLUTION, "kaggle layout"))
    _label_val(val, labels, f"no row in {KAGGLE_SOLUTION}")
    synsets = _find_optional(root, KAGGLE_SYNSETS)
    if synsets is not None:
        scan.names = read_class_lines(synsets.read_text().splitlines(), str(synsets))[1]
    return scan


def read_devkit(root: Path) -> Scan:
    scan = Scan("devkit", [])
    _class_folders(_require_dir(root / "train", "devkit layout"), "train", root, scan)
    val = _flat_files(_require_dir(root / "val", "devkit layout"), "val", root, scan)
    labels, scan.names, scan.label_source = devkit_val_labels(root)
    _label_val(val, labels, f"no line for it in {GROUND_TRUTH}")
    return scan


def read_tar(root: Path) -> Scan:
    scan = Scan("tar", [])
    train_tar = root / TRAIN_TAR
    val_tar = root / VAL_TAR
    for tar_path in (train_tar, val_tar):
        if not tar_path.is_file():
            raise LayoutError(f"tar layout: {tar_path} not found")
    with tarfile.open(train_tar, mode="r:") as outer:
        for member in outer:
            if not member.isfile():
                continue
            if not member.name.endswith(".tar"):
                scan.ignored.append(f"{TRAIN_TAR}{TAR_SEP}{member.name}")
                continue
            wnid = Path(member.name).name[: -len(".tar")]
            with tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner:
                for item in inner:
                    rel = f"{TRAIN_TAR}{TAR_SEP}{member.name}{TAR_SEP}{item.name}"
                    if item.isfile() and is_image_name(item.name):
                        offset = member.offset_data + item.offset_data
                        scan.entries.append(Entry(rel, "train", wnid, item.size, offset))
                    else:
                        scan.ignored.append(rel)
    val = []
    for item in _iter_tar_files(val_tar):
        rel = f"{VAL_TAR}{TAR_SEP}{item.name}"
        if is_image_name(item.name):
            val.append(Entry(rel, "val", "", item.size, item.offset_data))
        else:
            scan.ignored.append(rel)
    scan.entries.extend(val)
    try:
        labels, scan.names, scan.label_source = devkit_val_labels(root)
    except LayoutError as devkit_error:
        solution = _find_optional(root, KAGGLE_SOLUTION)
        if solution is None:
            raise LayoutError(
                f"tar layout: no labels for {VAL_TAR}: {devkit_error}; "
                f"or put {KAGGLE_SOLUTION} under {root}"
            ) from None
        labels, scan.label_source = read_kaggle_solution(solution), KAGGLE_SOLUTION
    _label_val(val, labels, f"no label for it in {scan.label_source}")
    return scan


def _iter_tar_files(path: Path) -> Iterator[tarfile.TarInfo]:
    with tarfile.open(path, mode="r:") as tar:
        yield from (m for m in tar if m.isfile())


READERS: dict[str, Callable[[Path], Scan]] = {
    "folder": read_folder,
    "kaggle": read_kaggle,
    "devkit": read_devkit,
    "tar": read_tar,
}


# --------------------------------------------------------------------------------------------
# Label files


def _label_val(entries: list[Entry], labels: dict[str, str], missing: str) -> None:
    """Give each flat val entry its wnid from `labels` (keyed by file stem)."""
    for entry in entries:
        stem = Path(entry.path.split(TAR_SEP)[-1]).stem
        wnid = labels.get(stem)
        if wnid is None:
            entry.problem = missing
        else:
            entry.wnid = wnid


def read_kaggle_solution(path: Path) -> dict[str, str]:
    """`ImageId,PredictionString` where PredictionString repeats `wnid x0 y0 x1 y1`."""
    labels = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(
            reader.fieldnames
        ):
            raise LayoutError(f"{path}: expected columns ImageId,PredictionString")
        for line, row in enumerate(reader, start=2):
            tokens = (row["PredictionString"] or "").split()
            if not tokens:
                raise LayoutError(f"{path}:{line}: empty PredictionString for {row['ImageId']}")
            labels[row["ImageId"]] = tokens[0]
    return labels


def devkit_val_labels(root: Path) -> tuple[dict[str, str], dict[str, str], str]:
    """Val labels from the devkit: {ILSVRC2012_val_NNNNNNNN: wnid}, {wnid: name}, source.

    Looks for the extracted files under `root`, then inside `ILSVRC2012_devkit_t12.tar.gz`.
    """
    truth_path = _find_optional(root, GROUND_TRUTH)
    if truth_path is not None:
        truth_text, truth_source = truth_path.read_text(), str(truth_path)
        id_map = _devkit_id_map_from_files(root)
    else:
        devkit = _find_optional(root, DEVKIT_TAR)
        if devkit is None:
            raise LayoutError(f"neither {GROUND_TRUTH} nor {DEVKIT_TAR} found under {root}")
        truth_text, truth_source, id_map = _read_devkit_tar(devkit)
    labels = {}
    for number, line in enumerate(truth_text.split(), start=1):
        try:
            ilsvrc_id = int(line)
        except ValueError:
            raise LayoutError(f"{truth_source}:{number}: {line!r} is not an ID") from None
        if ilsvrc_id not in id_map:
            raise LayoutError(
                f"{truth_source}:{number}: ILSVRC2012_ID {ilsvrc_id} is not in the id map"
            )
        labels[f"ILSVRC2012_val_{number:08d}"] = id_map[ilsvrc_id][0]
    names = dict(id_map.values())
    return labels, names, Path(truth_source).name


def _devkit_id_map_from_files(root: Path) -> dict[int, tuple[str, str]]:
    map_path = _find_optional(root, "map_clsloc.txt")
    if map_path is not None:
        return parse_map_clsloc(map_path.read_text(), str(map_path))
    meta = _find_optional(root, "meta.mat")
    if meta is not None:
        return parse_meta_mat(meta.read_bytes(), str(meta))
    raise LayoutError(f"devkit labels: neither map_clsloc.txt nor meta.mat found under {root}")


def _read_devkit_tar(path: Path) -> tuple[str, str, dict[int, tuple[str, str]]]:
    with tarfile.open(path, mode="r:*") as tar:
        members = {Path(m.name).name: m for m in tar if m.isfile()}
        if GROUND_TRUTH not in members or "meta.mat" not in members:
            raise LayoutError(f"{path}: expected data/{GROUND_TRUTH} and data/meta.mat inside")
        truth = tar.extractfile(members[GROUND_TRUTH]).read().decode()
        meta = tar.extractfile(members["meta.mat"]).read()
    source = f"{path}{TAR_SEP}{GROUND_TRUTH}"
    return truth, source, parse_meta_mat(meta, f"{path}{TAR_SEP}meta.mat")


def parse_map_clsloc(text: str, source: str) -> dict[int, tuple[str, str]]:
    """`wnid ILSVRC2012_ID name` per line -> {id: (wnid, name)}."""
    id_map = {}
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[1].isdigit():
            raise LayoutError(f"{source}:{number}: expected 'wnid id name', got {line!r}")
        id_map[int(parts[1])] = (parts[0], " ".join(parts[2:]))
    return id_map


def parse_meta_mat(data: bytes, source: str) -> dict[int, tuple[str, str]]:
    """The devkit's meta.mat: `synsets` with ILSVRC2012_ID, WNID, words; leaves are the classes."""
    import scipy.io

    try:
        synsets = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
    except Exception as err:  # scipy raises several types for a bad file
        raise LayoutError(f"{source}: cannot read the synsets table: {err}") from None
    id_map = {}
    for synset in synsets.ravel():
        if int(synset["num_children"]) == 0:
            id_map[int(synset["ILSVRC2012_ID"])] = (str(synset["WNID"]), str(synset["words"]))
    return id_map


def read_class_lines(lines: list[str], source: str) -> tuple[list[str], dict[str, str]]:
    """`<wnid> [name]` per line (LOC_synset_mapping.txt has this form); order = label order."""
    wnids: list[str] = []
    names: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        wnid, _, name = line.strip().partition(" ")
        if not wnid:
            continue
        if wnid in names:
            raise LayoutError(f"{source}:{number}: class {wnid} is listed twice")
        wnids.append(wnid)
        names[wnid] = name.strip()
    if not wnids:
        raise LayoutError(f"{source}: no classes in the file")
    return wnids, names


def _find_file(root: Path, name: str, what: str) -> Path:
    found = _find_optional(root, name)
    if found is None:
        raise LayoutError(f"{what}: {name} not found under {root}")
    return found


def _find_optional(root: Path, name: str, max_depth: int = 3) -> Path | None:
    """`root/name`, or the first `name` in a folder at most `max_depth` below `root`.

    Image folders are not descended into (they hold up to a million files)."""
    frontier = [root]
    for _ in range(max_depth + 1):
        next_frontier = []
        for folder in frontier:
            candidate = folder / name
            if candidate.is_file():
                return candidate
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.is_dir() and entry.name not in {"train", "val", "test"}:
                    next_frontier.append(Path(entry.path))
        frontier = next_frontier
    return None


# --------------------------------------------------------------------------------------------
# Putting it together


def scan_source(root: Path, layout: str) -> Scan:
    if layout == "auto":
        layout = detect_layout(root)
    elif not root.is_dir():
        raise LayoutError(f"data.root {root} is not a folder")
    return READERS[layout](root)


def class_list(scan: Scan, classes_file: Path | None) -> ClassList:
    if classes_file is not None:
        if not classes_file.is_file():
            raise LayoutError(f"data.classes_file {classes_file} not found")
        wnids, names = read_class_lines(classes_file.read_text().splitlines(), str(classes_file))
        names = {w: names[w] or scan.names.get(w, w) for w in wnids}
        return ClassList(wnids, [names[w] for w in wnids], str(classes_file))
    wnids = sorted({e.wnid for e in scan.entries if e.split == "train"})
    if not wnids:
        raise LayoutError(
            "no train images found, so there is no class list: "
            "add train/<class>/ folders or set data.classes_file"
        )
    return ClassList(wnids, [scan.names.get(w, w) for w in wnids], "sorted train classes")


def assign_labels(scan: Scan, classes: ClassList) -> list[tuple[Entry, int]]:
    """Pair every entry with its label; -1 (with a problem) when its class is not listed."""
    index = classes.index()
    labelled = []
    for entry in scan.entries:
        label = index.get(entry.wnid, -1) if entry.problem is None else -1
        if label < 0 and entry.problem is None:
            entry.problem = f"class {entry.wnid} is not in the class list ({classes.source})"
        labelled.append((entry, label))
    return labelled


class SourceReader:
    """Reads an entry's bytes: a plain file, or a slice of an outer tar (kept open)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tars: dict[str, io.BufferedReader] = {}

    def read(self, path: str, offset: int, size: int) -> bytes:
        if offset < 0:
            return (self.root / path).read_bytes()
        outer = path.split(TAR_SEP, 1)[0]
        handle = self._tars.get(outer)
        if handle is None:
            # Kept open across reads (a shard seeks to thousands of members); closed by close().
            handle = self._tars[outer] = open(self.root / outer, "rb")  # noqa: SIM115
        handle.seek(offset)
        return handle.read(size)

    def close(self) -> None:
        for handle in self._tars.values():
            handle.close()
        self._tars.clear()

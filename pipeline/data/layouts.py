"""Find the images of an ImageNet copy and their classes, whatever its layout.

Four layouts (docs/design.md, "Layouts"):

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

import contextlib
import io
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.label_files import (
    GROUND_TRUTH,
    KAGGLE_SOLUTION,
    KAGGLE_SYNSETS,
    TAR_SEP,
    devkit_val_labels,
    find_file,
    find_optional,
    read_class_lines,
    read_kaggle_solution,
)
from pipeline.errors import LayoutError

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png"})
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"


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
        # One relpath per folder, not per file: per file it dominates a scan of 1.28 M files.
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
    labels = read_kaggle_solution(find_file(root, KAGGLE_SOLUTION, "kaggle layout"))
    _label_val(val, labels, f"no row in {KAGGLE_SOLUTION}")
    synsets = find_optional(root, KAGGLE_SYNSETS)
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
    with _tar_errors(train_tar), tarfile.open(train_tar, mode="r:") as outer:
        for member in _whole_tar(outer, train_tar):
            if not member.isfile():
                continue
            if not member.name.endswith(".tar"):
                scan.ignored.append(f"{TRAIN_TAR}{TAR_SEP}{member.name}")
                continue
            wnid = Path(member.name).name[: -len(".tar")]
            inner_name = f"{train_tar}{TAR_SEP}{member.name}"
            with (
                _tar_errors(inner_name),
                tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner,
            ):
                for item in _whole_tar(inner, inner_name):
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
        solution = find_optional(root, KAGGLE_SOLUTION)
        if solution is None:
            raise LayoutError(
                f"tar layout: no labels for {VAL_TAR}: {devkit_error}; "
                f"or put {KAGGLE_SOLUTION} under {root}"
            ) from None
        labels, scan.label_source = read_kaggle_solution(solution), KAGGLE_SOLUTION
    _label_val(val, labels, f"no label for it in {scan.label_source}")
    return scan


def _iter_tar_files(path: Path) -> Iterator[tarfile.TarInfo]:
    with _tar_errors(path), tarfile.open(path, mode="r:") as tar:
        yield from (m for m in _whole_tar(tar, path) if m.isfile())


def _whole_tar(tar: tarfile.TarFile, name: str | Path) -> Iterator[tarfile.TarInfo]:
    """Every member, then proof the archive reached its zero end block: tarfile stops quietly
    at a damaged header or a cut at a header boundary, which would drop every image after it."""
    yield from tar
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or any(block):
        raise LayoutError(
            f"tar layout: {name} stops at byte {tar.offset} without its end-of-archive block "
            f"(after {len(tar.members)} members): a header there is damaged or the file is cut "
            "short, so what follows cannot be listed; copy it again"
        )


@contextlib.contextmanager
def _tar_errors(name: str | Path) -> Iterator[None]:
    """A tar that cannot be read (damaged, cut short, not a tar) as an error naming it."""
    try:
        yield
    except (tarfile.TarError, EOFError) as err:
        raise LayoutError(
            f"tar layout: {name} cannot be read as a tar ({err}): it is damaged or cut short; "
            "copy it again"
        ) from None


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

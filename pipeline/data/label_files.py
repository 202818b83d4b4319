"""The label files of the ILSVRC2012 distributions, read with errors that name file and line.

* Kaggle: `LOC_val_solution.csv` (val labels, with boxes) and `LOC_synset_mapping.txt` (the
  class list in sorted-wnid order, with names).
* The devkit: `ILSVRC2012_validation_ground_truth.txt` (one ILSVRC2012_ID per val image) and the
  id -> wnid map, `map_clsloc.txt` or `meta.mat`, extracted or inside
  `ILSVRC2012_devkit_t12.tar.gz`. The devkit's ids are *not* in sorted-wnid order: the map is
  applied, never assumed.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from pathlib import Path

from pipeline.errors import LayoutError

TAR_SEP = "::"  # "outer.tar::inner.tar::member": a file inside a tar
DEVKIT_TAR = "ILSVRC2012_devkit_t12.tar.gz"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"


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
    truth_path = find_optional(root, GROUND_TRUTH)
    if truth_path is not None:
        truth_text, truth_source = truth_path.read_text(), str(truth_path)
        id_map = _devkit_id_map_from_files(root)
    else:
        devkit = find_optional(root, DEVKIT_TAR)
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
    map_path = find_optional(root, "map_clsloc.txt")
    if map_path is not None:
        return parse_map_clsloc(map_path.read_text(), str(map_path))
    meta = find_optional(root, "meta.mat")
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
    try:
        for synset in synsets.ravel():
            if int(synset["num_children"]) == 0:
                id_map[int(synset["ILSVRC2012_ID"])] = (
                    _mat_text(synset["WNID"]),
                    _mat_text(synset["words"]),
                )
    except (KeyError, ValueError, TypeError, IndexError) as err:
        raise LayoutError(f"{source}: the synsets table is not the devkit's: {err}") from None
    return id_map


def _mat_text(value: object) -> str:
    """A MATLAB char field as loadmat gives it: a str, or an empty array for ''."""
    return "" if getattr(value, "size", 1) == 0 else str(value)


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


def find_file(root: Path, name: str, what: str) -> Path:
    found = find_optional(root, name)
    if found is None:
        raise LayoutError(f"{what}: {name} not found under {root}")
    return found


def find_optional(root: Path, name: str, max_depth: int = 3) -> Path | None:
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

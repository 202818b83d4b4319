"""What benchmarks/scale.py's sections share: ImageNet's sizes, inputs shaped like them (wnid
folders, the devkit's flat val, the original tars, photographs), and how a command's time,
peak memory and growth are measured."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

IMAGENET_TRAIN = 1_281_167
IMAGENET_VAL = 50_000
IMAGENET_CLASSES = 1000
REAL_DATA = Path(os.environ.get("PIPELINE_SHARED_DATA", PROJECT.parent / "shared" / "data"))
Row = dict[str, Any]
SECTIONS = ("index", "shard", "snakemake", "sampler", "open", "checkpoint", "tracking")


# --------------------------------------------------------------------------------------------
# Inputs


def wnid(i: int) -> str:
    return f"n{10_000_000 + 7919 * i:08d}"


def small_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """`count` distinct small JPEGs (a few hundred bytes): names and sizes are all `index`
    reads, so the bytes only need to be valid and distinct enough."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        pixels = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=50)
        out.append(buffer.getvalue())
    return out


def devkit_labels(root: Path, n_val: int, classes: int) -> None:
    """The devkit's ground truth (line i: the ILSVRC2012_ID of val image i) and id map."""
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{1 + i % classes}\n" for i in range(n_val))
    )
    (root / "map_clsloc.txt").write_text(
        "".join(f"{wnid(i)} {i + 1} class_{i}\n" for i in range(classes))
    )


def val_name(i: int) -> str:
    return f"ILSVRC2012_val_{i + 1:08d}.JPEG"


def devkit_tree(root: Path, pool: list[Path], n_train: int, n_val: int, classes: int) -> Path:
    """train/<wnid>/*.JPEG and a flat val/, hard links to `pool` in turn."""
    for c in range(classes):
        (root / "train" / wnid(c)).mkdir(parents=True)
    (root / "val").mkdir()
    for i in range(n_train):
        c = i % classes
        os.link(pool[i % len(pool)], root / "train" / wnid(c) / f"{wnid(c)}_{i}.JPEG")
    for i in range(n_val):
        os.link(pool[i % len(pool)], root / "val" / val_name(i))
    devkit_labels(root, n_val, classes)
    return root


def tar_tree(root: Path, pool: list[bytes], n_train: int, n_val: int, classes: int) -> Path:
    """ILSVRC2012_img_train.tar (one tar per class inside) and ILSVRC2012_img_val.tar."""
    root.mkdir(parents=True)

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    per_class = [list(range(c, n_train, classes)) for c in range(classes)]
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w", format=tarfile.GNU_FORMAT) as outer:
        for c, members in enumerate(per_class):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w", format=tarfile.GNU_FORMAT) as tar:
                for i in members:
                    add(tar, f"{wnid(c)}_{i}.JPEG", pool[i % len(pool)])
            add(outer, f"{wnid(c)}.tar", inner.getvalue())
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(n_val):
            add(tar, val_name(i), pool[i % len(pool)])
    devkit_labels(root, n_val, classes)
    return root


def photographs(count: int) -> list[bytes]:
    """ImageNet-sized JPEGs: the ILSVRC2012 sample's real files when present, else drawn
    500 x 375 photographs-like images (smooth shading plus noise) at quality 90."""
    sample = REAL_DATA / "ilsvrc2012-sample"
    if sample.is_dir():
        files = sorted(p for p in sample.rglob("*") if p.suffix.upper() == ".JPEG")
        if files:
            return [p.read_bytes() for p in files]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        w, h = [(500, 375), (375, 500), (500, 333), (640, 480)][i % 4]
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(40, 200, 3)
        pixels = base + 40 * np.sin(x / (7 + i % 5))[..., None] + (x - y)[..., None] / 8
        pixels += rng.normal(0, 12, pixels.shape)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def write_config(folder: Path, root: Path, **data: Any) -> Path:
    import yaml

    config = {
        "experiment": "scale",
        "results_dir": str(folder / "results"),
        "data": {"name": "scale", "root": str(root), **data},
        "launcher": {"cluster": "local"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# --------------------------------------------------------------------------------------------
# Measuring


# Runs the command and reports its peak memory. Linux counts a child's peak from the moment it
# was forked, so a child of this (large) process would report at least this process's size:
# the command is forked from this small interpreter instead.
PEAK_OF = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(args: list[str], **kwargs: Any) -> tuple[float, float]:
    """Run a command; its wall seconds and peak resident MB."""
    with tempfile.NamedTemporaryFile() as peak:
        started = time.perf_counter()
        returncode = subprocess.run(
            [sys.executable, "-c", PEAK_OF, peak.name, *args], cwd=PROJECT, **kwargs
        ).returncode
        seconds = time.perf_counter() - started
        if returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited with {returncode}")
        return seconds, int(Path(peak.name).read_text()) / 1024


def pipeline_stage(*args: str, log: Path) -> tuple[float, float]:
    with open(log, "w") as handle:
        return run_measured(
            [sys.executable, "-m", "pipeline", *args], stdout=handle, stderr=subprocess.STDOUT
        )


def fit_growth(sizes: list[float], values: list[float]) -> tuple[float, float]:
    """(k, c) of value = c x size^k, least squares in log-log; k = 0 for one size."""
    if len(sizes) < 2 or min(values) <= 0:
        return 0.0, (values[-1] if values else 0.0)
    k, log_c = np.polyfit(np.log(sizes), np.log(values), 1)
    return float(k), float(math.exp(log_c))


def growth_row(
    quantity: str, unit: str, sizes: list[float], values: list[float], target: float, what: str
) -> Row:
    """One line of the summary table: the measured points, the growth exponent and the value
    at `target` (measured there, or extrapolated from the fit)."""
    k, c = fit_growth(sizes, values)
    # The slope between the two largest sizes: a fixed cost (start-up, imports) flattens the
    # fit over all sizes, so faster-than-linear growth shows here first.
    k_top = fit_growth(sizes[-2:], values[-2:])[0] if len(sizes) > 1 else 0.0
    measured = dict(zip(sizes, values, strict=True))
    at_target = measured.get(target, c * target**k)
    return {
        "quantity": quantity,
        "unit": unit,
        "sizes": sizes,
        "values": [round(v, 4) for v in values],
        "growth_exponent": round(k, 2),
        "growth_exponent_largest": round(k_top, 2),
        "target": target,
        "target_label": what,
        "at_target": round(at_target, 4),
        "extrapolated": target not in measured,
    }

"""The embedded demo dataset: scikit-learn's bundled handwritten digits (1,797 real 8x8 scans
that ship inside the scikit-learn wheel) written out as an ImageNet-style JPEG tree,
``train/<class>/*.JPEG`` and ``val/<class>/*.JPEG``, so `make run` needs no download."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from pipeline import atomic
from pipeline.config import Config
from pipeline.paths import DataPaths

MARKER = ".pipeline-demo"  # marks a folder this stage may replace
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_demo_tree(config: Config) -> dict[str, int]:
    from sklearn.datasets import load_digits

    if config.data.demo is None:
        raise ValueError("data.demo is not set: this config does not describe the demo dataset")
    size = config.data.demo.image_size
    root = config.data.root_path
    if root.exists() and not (root / MARKER).is_file():
        raise FileExistsError(
            f"refusing to replace {root}: it exists and was not written by demo-data; "
            "point data.root at a new folder for the demo"
        )
    digits = load_digits()
    rng = np.random.default_rng(config.data.shuffle_seed)
    held_out = np.zeros(len(digits.target), dtype=bool)
    for label in range(10):  # stratified: the same share of every class goes to val
        members = rng.permutation(np.flatnonzero(digits.target == label))
        held_out[members[: round(len(members) * config.data.demo.val_fraction)]] = True

    # Write into a fresh folder and swap it in, so a re-run never mixes old and new files.
    staging = root.with_name(f".{root.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    counts = {"train": 0, "val": 0}
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        split = "val" if held_out[i] else "train"
        folder = staging / split / f"{label}_{CLASS_NAMES[label]}"
        folder.mkdir(parents=True, exist_ok=True)
        gray = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), mode="L")
        image = gray.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
        image.save(folder / f"digit_{i:04d}.JPEG", format="JPEG", quality=95)
        counts[split] += 1
    (staging / MARKER).write_text("written by `python -m pipeline demo-data`\n")
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(root)
    atomic.write_json(DataPaths.of(config).demo_done, {"root": str(root), **counts})
    return counts

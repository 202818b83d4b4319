"""ImageNet-shaped test data drawn with Pillow, so the suite needs nothing outside the repository.

Two trees, each shaped like one of the real folders the extra test tier uses:

* `write_image_tree`: `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`, 10 classes, 20 train and
  10 val images per class, in the kinds ImageNet really holds: varied sizes and aspect ratios,
  grayscale, CMYK and progressive JPEGs, palette and RGBA PNGs named `.JPEG`.
* `write_ilsvrc_sample`: the files of the ILSVRC2012 distribution in miniature: 50 flat
  `ILSVRC2012_val_NNNNNNNN.JPEG`, the devkit's ground truth (ILSVRC2012_IDs in the devkit's own
  synset order, not sorted-wnid order) and `map_clsloc.txt`, Kaggle's `LOC_val_solution.csv`
  (shuffled, with boxes) and `LOC_synset_mapping.txt` (1,000 classes), and one full-size train
  image for each of 20 classes that occur among the val images.

Every image's colour and stripes encode its class, so a model can learn from them.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# What the shard stage does with each kind of file (pipeline/data/images.py's actions).
KEPT = "kept"
ACTIONS = {
    "rgb": KEPT,
    "gray": "re-encoded: grayscale JPEG",
    "cmyk": "re-encoded: CMYK JPEG",
    "progressive": "re-encoded: progressive JPEG",
    "palette-png": "re-encoded: PNG file",
    "rgba-png": "re-encoded: PNG file",
}
# Train image i of every class is of kind TRAIN_KINDS[i] (plain RGB after the list ends).
TRAIN_KINDS = ["gray", "progressive", "cmyk", "palette-png", "rgba-png"]
VAL_KINDS = ["gray", "progressive"]
# Width x height of the tree's images: squares, landscape and portrait, all below 256 px.
TREE_SIZES = [(224, 224), (160, 120), (120, 160), (200, 100), (96, 144), (256, 192), (80, 80)]
# The ILSVRC sample's "full-size" images, as ImageNet's typically are.
SAMPLE_SIZES = [(500, 375), (375, 500), (500, 333), (640, 480), (500, 500), (333, 500)]


@dataclass
class ImageTree:
    """A folder of images and the shard stage's action for each train file."""

    root: Path
    train_actions: dict[str, str] = field(default_factory=dict)  # path below root -> action

    def action_counts(self) -> Counter[str]:
        return Counter(self.train_actions.values())


def wnids(count: int, seed: int) -> list[str]:
    """`count` distinct, sorted WordNet-style ids (`n` and eight digits)."""
    rng = np.random.default_rng(seed)
    return sorted(f"n{n:08d}" for n in rng.choice(10**8 - 10**6, count, replace=False) + 10**6)


def class_colour(label: int) -> np.ndarray:
    """The mean RGB colour of class `label`'s pictures (stripes and shading average out)."""
    phase = label * 2.4
    return 128 + 90 * np.array([np.sin(phase), np.sin(phase + 2.1), np.sin(phase + 4.2)])


def draw(label: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """An RGB picture whose hue and stripe direction encode `label`, with smooth shading and
    noise, so that it compresses like a photograph rather than a flat colour."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = class_colour(label)
    angle = (label % 4) * np.pi / 4
    stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) / (6 + label % 5))
    shade = (x / width - y / height) * 40
    pixels = base + 45 * stripes[..., None] + shade[..., None]
    pixels += rng.normal(0, 8, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(image: Image.Image, kind: str) -> bytes:
    """The file bytes of `image` as one of the kinds in ACTIONS."""
    out = io.BytesIO()
    if kind == "rgb":
        image.save(out, format="JPEG", quality=90)
    elif kind == "gray":
        image.convert("L").save(out, format="JPEG", quality=90)
    elif kind == "cmyk":
        image.convert("CMYK").save(out, format="JPEG", quality=90)
    elif kind == "progressive":
        image.save(out, format="JPEG", quality=90, progressive=True)
    elif kind == "palette-png":
        palette = image.quantize(64)
        palette.info["transparency"] = 0
        palette.save(out, format="PNG", transparency=0)
    elif kind == "rgba-png":
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(image.size))
        rgba.save(out, format="PNG")
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return out.getvalue()


def write_image_tree(
    root: Path,
    classes: int = 10,
    train: int = 20,
    val: int = 10,
    seed: int = 0,
    sizes: list[tuple[int, int]] = TREE_SIZES,
    plain: bool = False,
) -> ImageTree:
    """A folder-layout tree with wnid folders (see the module docstring); with `plain`, every
    image a baseline RGB JPEG, for tests about what happens after the shard stage."""
    rng = np.random.default_rng(seed)
    tree = ImageTree(root)
    for label, wnid in enumerate(wnids(classes, seed)):
        for split, count, kinds in (("train", train, TRAIN_KINDS), ("val", val, VAL_KINDS)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                kind = kinds[i] if i < len(kinds) and not plain else "rgb"
                size = sizes[(label + i) % len(sizes)]
                name = f"{wnid}_{i:04d}.JPEG"
                (folder / name).write_bytes(encode(draw(label, size, rng), kind))
                if split == "train":
                    tree.train_actions[f"train/{wnid}/{name}"] = ACTIONS[kind]
    return tree


def write_ilsvrc_sample(root: Path, seed: int = 0) -> Path:
    """The ILSVRC2012 files in miniature (see the module docstring)."""
    rng = np.random.default_rng(seed)
    all_wnids = wnids(1000, seed + 1)
    names = {w: [f"synthetic class {i}", f"class {i}"] for i, w in enumerate(all_wnids)}
    # The devkit numbers its synsets in its own order, not the sorted one.
    devkit_order = [all_wnids[i] for i in rng.permutation(len(all_wnids))]
    devkit_id = {wnid: i + 1 for i, wnid in enumerate(devkit_order)}
    root.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {', '.join(names[w])}\n" for w in all_wnids)
    )
    (root / "map_clsloc.txt").write_text(
        "".join(f"{w} {devkit_id[w]} {names[w][0].replace(' ', '_')}\n" for w in devkit_order)
    )

    val_classes = [all_wnids[i] for i in rng.choice(len(all_wnids), 30, replace=False)]
    val_wnids = [val_classes[i % 30] for i in rng.permutation(50)]
    (root / "val_flat").mkdir(exist_ok=True)
    solution = []
    for number, wnid in enumerate(val_wnids, start=1):
        size = SAMPLE_SIZES[number % len(SAMPLE_SIZES)]
        kind = {12: "gray", 17: "progressive", 41: "cmyk"}.get(number, "rgb")
        image = draw(all_wnids.index(wnid) % 97, size, rng)
        stem = f"ILSVRC2012_val_{number:08d}"
        (root / "val_flat" / f"{stem}.JPEG").write_bytes(encode(image, kind))
        boxes = " ".join(f"{wnid} 10 20 {size[0] - 30 - k} {size[1] - 40}" for k in range(2))
        solution.append(f"{stem},{boxes} \n")
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{devkit_id[w]}\n" for w in val_wnids)
    )
    order = rng.permutation(len(solution))
    (root / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n" + "".join(solution[i] for i in order)
    )

    for wnid in sorted(set(val_wnids))[:20]:
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        size = SAMPLE_SIZES[int(rng.integers(len(SAMPLE_SIZES)))]
        image = draw(all_wnids.index(wnid) % 97, size, rng)
        (folder / f"{wnid}_{int(rng.integers(1, 10000))}.JPEG").write_bytes(encode(image, "rgb"))
    return root

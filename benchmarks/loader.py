"""Our shard loader against torchvision's ImageFolder + PIL, side by side in one run.

Both read the same JPEGs with the same augmentation (RandomResizedCrop 224, scale 0.08-1,
horizontal flip, ImageNet normalisation), batch size and worker count. Every repeat runs all
five variants (the two ceilings below, ImageFolder, ours, ours + CPU normalize); the table
gives each one's median images/s, and each ratio as the median of the ratios within a repeat
with its bootstrap 95 % interval (`benchmarks/stats.py`): variants timed in the same repeat
drift together on a noisy machine. Ours runs between the two ceilings it is divided by (one
before it, one after, swapping sides every repeat), since a shared machine's speed with both
cores busy can change within seconds; that group, ImageFolder and ours + CPU normalize run in
a balanced order (`benchmarks/order.py`).

Our loader hands uint8 batches to the training process, which normalises them on the GPU
(`Normalizer`); ImageFolder's workers normalise on the CPU. The table gives ours both ways:
as delivered (uint8, what a GPU run consumes) and with the normalisation done on the CPU in the
consuming process (what a CPU-only run pays).

The ceiling is our per-image decode + crop + resize in a tight loop on one core, times the
number of workers: what the workers could deliver with zero loader overhead, were the cores
independent. It decodes the very images, crops and flips that our loader's run in the same
repeat times (each repeat is another epoch of the sampler). Also measured: that loop in as
many processes as workers at once (all their images over the time until the last ends), which
is what the machine gives parallel workers at best.

    python benchmarks/loader.py                      # --data: ImageNet-style folder tree
    python benchmarks/loader.py --data DIR --workers 2 --batch 64 --repeats 12 --varied
    python benchmarks/loader.py --workers 1 --out results/bench/loader_one_worker.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.loader_ceilings import (  # noqa: E402
    ceiling,
    concurrent_ceiling,
    warmup_batches,
    window_keys,
)
from benchmarks.order import balanced_order  # noqa: E402
from benchmarks.report import write_benchmark_report  # noqa: E402
from benchmarks.stats import median_interval, paired_ratios  # noqa: E402
from pipeline import stages  # noqa: E402
from pipeline.config_files import load_config  # noqa: E402
from pipeline.data.loader import ShardDataset, make_loader  # noqa: E402
from pipeline.data.samplers import TrainBatchSampler  # noqa: E402
from pipeline.data.transforms import Normalizer, TrainTransform  # noqa: E402
from pipeline.paths import DataPaths  # noqa: E402


def build_shards(image_root: Path, work: Path, name: str) -> Path:
    """Shards of `image_root` under `work` (reused when they exist)."""
    config_path = work / f"{name}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(
        yaml.safe_dump(
            {
                "experiment": "bench",
                "results_dir": str(work),
                "data": {
                    "name": name,
                    "root": str(image_root),
                    "layout": "folder",
                    "num_shards": {"train": 4, "val": 1},
                    "max_side": 500,
                },
            }
        )
    )
    config = load_config(config_path)
    paths = DataPaths.of(config)
    if not paths.shard_index("train").is_file():
        stages.index(config)
        stages.all_shards(config, jobs=os.cpu_count() or 1)
    return paths.shard_dir("train")


def make_varied_copy(source: Path, target: Path, per_class: int, seed: int = 0) -> Path:
    """Re-save images at varied sizes and aspect ratios (longer side 300-500, aspect 3:4-16:9,
    either orientation), as real ImageNet photos vary."""
    if (target / "train").is_dir():
        return target
    rng = np.random.default_rng(seed)
    for class_dir in sorted((source / "train").iterdir()):
        out = target / "train" / class_dir.name
        out.mkdir(parents=True, exist_ok=True)
        (target / "val" / class_dir.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(class_dir.glob("*.JPEG"))[:per_class]:
            long_side = int(rng.integers(300, 501))
            aspect = rng.uniform(4 / 3, 16 / 9)
            size = (long_side, int(long_side / aspect))
            if rng.random() < 0.5:
                size = size[::-1]
            image = Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC)
            image.save(out / path.name, quality=90)
    for class_dir in sorted((target / "train").iterdir()):  # one val image per class
        first = next(iter(sorted(class_dir.iterdir())))
        os.link(first, target / "val" / class_dir.name / first.name)
    return target


def time_loader(loader, workers: int, batches: int, consume) -> float:
    """Images/s over `batches` batches, each passed to `consume`, in the steady state."""
    iterator = iter(loader)
    for _ in range(warmup_batches(workers)):
        consume(next(iterator))
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        consume(batch)
        images += batch[1].shape[0]
    return images / (time.perf_counter() - start)


def imagefolder_run(root: Path, batch: int, workers: int, batches: int) -> float:
    transform = T.Compose(
        [
            T.RandomResizedCrop(224),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    dataset = datasets.ImageFolder(str(root), transform=transform)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=False,
    )
    return time_loader(loader, workers, batches, lambda b: None)  # normalised floats


def ours_run(
    shards: Path, batch: int, workers: int, batches: int, epoch: int, cpu_normalize: bool
) -> float:
    dataset = ShardDataset(shards, TrainTransform(224, seed=0))
    sampler = TrainBatchSampler(len(dataset), batch, seed=0)
    sampler.set_epoch(epoch)
    normalize = Normalizer(torch.device("cpu"))
    loader = make_loader(dataset, sampler, workers)
    consume = (lambda b: normalize(b[0])) if cpu_normalize else (lambda b: None)
    return time_loader(loader, workers, batches, consume)


def run_order(repeat: int) -> list[str]:
    """The variants in the order they run in `repeat`: ours between its two ceilings, which
    swap sides every repeat; that group and the other two in a balanced order (a full cycle
    is 6 repeats)."""
    group = ["ceiling", "ours", "concurrent_ceiling"]
    if repeat % 2:
        group.reverse()
    order = []
    for unit in balanced_order(["imagefolder", "ours_cpu_norm", "ours between ceilings"], repeat):
        order.extend(group if unit == "ours between ceilings" else [unit])
    return order


def compare(name: str, image_root: Path, shards: Path, args) -> dict:
    # The ceilings decode the images our run of the same repeat times, as many as it delivers:
    # a shorter window would be the noisiest figure in every ratio on a shared machine.
    size = len(ShardDataset(shards, TrainTransform(224, seed=0)))

    def keys(repeat: int) -> list[tuple[int, int]]:
        return window_keys(size, args.batch, repeat, args.workers, args.batches)

    runs = {
        "ceiling": lambda repeat: ceiling(shards, keys(repeat)),
        "concurrent_ceiling": lambda repeat: concurrent_ceiling(shards, keys(repeat), args.workers),
        "imagefolder": lambda repeat: imagefolder_run(
            image_root / "train", args.batch, args.workers, args.batches
        ),
        "ours": lambda repeat: ours_run(
            shards, args.batch, args.workers, args.batches, repeat, cpu_normalize=False
        ),
        "ours_cpu_norm": lambda repeat: ours_run(
            shards, args.batch, args.workers, args.batches, repeat, cpu_normalize=True
        ),
    }
    rates: dict[str, list[float]] = {key: [] for key in runs}
    for repeat in range(args.repeats):  # all variants in every repeat: drift hits all alike
        for key in run_order(repeat):
            rates[key].append(runs[key](repeat))
        done = ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items())
        print(f"  [{name}] repeat {repeat + 1}: {done}", flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    # Ratios within each repeat, then their median: the machine's drift cancels within one.
    paired = {
        "ratio": paired_ratios(rates["ours"], rates["imagefolder"]),
        "ratio_cpu_normalize": paired_ratios(rates["ours_cpu_norm"], rates["imagefolder"]),
        "share_of_ceiling": paired_ratios(rates["ours"], rates["ceiling"], args.workers),
        "share_of_concurrent_ceiling": paired_ratios(rates["ours"], rates["concurrent_ceiling"]),
    }
    return {
        "images": name,
        "imagefolder_img_s": median["imagefolder"],
        "ours_img_s": median["ours"],
        "ours_cpu_normalize_img_s": median["ours_cpu_norm"],
        "ceiling_one_core_img_s": median["ceiling"],
        "ceiling_x_workers_img_s": median["ceiling"] * args.workers,
        "concurrent_ceiling_img_s": median["concurrent_ceiling"],
        "rates": rates,
        **{key: statistics.median(values) for key, values in paired.items()},
        **{f"{key}_interval": median_interval(values) for key, values in paired.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=PROJECT.parent / "shared/data/imagenette")
    parser.add_argument("--work", type=Path, default=PROJECT / "results/bench")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=80, help="timed batches per run")
    parser.add_argument(
        "--repeats", type=int, default=12, help="a multiple of 6 balances the variants' order"
    )
    parser.add_argument("--varied", action="store_true", help="also images of varied size")
    parser.add_argument("--out", type=Path, help="the JSON report (default: WORK/loader.json)")
    args = parser.parse_args()

    results = [compare("as given", args.data, build_shards(args.data, args.work, "loader"), args)]
    if args.varied:
        per_class = 700  # 7,000 images: 109 batches of 64, enough for --batches 80
        varied = make_varied_copy(args.data, args.work / f"varied-images-{per_class}", per_class)
        shards = build_shards(varied, args.work, f"varied{per_class}")
        results.append(compare("varied size", varied, shards, args))

    out = args.out or args.work / "loader.json"
    report = write_benchmark_report(out, "loader", args, results=results)
    print(
        f"\nLoader benchmark: batch {args.batch}, {args.workers} workers, "
        f"{args.batches} batches per run, {args.repeats} interleaved repeats: median img/s, "
        "and the median of the ratios within a repeat with its bootstrap 95 % interval"
    )
    print(markdown(report))


def markdown(report: dict) -> str:
    """The table of docs/performance.md, from the report's JSON."""
    workers = report["args"]["workers"]
    header = (
        "images",
        "ImageFolder img/s",
        "ours img/s",
        "ratio",
        "ours + CPU normalize",
        "ratio",
        f"ceiling x {workers}",
        "ours / ceiling",
        "loops at once",
        "ours / that",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def times(r: dict, key: str) -> str:
        low, high = r[f"{key}_interval"]
        return f"{r[key]:.2f}x ({low:.2f}-{high:.2f})"

    def share(r: dict, key: str) -> str:
        low, high = r[f"{key}_interval"]
        return f"{100 * r[key]:.1f} % ({100 * low:.1f}-{100 * high:.1f})"

    for r in report["results"]:
        cells = (
            {"as given": "224 px", "varied size": "varied"}.get(r["images"], r["images"]),
            f"{r['imagefolder_img_s']:,.0f}",
            f"{r['ours_img_s']:,.0f}",
            times(r, "ratio"),
            f"{r['ours_cpu_normalize_img_s']:,.0f}",
            times(r, "ratio_cpu_normalize"),
            f"{r['ceiling_x_workers_img_s']:,.0f}",
            share(r, "share_of_ceiling"),
            f"{r['concurrent_ceiling_img_s']:,.0f}",
            share(r, "share_of_concurrent_ceiling"),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

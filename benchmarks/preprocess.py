"""Preprocessing: index + shard throughput against the one-core ceiling, and its scaling.

* Ceiling: what the shard stage must do per image, read the file and `prepare_image` it (a full
  decode to validate it; a re-encode only when needed), in a tight loop on one core. For
  reference also a forced decode + re-encode of every image.
* The stages in one process (`index`, then every shard one after another) and with 2 shard
  jobs in parallel, as images/s of the whole dataset.
* Snakemake itself running the data rules with --cores 1 and --cores 2 (job start-up included),
  on small shards and on shards of ImageNet's size.

Runs alternate between the variants (A B C D E F, twice; the ceilings too); the table gives the
median.

    python benchmarks/preprocess.py [--data ../shared/data/imagenette] [--repeats 2]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from PIL import Image

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from pipeline.config import load_config  # noqa: E402
from pipeline.data.images import prepare_image  # noqa: E402
from pipeline.data.stages import run_all_shards, run_index  # noqa: E402
from pipeline.hardware import write_benchmark_report  # noqa: E402

# Imagenette in 8 + 2 shards of ~1,300 images, or in 2 + 1 of ~4,500: about the ~5,000 images
# of an ImageNet shard (`config/experiments/imagenet-akiba-32k.yaml`), where a job's fixed cost
# weighs less. For two jobs at once, 2 + 2 (4,735 and 1,962 images), so the jobs pair up.
SMALL_SHARDS = {"train": 8, "val": 2}
IMAGENET_SIZED_SHARDS = {"train": 2, "val": 1}
IMAGENET_SIZED_PAIRS = {"train": 2, "val": 2}


def write_config(work: Path, data: Path, name: str, num_shards: dict[str, int]) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "experiment": "bench",
                "results_dir": str(work / name),
                "data": {
                    "name": "pre",
                    "root": str(data),
                    "layout": "folder",
                    "num_shards": num_shards,
                    "max_side": 500,
                },
            }
        )
    )
    return path


def ceilings(data: Path, count: int) -> dict[str, float]:
    files = sorted(data.glob("train/*/*"))[:: max(1, len(list(data.glob("train/*/*"))) // count)]
    files = files[:count]
    start = time.perf_counter()
    for path in files:
        prepare_image(path.read_bytes(), 500, 90)
    prepare_rate = len(files) / (time.perf_counter() - start)
    start = time.perf_counter()
    for path in files:
        out = io.BytesIO()
        Image.open(path).convert("RGB").save(out, format="JPEG", quality=90)
    reencode_rate = len(files) / (time.perf_counter() - start)
    return {"read_and_prepare": prepare_rate, "decode_and_reencode": reencode_rate}


def in_process(work: Path, data: Path, jobs: int, tag: str) -> float:
    folder = work / tag
    shutil.rmtree(folder, ignore_errors=True)
    config = load_config(write_config(work, data, tag, SMALL_SHARDS))
    start = time.perf_counter()
    run_index(config)
    run_all_shards(config, jobs=jobs)
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    return elapsed


def with_snakemake(
    work: Path, data: Path, cores: int, tag: str, num_shards: dict[str, int] = SMALL_SHARDS
) -> float:
    folder = work / tag
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = write_config(work, data, tag, num_shards)
    snakemake = Path(sys.executable).parent / "snakemake"
    start = time.perf_counter()
    subprocess.run(
        [
            str(snakemake),
            "-s",
            str(PROJECT / "Snakefile"),
            "--directory",
            str(folder),
            "shard_index",
            "--configfile",
            str(config),
            "--cores",
            str(cores),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=PROJECT.parent / "shared/data/imagenette")
    parser.add_argument("--work", type=Path, default=PROJECT / "results" / "bench" / "preprocess")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    args.data = args.data.resolve()  # Snakemake runs in its own working folder
    args.work.mkdir(parents=True, exist_ok=True)
    images = len(list(args.data.glob("train/*/*"))) + len(list(args.data.glob("val/*/*")))

    # name: (parallel jobs, the one-job variant it scales from, run); the ceilings are measured
    # in every repeat as well
    single = "stages, 1 process"
    one, large = "snakemake --cores 1", "snakemake --cores 1, ImageNet-sized shards"
    variants = {
        single: (1, single, lambda r: in_process(args.work, args.data, 1, f"p1-{r}")),
        "stages, 2 shard jobs": (
            2,
            single,
            lambda r: in_process(args.work, args.data, 2, f"p2-{r}"),
        ),
        one: (1, one, lambda r: with_snakemake(args.work, args.data, 1, f"s1-{r}")),
        "snakemake --cores 2": (
            2,
            one,
            lambda r: with_snakemake(args.work, args.data, 2, f"s2-{r}"),
        ),
        large: (
            1,
            large,
            lambda r: with_snakemake(
                args.work, args.data, 1, f"s1-large-{r}", IMAGENET_SIZED_SHARDS
            ),
        ),
        "snakemake --cores 2, ImageNet-sized shards": (
            2,
            large,
            lambda r: with_snakemake(
                args.work, args.data, 2, f"s2-large-{r}", IMAGENET_SIZED_PAIRS
            ),
        ),
    }
    ceiling_runs: list[dict[str, float]] = []
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    for repeat in range(args.repeats):
        ceiling_runs.append(ceilings(args.data, 1500))
        for name, (_, _, run) in variants.items():
            seconds[name].append(run(repeat))
            print(f"  repeat {repeat + 1}: {name}: {seconds[name][-1]:.1f} s", flush=True)
    rates = {k: images / statistics.median(v) for k, v in seconds.items()}
    ceiling = {k: statistics.median(c[k] for c in ceiling_runs) for k in ceiling_runs[0]}

    per_core = ceiling["read_and_prepare"]
    print(f"\nPreprocessing {images:,} images ({args.data}), median of {args.repeats}")
    print(
        f"Ceiling on one core: read + prepare_image {per_core:.0f} img/s; forced decode + "
        f"re-encode of every image {ceiling['decode_and_reencode']:.0f} img/s"
    )
    reencode = ceiling["decode_and_reencode"]
    print(
        "| variant | images/s | per job vs read + prepare_image | per job vs decode + re-encode "
        "| vs 1 job |"
    )
    print("|---|---|---|---|---|")
    for name, rate in rates.items():
        jobs, baseline, _ = variants[name]
        print(
            f"| {name} | {rate:.0f} | {100 * rate / jobs / per_core:.0f} % "
            f"| {100 * rate / jobs / reencode:.0f} % | {rate / rates[baseline]:.2f}x |"
        )
    write_benchmark_report(
        args.work.parent / "preprocess.json",
        "preprocess",
        args,
        images=images,
        ceiling_img_s=ceiling,
        seconds=seconds,
        images_per_s=rates,
    )


if __name__ == "__main__":
    main()

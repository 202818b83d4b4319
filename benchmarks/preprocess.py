"""Preprocessing: index + shard throughput against the one-core ceiling, and its scaling.

* Ceiling: what the shard stage must do per image, read the file and `prepare_image` it (a full
  decode to validate it; a re-encode only when needed), in a tight loop on one core. For
  reference also a forced decode + re-encode of every image.
* The stages in one process (`index`, then every shard one after another) and with 2 shard
  jobs in parallel, as images/s of the whole dataset.
* Snakemake itself running the data rules with --cores 1 and --cores 2 (job start-up included),
  on small shards and on shards of ImageNet's size. From the `benchmark:` file Snakemake writes
  for each job, a second table splits that wall time: the shard jobs' own rate (process start-up
  included, and the stage alone from the shard's stats), the index and shard_index jobs, and how
  busy the cores were (the jobs' summed wall time over cores x wall time).

Runs alternate between the variants (A B C D E F, twice; the ceilings too); the table gives the
median.

    python benchmarks/preprocess.py [--data ../shared/data/imagenette] [--repeats 2]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
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

from benchmarks.report import write_benchmark_report  # noqa: E402
from pipeline import stages  # noqa: E402
from pipeline.config_files import load_config  # noqa: E402
from pipeline.data.images import prepare_image  # noqa: E402

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


def in_process(work: Path, data: Path, jobs: int, tag: str) -> dict[str, float]:
    folder = work / tag
    shutil.rmtree(folder, ignore_errors=True)
    config = load_config(write_config(work, data, tag, SMALL_SHARDS))
    start = time.perf_counter()
    stages.index(config)
    stages.all_shards(config, jobs=jobs)
    elapsed = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    return {"wall_s": elapsed}


def job_seconds(results: Path) -> dict[str, float]:
    """Wall seconds of each data job (process start to exit) from the `benchmark:` file that
    Snakemake writes beside its log, keyed by the log's name (`index`, `shard/train-00000-...`)."""
    seconds = {}
    for tsv in sorted((results / "logs").rglob("*.benchmark.tsv")):
        with tsv.open() as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        name = str(tsv.relative_to(results / "logs")).removesuffix(".benchmark.tsv")
        seconds[name] = float(row["s"])
    return seconds


def snakemake_breakdown(results: Path, elapsed: float, cores: int) -> dict[str, float]:
    """Where one Snakemake run's wall time went, from its jobs' benchmark files and the shard
    stats (`seconds`: the shard stage alone, without the job's Python start-up)."""
    jobs = job_seconds(results)
    shards = {k: v for k, v in jobs.items() if k.startswith("shard/")}
    stats = [json.loads(p.read_text()) for p in sorted(results.glob("data/*/shards/*/*-of-*.json"))]
    if len(stats) != len(shards):
        raise RuntimeError(f"{results}: {len(shards)} shard jobs timed, {len(stats)} shard stats")
    images = sum(s["manifest_rows"] for s in stats)
    return {
        "wall_s": elapsed,
        "index_s": jobs["index"],
        "shard_jobs_s": sum(shards.values()),
        "shard_index_s": jobs["shard_index"],
        "shard_job_img_s": images / sum(shards.values()),
        "shard_stage_img_s": images / sum(s["seconds"] for s in stats),
        "cores_busy": sum(jobs.values()) / (cores * elapsed),
    }


def with_snakemake(
    work: Path, data: Path, cores: int, tag: str, num_shards: dict[str, int] = SMALL_SHARDS
) -> dict[str, float]:
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
    breakdown = snakemake_breakdown(folder, time.perf_counter() - start, cores)
    shutil.rmtree(folder, ignore_errors=True)
    return breakdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=PROJECT.parent / "shared/data/imagenette")
    parser.add_argument("--work", type=Path, default=PROJECT / "results" / "bench" / "preprocess")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    args.data = args.data.resolve()  # Snakemake runs in its own working folder
    args.work.mkdir(parents=True, exist_ok=True)
    images = len(list(args.data.glob("train/*/*"))) + len(list(args.data.glob("val/*/*")))

    # name: how to run it (`_jobs` and `_one_job` read the jobs and the baseline off the name);
    # the ceilings are measured in every repeat as well
    variants = {
        "stages, 1 process": lambda r: in_process(args.work, args.data, 1, f"p1-{r}"),
        "stages, 2 shard jobs": lambda r: in_process(args.work, args.data, 2, f"p2-{r}"),
        "snakemake --cores 1": lambda r: with_snakemake(args.work, args.data, 1, f"s1-{r}"),
        "snakemake --cores 2": lambda r: with_snakemake(args.work, args.data, 2, f"s2-{r}"),
        "snakemake --cores 1, ImageNet-sized shards": lambda r: with_snakemake(
            args.work, args.data, 1, f"s1-large-{r}", IMAGENET_SIZED_SHARDS
        ),
        "snakemake --cores 2, ImageNet-sized shards": lambda r: with_snakemake(
            args.work, args.data, 2, f"s2-large-{r}", IMAGENET_SIZED_PAIRS
        ),
    }
    ceiling_runs: list[dict[str, float]] = []
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    for repeat in range(args.repeats):
        ceiling_runs.append(ceilings(args.data, 1500))
        for name, run in variants.items():
            runs[name].append(run(repeat))
            print(f"  repeat {repeat + 1}: {name}: {runs[name][-1]['wall_s']:.1f} s", flush=True)
    median = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
    rates = {k: images / m["wall_s"] for k, m in median.items()}
    ceiling = {k: statistics.median(c[k] for c in ceiling_runs) for k in ceiling_runs[0]}
    report = write_benchmark_report(
        args.work.parent / "preprocess.json",
        "preprocess",
        args,
        images=images,
        ceiling_img_s=ceiling,
        runs=runs,
        images_per_s=rates,
    )
    print(f"\nPreprocessing {images:,} images ({args.data}), median of {args.repeats}")
    print(
        f"Ceiling on one core: read + prepare_image {ceiling['read_and_prepare']:.0f} img/s; "
        f"forced decode + re-encode of every image {ceiling['decode_and_reencode']:.0f} img/s"
    )
    print(markdown(report))
    print(
        "Inside the Snakemake runs (each job's wall time from its benchmark file; a shard job's "
        "rate includes its process start-up, the stage's alone does not)"
    )
    print(snakemake_markdown(report))


def _jobs(name: str) -> int:
    """Parallel jobs of a variant: "stages, 2 shard jobs" and "--cores 2" run two."""
    return 2 if "2 shard jobs" in name or "--cores 2" in name else 1


def _one_job(name: str) -> str:
    """The one-job variant a variant scales from."""
    return name.replace("2 shard jobs", "1 process").replace("--cores 2", "--cores 1")


def markdown(report: dict) -> str:
    """The first table of docs/performance.md, from the report's JSON."""
    rates, ceiling = report["images_per_s"], report["ceiling_img_s"]
    per_core, reencode = ceiling["read_and_prepare"], ceiling["decode_and_reencode"]
    lines = [
        "| variant | images/s | per job vs read + prepare_image | per job vs decode + re-encode "
        "| vs 1 job |",
        "|---|---|---|---|---|",
    ]
    for name, rate in rates.items():
        jobs = _jobs(name)
        lines.append(
            f"| {name} | {rate:,.0f} | {100 * rate / jobs / per_core:.0f} % "
            f"| {100 * rate / jobs / reencode:.0f} % | {rate / rates[_one_job(name)]:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def snakemake_markdown(report: dict) -> str:
    """The second table: inside the Snakemake runs, from each job's benchmark file."""
    reencode = report["ceiling_img_s"]["decode_and_reencode"]
    lines = [
        "| variant | wall s | index job s | shard jobs s (sum) | shard_index job s "
        "| shard job img/s | vs re-encode | shard stage img/s | cores busy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in report["runs"].items():
        m = {f: statistics.median(r[f] for r in runs) for f in runs[0]}
        if "shard_job_img_s" not in m:
            continue
        lines.append(
            f"| {name.replace(' shards', '')} | {m['wall_s']:.1f} | {m['index_s']:.2f} "
            f"| {m['shard_jobs_s']:.2f} | {m['shard_index_s']:.2f} | {m['shard_job_img_s']:,.0f} "
            f"| {100 * m['shard_job_img_s'] / reencode:.0f} % | {m['shard_stage_img_s']:,.0f} "
            f"| {100 * m['cores_busy']:.0f} % |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

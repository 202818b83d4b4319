"""docs/scaling.md's table and its bullets on the shards, from docs/performance/scale.json
(benchmarks/scale.py) and the Slurm profile; called from the page's cog blocks."""

from __future__ import annotations

import re
from typing import Any

import figures as f


def _grown(
    label: str,
    sizes: str,
    row: dict[str, Any],
    unit: str,
    scale_by: float = 1.0,
    target: str | None = None,
) -> str:
    values = ", ".join(f.short(v * scale_by) for v in row["values"])
    at = target or f"{f.short(row['at_target'] * scale_by)} {unit}".rstrip()
    k, k_top = row["growth_exponent"], row["growth_exponent_largest"]
    return f"| {label} | {sizes} | {values} {unit} | {k:.2f} | {k_top:.2f} | {at} |".replace(
        "  |", " |"
    )


def _fitted(quantity: str, points: list[dict], size_key: str, key: str, target: float) -> dict:
    import sys

    sys.path.insert(0, str(f.ROOT))
    from benchmarks.scale_inputs import growth_row

    sizes = [float(p[size_key]) for p in points]
    return growth_row(quantity, "", sizes, [float(p[key]) for p in points], target, "")


def scaling_table() -> str:
    s, raw, sf = f.summary, f.scale(), f.shard_figures()
    rows = [
        "| quantity | sizes | measured | k (all) | k (two largest) | ImageNet / 1,024 workers |",
        "|---|---|---|---|---|---|",
    ]
    files = "N = " + ", ".join(
        f"{f.short(n / 1000)} k" if n < 1e6 else f"{n / 1e6:.2f} M"
        for n in s("index (devkit): wall time")["sizes"]
    )
    for layout, name in (("devkit", "folders"), ("tar", "tars")):
        for what, unit in (("wall time", "s"), ("peak memory", "MB"), ("manifest size", "MB")):
            sizes = files if layout == "devkit" and what == "wall time" else "same"
            rows.append(
                _grown(f"index, {name}: {what}", sizes, s(f"index ({layout}): {what}"), unit)
            )
    shard = raw["shard"]
    rows.append(
        f"| shard job ({f.number(shard['rows'])} rows, whole manifest read) | one size | "
        f"{sf['job_s']:.1f} s, {f.number(shard['images_per_s'])} images/s, peak "
        f"{f.number(shard['peak_mb'])} MB | - | - | {f.TRAIN_SHARDS} jobs: "
        f"{f.number(sf['job_minutes'])} job-minutes |"
    )
    rows.append(
        f"| verify | one shard of {f.number(sf['shard_mb'])} MB | "
        f"{f.number(sf['verify_mb_per_s'])} MB/s | - | - | {f.number(sf['total_gb'])} GB: "
        f"{sf['verify_min']:.1f} min of CPU |"
    )
    sm = raw["snakemake"]
    shards = ", ".join(f.number(p["train_shards"]) for p in sm)
    jobs = ", ".join(f.number(p["jobs"]) for p in sm)
    dry = s("snakemake -n")
    rows.append(
        _grown(
            "`snakemake -n`",
            f"{shards} shards ({jobs} jobs)",
            dry,
            "s",
            target=f"{f.short(dry['at_target'])} s (1,024 shards)",
        )
    )
    peak = _fitted("", sm, "train_shards", "dry_run_peak_mb", 1024)
    rows.append(_grown("`snakemake -n`: peak memory", "same", peak, "MB"))
    rows.append(
        _grown(
            "snakemake: first job starts after", "same", s("snakemake: first job starts after"), "s"
        )
    )
    sampler = s("train sampler: one rank's epoch")
    cover = "exact cover at every W" if all(p["exact_cover"] for p in raw["sampler"]) else "GAPS"
    worlds = "W = " + ", ".join(f.number(w) for w in sampler["sizes"])
    rows.append(
        _grown(
            "train sampler: one rank's epoch",
            worlds,
            sampler,
            "ms",
            1000,
            f"{f.short(sampler['at_target'] * 1000)} ms; {cover}",
        )
    )
    opened = raw["open"]
    shard_sizes = ", ".join(f.number(p["shards"]) for p in opened) + " shards"
    rows.append(
        _grown("dataset: open in a worker", shard_sizes, s("dataset: open in a worker"), "s")
    )
    rows.append(
        _grown(
            "dataset: checks in the main process",
            "same",
            s("dataset: checks in the main process"),
            "ms",
            1000,
        )
    )
    rows.append(
        _grown(
            "dataset: private memory per worker",
            "same",
            s("dataset: private memory per worker"),
            "MB",
        )
    )
    pages = s("dataset: shard pages mapped per worker")
    rows.append(
        _grown(
            "dataset: shard pages mapped per worker",
            "same",
            pages,
            "MB",
            target=f"{f.short(pages['at_target'])} MB, page cache (shared)",
        )
    )
    fds = s("dataset: file descriptors per worker")
    rows.append(_grown("dataset: file descriptors per worker", "same", fds, "", target="0"))
    index = _fitted("", opened, "shards", "index_json_kb", 1024)
    rows.append(
        _grown(
            "dataset: `index.json`",
            "same",
            index,
            "kB",
            target=f"{f.short(index['at_target'] / 1000)} MB",
        )
    )
    checkpoints = [p for p in raw["checkpoint"] if p["variant"] == "rng only"]
    ranks = "W = " + ", ".join(f.number(p["world_size"]) for p in checkpoints)
    rows.append(_grown("checkpoint size", ranks, s("checkpoint size (rng only)"), "MB"))
    rows.append(_grown("checkpoint save", "same", s("checkpoint save (rng only)"), "s"))
    rows.append(
        _grown("checkpoint load, rank 0", "same", s("checkpoint load (each rank) (rng only)"), "s")
    )
    gathered = _fitted("", checkpoints, "world_size", "gather_total_mb", 1024)
    per_rank = checkpoints[-1]["per_rank_kb"]
    rows.append(
        _grown(
            "per-rank parts, gathered to rank 0",
            "same",
            gathered,
            "MB",
            target=f"{f.short(gathered['at_target'])} MB ({per_rank} kB a rank)",
        )
    )
    tracking = raw["tracking"]
    journal = s("journal written per epoch")
    nodes = "W = " + ", ".join(f.number(p["world_size"]) for p in tracking)
    values = f.number(tracking[-1]["metric_values_per_epoch"])
    rows.append(
        _grown(
            "journal per epoch",
            nodes,
            journal,
            "kB",
            target=f"{f.number(journal['at_target'])} kB ({values} metric values)",
        )
    )
    rows.append(
        _grown(
            "MLflow requests per epoch",
            "same",
            s("MLflow requests per epoch"),
            "",
            target=f.number(s("MLflow requests per epoch")["at_target"]),
        )
    )
    rows.append(
        _grown(
            "MLflow logging per epoch (SQLite, background thread)",
            "same",
            s("MLflow (SQLite) logging time per epoch"),
            "s",
        )
    )
    return "\n".join(rows) + "\n"


def scaling_shard_bullets() -> str:
    """docs/scaling.md's bullets on the shards and their Slurm resources."""
    f.check_train_shards()
    sf, actions = f.shard_figures(), f.scale()["shard"]["actions"]
    sample = ", ".join(f"{f.number(n)} {_action(a)}" for a, n in actions.items())
    tar = f.summary("index (tar): wall time")["at_target"]
    tar_peak = f.summary("index (tar): peak memory")["at_target"]
    folders = f.summary("index (devkit): wall time")["at_target"]
    default_mb = f.number(f.profile()["default-resources"]["mem_mb"])
    shards = f.bullet(f"""
        **Shards**: `data.num_shards.train: {f.TRAIN_SHARDS}`, `val: 16`, as
        `config/experiments/imagenet-*.yaml` set. At the default `max_side` 500,
        {100 * actions["kept"] / sf["rows"]:.0f} % of ImageNet-sized photos are kept byte for
        byte (the sample: {sample} of {f.number(sf["rows"])}), so a shard holds about
        {f.number(sf["rows"])} images and {f.number(sf["shard_mb"])} MB
        ({f.number(sf["kb_per_image"])} kB an image). One job decodes them in about
        {sf["job_s"]:.0f} s of one core; the whole
        stage is {f.number(sf["job_minutes"])} job-minutes, plus the time your filesystem takes to
        read and write {f.number(sf["total_gb"])} GB and Slurm takes to start the jobs. More
        shards only add jobs (at 1,024 each would do {sf["job_s"] * f.TRAIN_SHARDS / 1024:.0f} s of
        work); fewer make longer ones (64 shards: {sf["job_s"] * f.TRAIN_SHARDS / 64:.0f} s each).
    """)
    slurm = f.bullet(f"""
        **Slurm resources** (`profiles/slurm/config.yaml`, sized from this table with room to
        spare): index {f.resources("index")} (measured: {f.number(tar_peak)} MB and {f.short(tar)} s
        with the tars, {f.short(folders)} s with folders, on a local disk; on a network filesystem
        1.28 M file lookups or reading through the tars take minutes); shard
        {f.resources("shard")} (measured: {f.number(sf["peak_mb"])} MB, {sf["job_s"]:.0f} s of CPU);
        verify {f.resources("verify")} at the default {default_mb} MB (measured:
        {f.number(sf["verify_mb_per_s"])} MB/s of checks: {f.number(sf["total_gb"])} GB in
        {sf["verify_min"]:.1f} min of CPU, so reading them from the shared filesystem sets its
        time).
    """)
    return f"{shards}\n{slurm}\n"


def _action(kind: str) -> str:
    """'re-encoded: downscaled' -> 're-encoded (downscaled)'."""
    return re.sub(r"^(\w[\w-]*): (.*)$", r"\1 (\2)", kind)

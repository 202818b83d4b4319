"""Figures the docs quote, read from the files that hold them: the benchmark JSON in
docs/performance/, the Slurm profile, the experiment configs and the workflow's rules.

The docs call these from cog blocks (`<!-- [[[cog ... ]]] -->` in Markdown, `# [[[cog` in
YAML): `make docs` writes the text between the markers, and `make lint` and
tests/unit/test_doc_figures.py fail when it differs from what the files say now.
"""

from __future__ import annotations

import json
import re
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PERFORMANCE = ROOT / "docs" / "performance"
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
IMAGENET_CONFIG = ROOT / "config" / "experiments" / "imagenet-akiba-32k.yaml"
TRAIN_SHARDS = 256  # what the imagenet-* configs set; checked against them below


@cache
def performance(name: str) -> dict[str, Any]:
    return json.loads((PERFORMANCE / name).read_text())


def scale() -> dict[str, Any]:
    return performance("scale.json")


def number(value: float, digits: int = 0) -> str:
    """1234.5 -> "1,234" (digits=0), 0.1234 -> "0.12" (digits=2)."""
    return f"{value:,.{digits}f}"


def sig(value: float, figures: int = 2) -> str:
    """A value to `figures` significant digits, with thousands separators, no exponent."""
    if value == 0:
        return "0"
    digits = max(0, figures - 1 - int(f"{abs(value):e}".split("e")[1]))
    return number(round(value, digits), digits)


# --------------------------------------------------------------------------------------------
# The shards at ImageNet's size (benchmarks/scale.py)


def shard_figures() -> dict[str, float]:
    """One ImageNet shard job as measured, and what 256 of them make."""
    shard = scale()["shard"]
    shard_mb = shard["rows"] * shard["shard_kb_per_image"] / 1000
    total_gb = TRAIN_SHARDS * shard_mb / 1000
    return {
        "rows": shard["rows"],
        "kb_per_image": shard["shard_kb_per_image"],
        "shard_mb": shard_mb,
        "total_gb": total_gb,
        "job_s": shard["job_s"],
        "peak_mb": shard["peak_mb"],
        "job_minutes": TRAIN_SHARDS * shard["job_s"] / 60,
        "verify_mb_per_s": shard["verify_mb_per_s"],
        "verify_min": total_gb * 1000 / shard["verify_mb_per_s"] / 60,
    }


def check_train_shards() -> None:
    for path in sorted((ROOT / "config" / "experiments").glob("imagenet-*.yaml")):
        shards = yaml.safe_load(path.read_text())["data"]["num_shards"]["train"]
        assert shards == TRAIN_SHARDS, f"{path}: {shards} train shards, the docs say 256"


def summary(quantity: str) -> dict[str, Any]:
    return next(r for r in scale()["summary"] if r["quantity"] == quantity)


def bn_buffers() -> dict[str, float]:
    """Per-rank BN buffers of ResNet-50 in a checkpoint: what "rng + BN buffers" adds."""
    points = {(p["world_size"], p["variant"]): p for p in scale()["checkpoint"]}
    per_rank_kb = points[1024, "rng + BN buffers"]["per_rank_kb"]
    per_rank_kb -= points[1024, "rng only"]["per_rank_kb"]
    return {"per_rank_kb": per_rank_kb, "at_1024_mb": per_rank_kb * 1024 / 1000}


# --------------------------------------------------------------------------------------------
# The Slurm profile and the experiment configs


@cache
def profile() -> dict[str, Any]:
    return yaml.safe_load(PROFILE.read_text())


def resources(rule: str | None = None) -> str:
    """'30 min, 4,000 MB, 1 core' for the default resources, or what `rule` changes of them."""
    own = profile()["set-resources"].get(rule, {}) if rule else profile()["default-resources"]
    parts = []
    if "runtime" in own:
        parts.append(f"{own['runtime']} min")
    if "mem_mb" in own:
        parts.append(f"{number(own['mem_mb'])} MB")
    if "cpus_per_task" in own:
        parts.append(f"{own['cpus_per_task']} core" + ("s" if own["cpus_per_task"] > 1 else ""))
    return ", ".join(parts)


def profile_resources() -> str:
    rules = "; ".join(f"{rule} {resources(rule)}" for rule in profile()["set-resources"])
    return f"every job {resources()} unless its rule sets more or less ({rules})"


def launcher_example() -> list[str]:
    """The launcher section of the paper's 32k config, as YAML."""
    launcher = yaml.safe_load(IMAGENET_CONFIG.read_text())["launcher"]
    text = yaml.safe_dump({"launcher": launcher}, sort_keys=False)
    return text.rstrip("\n").splitlines()


# --------------------------------------------------------------------------------------------
# The workflow: which rules run where


def rules() -> dict[str, list[str]]:
    """The workflow's rules by where they run: `local` (localrules: on the submitting host),
    `jobs` (the others with a command: Slurm jobs under the Slurm profile) and `targets` (no
    command: they only name files)."""
    sources = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    text = "\n".join(path.read_text() for path in sources)
    found = re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text, flags=re.MULTILINE)
    local_block = re.search(r"^localrules:\n((?:[ \t]+.*\n)+)", text, flags=re.MULTILINE)
    local = re.findall(r"\w+", local_block[1]) if local_block else []
    runs = {name for name, body in found if re.search(r"^\s+(shell|run|script):", body, re.M)}
    names = [name for name, _ in found]
    return {
        "local": [n for n in names if n in local],
        "jobs": [n for n in names if n in runs and n not in local],
        "targets": [n for n in names if n not in runs],
    }


def code_list(names: list[str]) -> str:
    quoted = [f"`{n}`" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


# --------------------------------------------------------------------------------------------
# docs/scaling.md's table


def short(value: float) -> str:
    """1.48 -> 1.5, 12.67 -> 12.7, 189.2 -> 189, 0.457 -> 0.46, 17.0 -> 17: as a reader
    compares them."""
    if abs(value) >= 100 or value == int(value):
        return number(value)
    if abs(value) >= 10:
        return number(value, 1)
    return sig(value)


def _grown(
    label: str,
    sizes: str,
    row: dict[str, Any],
    unit: str,
    scale_by: float = 1.0,
    target: str | None = None,
) -> str:
    values = ", ".join(short(v * scale_by) for v in row["values"])
    at = target or f"{short(row['at_target'] * scale_by)} {unit}".rstrip()
    k, k_top = row["growth_exponent"], row["growth_exponent_largest"]
    return f"| {label} | {sizes} | {values} {unit} | {k:.2f} | {k_top:.2f} | {at} |".replace(
        "  |", " |"
    )


def _fitted(quantity: str, points: list[dict], size_key: str, key: str, target: float) -> dict:
    import sys

    sys.path.insert(0, str(ROOT))
    from benchmarks.scale import growth_row

    sizes = [float(p[size_key]) for p in points]
    return growth_row(quantity, "", sizes, [float(p[key]) for p in points], target, "")


def scaling_table() -> str:
    s, raw, sf = summary, scale(), shard_figures()
    rows = [
        "| quantity | sizes | measured | k (all) | k (two largest) | ImageNet / 1,024 workers |",
        "|---|---|---|---|---|---|",
    ]
    files = "N = " + ", ".join(
        f"{short(n / 1000)} k" if n < 1e6 else f"{n / 1e6:.2f} M"
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
        f"| shard job ({number(shard['rows'])} rows, whole manifest read) | one size | "
        f"{sf['job_s']:.1f} s, {number(shard['images_per_s'])} images/s, peak "
        f"{number(shard['peak_mb'])} MB | - | - | {TRAIN_SHARDS} jobs: "
        f"{number(sf['job_minutes'])} job-minutes |"
    )
    rows.append(
        f"| verify | one shard of {number(sf['shard_mb'])} MB | {number(sf['verify_mb_per_s'])} "
        f"MB/s | - | - | {number(sf['total_gb'])} GB: {sf['verify_min']:.1f} min of CPU |"
    )
    sm = raw["snakemake"]
    shards = ", ".join(number(p["train_shards"]) for p in sm)
    jobs = ", ".join(number(p["jobs"]) for p in sm)
    dry = s("snakemake -n")
    rows.append(
        _grown(
            "`snakemake -n`",
            f"{shards} shards ({jobs} jobs)",
            dry,
            "s",
            target=f"{short(dry['at_target'])} s (1,024 shards)",
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
    worlds = "W = " + ", ".join(number(w) for w in sampler["sizes"])
    rows.append(
        _grown(
            "train sampler: one rank's epoch",
            worlds,
            sampler,
            "ms",
            1000,
            f"{short(sampler['at_target'] * 1000)} ms; {cover}",
        )
    )
    opened = raw["open"]
    shard_sizes = ", ".join(number(p["shards"]) for p in opened) + " shards"
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
            target=f"{short(pages['at_target'])} MB, page cache (shared)",
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
            target=f"{short(index['at_target'] / 1000)} MB",
        )
    )
    checkpoints = [p for p in raw["checkpoint"] if p["variant"] == "rng only"]
    ranks = "W = " + ", ".join(number(p["world_size"]) for p in checkpoints)
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
            target=f"{short(gathered['at_target'])} MB ({per_rank} kB a rank)",
        )
    )
    tracking = raw["tracking"]
    journal = s("journal written per epoch")
    nodes = "W = " + ", ".join(number(p["world_size"]) for p in tracking)
    values = number(tracking[-1]["metric_values_per_epoch"])
    rows.append(
        _grown(
            "journal per epoch",
            nodes,
            journal,
            "kB",
            target=f"{number(journal['at_target'])} kB ({values} metric values)",
        )
    )
    rows.append(
        _grown(
            "MLflow requests per epoch",
            "same",
            s("MLflow requests per epoch"),
            "",
            target=number(s("MLflow requests per epoch")["at_target"]),
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


def bullet(text: str) -> str:
    """A Markdown list item of `text`, wrapped at the docs' width."""
    return textwrap.fill(" ".join(text.split()), 96, initial_indent="* ", subsequent_indent="  ")


def scaling_shard_bullets() -> str:
    """docs/scaling.md's bullets on the shards and their Slurm resources."""
    check_train_shards()
    sf, actions = shard_figures(), scale()["shard"]["actions"]
    sample = ", ".join(f"{number(n)} {_action(a)}" for a, n in actions.items())
    tar = summary("index (tar): wall time")["at_target"]
    tar_peak = summary("index (tar): peak memory")["at_target"]
    folders = summary("index (devkit): wall time")["at_target"]
    default_mb = number(profile()["default-resources"]["mem_mb"])
    shards = bullet(f"""
        **Shards**: `data.num_shards.train: {TRAIN_SHARDS}`, `val: 16`, as
        `config/experiments/imagenet-*.yaml` set. At the default `max_side` 500,
        {100 * actions["kept"] / sf["rows"]:.0f} % of ImageNet-sized photos are kept byte for
        byte (the sample: {sample} of {number(sf["rows"])}), so a shard holds about
        {number(sf["rows"])} images and {number(sf["shard_mb"])} MB ({number(sf["kb_per_image"])}
        kB an image). One job decodes them in about {sf["job_s"]:.0f} s of one core; the whole
        stage is {number(sf["job_minutes"])} job-minutes, plus the time your filesystem takes to
        read and write {number(sf["total_gb"])} GB and Slurm takes to start the jobs. More
        shards only add jobs (at 1,024 each would do {sf["job_s"] * TRAIN_SHARDS / 1024:.0f} s of
        work); fewer make longer ones (64 shards: {sf["job_s"] * TRAIN_SHARDS / 64:.0f} s each).
    """)
    slurm = bullet(f"""
        **Slurm resources** (`profiles/slurm/config.yaml`, sized from this table with room to
        spare): index {resources("index")} (measured: {number(tar_peak)} MB and {short(tar)} s
        with the tars, {short(folders)} s with folders, on a local disk; on a network filesystem
        1.28 M file lookups or reading through the tars take minutes); shard
        {resources("shard")} (measured: {number(sf["peak_mb"])} MB, {sf["job_s"]:.0f} s of CPU);
        verify {resources("verify")} at the default {default_mb} MB (measured:
        {number(sf["verify_mb_per_s"])} MB/s of checks: {number(sf["total_gb"])} GB in
        {sf["verify_min"]:.1f} min of CPU, so reading them from the shared filesystem sets its
        time).
    """)
    return f"{shards}\n{slurm}\n"


def _action(kind: str) -> str:
    """'re-encoded: downscaled' -> 're-encoded (downscaled)'."""
    return re.sub(r"^(\w[\w-]*): (.*)$", r"\1 (\2)", kind)


def cog_lines(lines: list[str], prefix: str) -> None:
    """Write `lines` into the file being cogged, each behind `prefix` (a YAML comment)."""
    import cog

    for line in lines:
        cog.outl(f"{prefix}{line}".rstrip())


def profile_sizing() -> list[str]:
    """The measurements the profile's resources were sized from."""
    sf = shard_figures()
    folders = summary("index (devkit): wall time")["at_target"]
    tars = summary("index (tar): wall time")["at_target"]
    peaks = [summary(f"index ({k}): peak memory")["at_target"] for k in ("devkit", "tar")]
    return [
        "Sized from benchmarks/scale.py at ImageNet's size, with room to spare",
        "(docs/scaling.md, docs/performance/scale.json), on a local disk:",
        f"  index: {short(folders)} s (folders) / {short(tars)} s (tars), peak "
        f"{number(peaks[0])} / {number(peaks[1])} MB, for 1.28 M files;",
        f"  shard: {sf['job_s']:.0f} s of CPU, peak {number(sf['peak_mb'])} MB, for one of "
        f"{TRAIN_SHARDS} shards ({number(sf['rows'])} images);",
        f"  verify: {number(sf['verify_mb_per_s'])} MB/s of sha256 + crc32, "
        f"{number(sf['total_gb'])} GB of train shards in {sf['verify_min']:.1f} min of CPU.",
    ]


# --------------------------------------------------------------------------------------------
# README


def readme_slurm_profile() -> str:
    """README's "Profiles" item for the Slurm profile."""
    local = code_list(rules()["local"])
    return (
        bullet(f"""
        `profiles/slurm/` (`snakemake --workflow-profile profiles/slurm --configfile ...`):
        `executor: slurm` for every rule but {local}, resources for every job
        ({profile_resources()}), and `launcher.cluster: slurm` so that {local}, which stays on
        the submitting host, submits the training job through submitit. Every entry is
        commented.
    """)
        + "\n"
    )


def readme_where_rules_run() -> str:
    """README's "Where things run" item: the workflow's local rules and the others."""
    where = rules()
    return (
        bullet(f"""
        **Where things run.** {code_list(where["jobs"])} run as Slurm jobs (the Snakemake
        Slurm executor plugin); {code_list(where["local"])} runs on the host where you start
        Snakemake (the workflow's `localrules`) and submits the training job itself through
        submitit (`launcher.cluster: slurm`, set by the profile), then waits for it;
        {code_list(where["targets"])} only name files. Keep Snakemake alive with
        `tmux`/`screen` or run it in a small long-lived job; if it dies, start it again
        (`snakemake --unlock` first after a hard kill): `train` re-attaches to the running
        training job instead of submitting a second one.
    """)
        + "\n"
    )


def readme_profile_resources() -> str:
    return (
        bullet(f"""
        **The profile** (`profiles/slurm/config.yaml`, every entry commented):
        `slurm_partition` and `slurm_account` under `default-resources` (uncomment them for
        your cluster), and `runtime`, `mem_mb` and `cpus_per_task`: {profile_resources()}.
        To size them for your files and nodes, build one shard first (its `.arrow` file as the
        target) and read the job's wall seconds `s` and peak memory `max_rss` (MB) in
        `results/logs/shard/<shard>.benchmark.tsv`.
    """)
        + "\n"
    )


def readme_at_imagenet_size() -> str:
    check_train_shards()
    sf = shard_figures()
    checkpoint = summary("checkpoint size (rng only)")["at_target"]
    nodes = scale()["tracking"][-1]
    return (
        bullet(f"""
        **At ImageNet's size** (`docs/scaling.md`, from `docs/performance/scale.json`, measured
        with `make bench-scale`): {TRAIN_SHARDS} train shards of {number(sf["rows"])} images
        ({number(sf["shard_mb"])} MB) each, as the `imagenet-*` configs set; the profile's
        resources fit them with room to spare. A checkpoint of ResNet-50 at 1,024 ranks weighs
        {number(checkpoint)} MB; rank 0 alone reads it on resume and sends it to the others.
        Rank 0 logs {number(nodes["metric_values_per_epoch"])} metric values per epoch at
        {number(nodes["nodes"])} nodes, in {nodes["mlflow_requests_per_epoch"]} requests: use a
        tracking server.
    """)
        + "\n"
    )


# --------------------------------------------------------------------------------------------
# docs/design.md


def design_bn_buffers() -> str:
    bn = bn_buffers()
    return (
        textwrap.fill(
            f"Per-rank BN buffers (saved only with `model.bn_moving_average`) add "
            f"{number(bn['per_rank_kb'])} kB per rank for ResNet-50, {number(bn['at_1024_mb'])} MB "
            "at 1,024 ranks (`docs/scaling.md`, from `docs/performance/scale.json`).",
            96,
        )
        + "\n"
    )

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


def short(value: float) -> str:
    """1.48 -> 1.5, 12.67 -> 12.7, 189.2 -> 189, 0.457 -> 0.46, 17.0 -> 17: as a reader
    compares them."""
    if abs(value) >= 100 or value == int(value):
        return number(value)
    if abs(value) >= 10:
        return number(value, 1)
    return sig(value)


def bullet(text: str) -> str:
    """A Markdown list item of `text`, wrapped at the docs' width."""
    return textwrap.fill(" ".join(text.split()), 96, initial_indent="* ", subsequent_indent="  ")


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

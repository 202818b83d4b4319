"""The data rules through Snakemake itself: lint, dry run, a real run, a single-shard rebuild."""

import json
import re

import pytest

from conftest import PROJECT, planned_rules, write_config
from conftest import run_snakemake as snakemake
from pipeline.config_files import load_config
from pipeline.paths import DataPaths


def test_lint_is_clean(tmp_path):
    result = snakemake(tmp_path, "--lint", "--configfile", str(PROJECT / "config/config.yaml"))
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr


def test_dry_run_plans_one_job_per_shard(tmp_path, synthetic_tree):
    config = write_config(
        tmp_path, synthetic_tree.root, data={"num_shards": {"train": 3, "val": 2}}
    )
    result = snakemake(tmp_path, "verify", "-n", "--configfile", str(config))
    out = result.stdout
    assert planned_rules(out) == {"index", "shard", "shard_index", "verify"}
    assert len(re.findall(r"^rule shard:$", out, flags=re.MULTILINE)) == 5
    assert "demo_data" not in out  # a real dataset has no demo rule


def test_bad_config_is_refused_before_anything_runs(tmp_path, synthetic_tree):
    config = write_config(tmp_path, synthetic_tree.root, data={"jpeg_quality": 0})
    result = snakemake(tmp_path, "-n", "--configfile", str(config), check=False)
    assert result.returncode != 0
    assert "jpeg_quality" in result.stdout + result.stderr


@pytest.mark.slow
def test_data_rules_run_and_one_shard_can_be_rebuilt_alone(tmp_path, synthetic_tree):
    config_path = write_config(tmp_path, synthetic_tree.root)
    snakemake(tmp_path, "verify", "--cores", "2", "--configfile", str(config_path))
    paths = DataPaths.of(load_config(config_path))
    verified = json.loads(paths.verified.read_text())
    assert verified["splits"]["train"] == {"num_shards": 2, "rows": 200, "quarantined": 0}
    assert verified["splits"]["val"] == {"num_shards": 1, "rows": 100, "quarantined": 0}
    logs = paths.root.parent.parent / "logs"
    assert (logs / "shard" / "train-00001-of-00002.log").is_file()
    # Every data job left its wall time and peak memory beside its log (to size Slurm jobs).
    timed = sorted(str(p.relative_to(logs)) for p in logs.rglob("*.benchmark.tsv"))
    assert timed == [
        "index.benchmark.tsv",
        "shard/train-00000-of-00002.benchmark.tsv",
        "shard/train-00001-of-00002.benchmark.tsv",
        "shard/val-00000-of-00001.benchmark.tsv",
        "shard_index.benchmark.tsv",
        "verify.benchmark.tsv",
    ]
    header, values = (logs / "shard/train-00000-of-00002.benchmark.tsv").read_text().split("\n")[:2]
    job = dict(zip(header.split("\t"), values.split("\t"), strict=True))
    # Memory is sampled (every 0.5 s at first): a job quicker than the first sample reads NA.
    assert float(job["s"]) > 0 and (job["max_rss"] == "NA" or float(job["max_rss"]) > 0)

    # Nothing to do on a second run.
    assert (
        "Nothing to be done"
        in snakemake(tmp_path, "verify", "-n", "--configfile", str(config_path)).stdout
    )

    # One shard rebuilt alone (-R on its file); the others are left as they are.
    other = paths.shard("train", 1, 2)
    before = other.stat().st_mtime_ns
    target = paths.shard("train", 0, 2)
    snakemake(
        tmp_path,
        "--cores",
        "2",
        "--configfile",
        str(config_path),
        "--forcerun",
        str(target),
        "--until",
        str(target),
    )
    assert other.stat().st_mtime_ns == before
    assert json.loads(paths.shard_stats("train", 0, 2).read_text())["rows"] == 100

    # A new JPEG quality re-runs the shards and what follows, not the index.
    plan = snakemake(
        tmp_path,
        "verify",
        "-n",
        "--configfile",
        str(config_path),
        "--config",
        "data={jpeg_quality: 80}",
    ).stdout
    assert planned_rules(plan) == {"shard", "shard_index", "verify"}, plan
    assert "Params have changed since last execution" in plan

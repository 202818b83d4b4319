"""benchmarks/scale.py at small sizes: every section runs on the real stages and Snakemake,
its checks hold (exact sampler cover, counts that reconcile) and the summary is complete."""

import json
import math
import subprocess
import sys

import pytest

from conftest import PROJECT, venv_env

pytestmark = pytest.mark.slow


def test_the_scale_benchmark_runs_small_and_reports_every_quantity(tmp_path):
    out = tmp_path / "scale.json"
    subprocess.run(
        [
            sys.executable,
            "benchmarks/scale.py",
            "--smoke",
            "--out",
            str(out),
            "--work",
            str(tmp_path),
        ],
        cwd=PROJECT,
        env=venv_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    report = json.loads(out.read_text())
    assert {p["layout"] for p in report["index"]} == {"devkit", "tar"}
    assert all(p["index_s"] > 0 and p["manifest_mb"] > 0 for p in report["index"])
    shard = report["shard"]
    assert sum(shard["actions"].values()) == shard["rows"]
    assert all(p["first_job_s"] for p in report["snakemake"])  # a shard job really started
    assert all(p["exact_cover"] and p["val_exactly_once"] for p in report["sampler"])
    assert [p["shards"] for p in report["open"]] == [4, 16]
    sizes = {(p["world_size"], p["variant"]): p["checkpoint_mb"] for p in report["checkpoint"]}
    assert sizes[(4, "rng + BN buffers")] > sizes[(4, "rng only")]
    assert len(report["summary"]) == 23
    assert all(math.isfinite(row["at_target"]) for row in report["summary"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("scale-")]  # scratch removed

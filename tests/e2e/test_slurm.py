"""On a real Slurm: the throwaway two-node cluster of tests/cluster/cluster.sh, the Slurm
profile end to end, a failing rule, and the cluster script itself. Training jobs on both nodes
are in test_slurm_training.py."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from slurm_jobs import NODES, sacct, snakemake

from conftest import CLUSTER_SCRIPT, SLURM_TIER, write_config
from pipeline.config_files import load_config
from pipeline.paths import ReportPaths

pytestmark = [pytest.mark.slow, SLURM_TIER]


def test_the_pipeline_runs_on_slurm_as_a_user_would(slurm, synthetic_tree, tmp_path):
    path = write_config(
        tmp_path,
        synthetic_tree.root,
        experiment="onslurm",
        data={"image_size": 32, "val_resize": 36, "loader_workers": 0},
        model={"arch": "resnet18"},
        train={"epochs": 2, "batch_per_worker": 16, "log_every": 2},
        launcher={"tasks_per_node": 2, "cpus_per_task": 1, "poll_s": 1},
        schedule={"base_lr": 0.1},
    )
    before = {j["id"] for j in sacct()}
    snakemake(tmp_path, "--configfile", str(path))
    jobs = [j for j in sacct() if j["id"] not in before]
    rules = sorted(j["comment"].split("_wildcards")[0] for j in jobs if j["comment"])
    assert rules == [
        "rule_index",
        "rule_report",
        "rule_shard",
        "rule_shard",
        "rule_shard",
        "rule_shard_index",
        "rule_verify",
    ], jobs
    assert all(j["state"] == "COMPLETED" for j in jobs), jobs
    training = [j for j in jobs if j["name"] == "train-onslurm"]
    assert len(training) == 1 and training[0]["state"] == "COMPLETED"
    config = load_config(path)
    summary = json.loads(ReportPaths.of(config).summary.read_text())
    run = MlflowClient(config.tracking_uri).get_run(summary["mlflow_run_id"])
    assert run.data.tags["slurm_job_id"] == training[0]["id"]
    assert run.data.tags["world_size"] == "2"


def test_a_rule_failing_on_slurm_is_reported_with_its_log(slurm, tmp_path):
    path = write_config(tmp_path, tmp_path / "no-such-images")
    result = snakemake(tmp_path, "--configfile", str(path), "--retries", "0", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    log = load_config(path).results_path / "logs" / "index.log"
    assert "Error in rule index" in output and str(log) in output
    assert "data.root" in log.read_text() and "is not a folder" in log.read_text()


def test_the_cluster_has_two_nodes_with_their_own_names_and_addresses(slurm):
    out = subprocess.run(
        ["srun", "-N2", "--ntasks-per-node=1", "-l", "sh", "-c", "hostname; hostname -i"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert sorted(out.splitlines()) == sorted(
        [f"0: {NODES[0]}", "0: 10.213.0.11", f"1: {NODES[1]}", "1: 10.213.0.12"]
    ), out


def test_cluster_script_leaves_pid_files_in_its_own_folder(slurm):
    pids = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/pipeline-slurm")) / "pids"
    names = {p.stem for p in pids.glob("*.pid")}
    assert names >= {"slurmctld", "slurmdbd", *(f"slurmd-{node}" for node in NODES)}


def test_down_leaves_nothing_behind_and_up_starts_again(slurm):
    """No namespace, link, daemon or config after `down`; the session's cluster then comes
    back for the tests after this one."""
    down = subprocess.run([str(CLUSTER_SCRIPT), "down"], capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    left = subprocess.run([str(CLUSTER_SCRIPT), "leftovers"], capture_output=True, text=True)
    assert (left.returncode, left.stdout) == (0, ""), left.stdout
    up = subprocess.run([str(CLUSTER_SCRIPT), "up"], capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stderr

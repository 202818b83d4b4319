"""On a real Slurm: a throwaway single-node cluster (tests/cluster/cluster.sh), the Slurm
profile end to end, preemption, requeue, a restarted Snakemake, a cancelled job."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import PROJECT, demo_config, run_snakemake, run_stage, write_config
from pipeline.config_files import deep_merge, load_config
from pipeline.paths import ReportPaths, RunPaths
from pipeline.tracking import Journal

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("PIPELINE_TEST_SLURM") != "1",
        reason="the Slurm tier installs and starts Slurm, MariaDB and munge system-wide and "
        "writes /etc/slurm: run it with PIPELINE_TEST_SLURM=1 (as root on Debian; .ci/run does)",
    ),
]
CLUSTER = PROJECT / "tests" / "cluster" / "cluster.sh"
PROFILE = PROJECT / "profiles" / "slurm"


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("PIPELINE_TEST_SLURM=1, but the throwaway cluster needs root and apt-get")
    up = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, f"cluster up failed:\n{up.stdout}\n{up.stderr}"
    yield
    subprocess.run([str(CLUSTER), "down"], capture_output=True, timeout=120)


def sacct(*job_ids):
    out = subprocess.run(
        [
            "sacct",
            "-X",
            "-n",
            "-P",
            "-o",
            "JobID,JobName,State,Comment",
            *([f"--jobs={','.join(job_ids)}"] if job_ids else []),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        dict(zip(("id", "name", "state", "comment"), line.split("|"), strict=True))
        for line in out.splitlines()
        if line
    ]


def squeue_ids():
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    return out.split()


def snakemake(workdir, *args, check=True, **popen):
    """The Slurm profile, with test-only overrides: check job states every 2 s (the plugin
    waits 40 s, then 10 s between checks, by default)."""
    return run_snakemake(
        workdir,
        "--workflow-profile",
        str(PROFILE),
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--seconds-between-status-checks",
        "2",
        *args,
        check=check,
        **popen,
    )


def wait_until(condition, what, timeout=240):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


# --------------------------------------------------------------------------------------------
# The demo's digits, sharded once; short runs on Slurm with 1 node x 2 tasks.


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    path = demo_on_slurm(tmp, None)
    for stage in ("demo-data", "index", "shard", "verify"):
        run_stage(stage, "--config", str(path))
    return tmp / "results" / "data" / "digits"


def demo_on_slurm(folder, shards, **changes):
    """The demo on Slurm, 4 epochs long: the tests act on a running job (signal, requeue,
    kill Snakemake and restart it), and the job must still be running when they are done,
    however slowly Slurm delivers a signal on a loaded machine."""
    slurm = {
        "launcher": {"cluster": "slurm", "timeout_min": 15, "max_num_timeout": 5},
        "train": {"epochs": 4},
    }
    return demo_config(folder, shards, **deep_merge(slurm, changes))


def final_weights(config_path):
    return torch.load(RunPaths.of(load_config(config_path)).final, weights_only=True)["model"]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def job_id(config_path):
    return json.loads(RunPaths.of(load_config(config_path)).job.read_text())["job_id"]


def start_train(config_path, log_dir):
    out = open(log_dir / "train.log", "w")  # noqa: SIM115 - closed by the caller's process end
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", "--config", str(config_path)],
        cwd=PROJECT,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def mid_run_checkpoint(config_path):
    checkpoints = RunPaths.of(load_config(config_path)).checkpoints
    return any(not p.name.startswith("ckpt-e0000-s0000000") for p in checkpoints.glob("*.pt"))


@pytest.fixture(scope="module")
def reference(slurm, digits, tmp_path_factory):
    """An uninterrupted run on Slurm."""
    path = demo_on_slurm(tmp_path_factory.mktemp("reference"), digits)
    run_stage("train", "--config", str(path))
    return path


# --------------------------------------------------------------------------------------------


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


def test_the_requeue_signal_saves_requeues_and_resumes(reference, digits, tmp_path):
    path = demo_on_slurm(tmp_path, digits)
    process = start_train(path, tmp_path)
    wait_until(lambda: mid_run_checkpoint(path), "a checkpoint mid-run")
    job = job_id(path)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what preemption sends
    assert process.wait(timeout=400) == 0
    log = (tmp_path / "train.log").read_text()
    assert "received SIGUSR2: checkpointing at the next step" in log
    assert f"Requeued job {job}" in log and "resuming from" in log
    assert same(final_weights(reference), final_weights(path))
    assert [j["state"] for j in sacct(job)] == ["COMPLETED"]
    config = load_config(path)
    client = MlflowClient(config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(config.experiment).experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["slurm_job_id"] == job
    assert runs[0].info.status == "FINISHED"  # RUNNING through the requeue, then done


def test_scontrol_requeue_resumes_from_the_periodic_checkpoint(reference, digits, tmp_path):
    path = demo_on_slurm(tmp_path, digits)
    process = start_train(path, tmp_path)
    wait_until(lambda: mid_run_checkpoint(path), "a checkpoint mid-run")
    subprocess.run(["scontrol", "requeue", job_id(path)], check=True)  # no signal first
    assert process.wait(timeout=400) == 0
    log = (tmp_path / "train.log").read_text()
    assert "resuming from" in log and "received SIGUSR2" not in log
    assert same(final_weights(reference), final_weights(path))


def test_a_restarted_snakemake_reattaches_instead_of_submitting_again(reference, digits, tmp_path):
    path = demo_on_slurm(tmp_path, digits)
    target = str(RunPaths.of(load_config(path)).final)
    first = snakemake(
        tmp_path,
        target,
        "--configfile",
        str(path),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: RunPaths.of(load_config(path)).job.is_file(), "the training job")
    job = job_id(path)
    wait_until(lambda: mid_run_checkpoint(path), "training to be under way")
    os.killpg(first.pid, signal.SIGKILL)  # Snakemake and its `train` rule die; the job runs on
    first.wait()
    assert job in squeue_ids()
    snakemake(tmp_path, "--configfile", str(path), "--unlock")
    snakemake(tmp_path, target, "--configfile", str(path))
    log = (load_config(path).results_path / "logs" / "train" / "demo.log").read_text()
    assert f"re-attaching to job {job}" in log
    names = [j for j in sacct() if j["name"] == "train-demo" and j["id"] == job]
    assert len(names) == 1 and names[0]["state"] == "COMPLETED"
    assert same(final_weights(reference), final_weights(path))


def test_a_cancelled_training_job_fails_the_rule_clearly(reference, digits, tmp_path):
    path = demo_on_slurm(tmp_path, digits, train={"epochs": 20})
    config = load_config(path)
    process = snakemake(
        tmp_path,
        "--configfile",
        str(path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until(lambda: RunPaths.of(config).job.is_file(), "the training job")
    job = job_id(path)
    wait_until(lambda: mid_run_checkpoint(path), "training to be under way")
    cancelled = time.monotonic()
    subprocess.run(["scancel", job], check=True)
    output, _ = process.communicate(timeout=180)
    assert process.returncode != 0
    assert time.monotonic() - cancelled < 120
    log = (config.results_path / "logs" / "train" / "demo.log").read_text()
    assert f"training job {job} ended as CANCELLED" in log
    assert str(RunPaths.of(config).submitit) in log
    assert "Error in rule train" in output
    assert not ReportPaths.of(config).markdown.exists()  # nothing downstream ran
    run_id = Journal(RunPaths.of(config).journal).run_id()
    mlflow_run = MlflowClient(config.tracking_uri).get_run(run_id)
    assert mlflow_run.info.status == "KILLED"
    assert mlflow_run.data.tags["end_reason"] == f"training job {job} ended as CANCELLED"


def test_a_rule_failing_on_slurm_is_reported_with_its_log(slurm, tmp_path):
    path = write_config(tmp_path, tmp_path / "no-such-images")
    result = snakemake(tmp_path, "--configfile", str(path), "--retries", "0", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    log = load_config(path).results_path / "logs" / "index.log"
    assert "Error in rule index" in output and str(log) in output
    assert "data.root" in log.read_text() and "is not a folder" in log.read_text()


def test_cluster_script_leaves_pid_files_in_its_own_folder(slurm):
    pids = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/pipeline-slurm")) / "pids"
    assert {p.stem for p in pids.glob("*.pid")} >= {"slurmctld", "slurmd", "slurmdbd"}

"""Training on the throwaway Slurm's two nodes, as a cluster user runs it: 2 nodes x 2 tasks
through submitit, meeting at the first node of the job on a port derived from the job id; the
same updates as one process; preemption, requeue, a restarted Snakemake, a cancelled job and a
node whose processes are killed."""

import os
import re
import signal
import subprocess
import time

import pytest
import torch
from mlflow.tracking import MlflowClient
from slurm_jobs import (
    NODES,
    demo_on_slurm,
    final_weights,
    job_id,
    mid_run_checkpoint,
    sacct,
    same,
    snakemake,
    squeue_ids,
    start_train,
    task_log,
    training_pids,
    wait_until,
)

from conftest import SLURM_TIER, run_stage
from pipeline.config_files import load_config
from pipeline.launch import run_fingerprint
from pipeline.paths import ReportPaths, RunPaths
from pipeline.tracking import Journal
from pipeline.train.distributed import init_distributed, shutdown_distributed
from pipeline.train.loop import Trainer
from pipeline.train.rendezvous import job_port
from training_runs import RANK_VARIABLES, assert_same_updates

pytestmark = [pytest.mark.slow, SLURM_TIER]
INHERITED_PORT = "12345"


@pytest.fixture(scope="module")
def digits(module_tmp):
    """The demo's digits, sharded once for the module."""
    tmp = module_tmp("digits")
    path = demo_on_slurm(tmp, None)
    for stage in ("demo-data", "index", "shard", "verify"):
        run_stage(stage, "--config", str(path))
    return tmp / "results" / "data" / "digits"


@pytest.fixture(scope="module")
def reference(slurm, digits, module_tmp):
    """An uninterrupted run over both nodes, for the interrupted ones to end equal to."""
    path = demo_on_slurm(module_tmp("reference"), digits)
    run_stage("train", "--config", str(path))
    return path


@pytest.fixture(scope="module")
def one_epoch(slurm, digits, module_tmp):
    """One epoch of 3 steps over both nodes (4 x 96 images a step), a checkpoint after each,
    submitted from a shell that exports MASTER_PORT. The small-input stem keeps layer4 at
    4 x 4: at 1 x 1, BN over 32 nearly constant values turns summation-order bits into
    differences of 1e-2 within three steps, where this model stays within 1e-4."""
    path = demo_on_slurm(
        module_tmp("one-epoch"),
        digits,
        model={"small_input": True},
        train={"epochs": 1, "batch_per_worker": 96, "log_every": 1, "keep_checkpoints": 10},
    )
    run_stage("train", "--config", str(path), env={"MASTER_PORT": INHERITED_PORT})
    return path


def test_four_ranks_meet_at_the_first_node_on_the_jobs_port(one_epoch):
    """The rendezvous comes from the job's node list and id, not from localhost or the port
    the submitting shell exported; each rank logs where it is, and the first node's name
    resolves to its address on the cluster's network, which the ranks' traffic crosses."""
    reference = one_epoch
    job = job_id(reference)
    port = job_port(job)
    assert str(port) != INHERITED_PORT
    for rank, (node, local) in enumerate(
        [(NODES[0], 0), (NODES[0], 1), (NODES[1], 0), (NODES[1], 1)]
    ):
        expected = (
            f"rank {rank}/4 (local rank {local}) on {node}: cpu, gloo; "
            f"rendezvous {NODES[0]}:{port} (10.213.0.11, slurm)"
        )
        assert expected in task_log(reference, job, rank)
    config = load_config(reference)
    run_id = Journal(RunPaths.of(config).journal).run_id()
    tags = MlflowClient(config.tracking_uri).get_run(run_id).data.tags
    assert tags["hosts"] == f"{NODES[0]}: 0-1; {NODES[1]}: 2-3"
    assert tags["rendezvous"] == f"{NODES[0]}:{port}" and tags["world_size"] == "4"


def _one_process_accumulating_four(path):
    """The same run in this process: 1 task, 4 micro-batches a step."""
    config = load_config(path)
    one = config.model_copy(
        update={
            "experiment": "one-acc4",
            "launcher": config.launcher.model_copy(update={"nodes": 1, "tasks_per_node": 1}),
            "train": config.train.model_copy(update={"accumulate": 4}),
        }
    )
    assert one.global_batch == config.global_batch == 384
    for key in RANK_VARIABLES:
        os.environ.pop(key, None)
    env, _ = init_distributed(gpus_per_node=0)
    try:
        Trainer(one, env, run_fingerprint(one)).fit(None)
    finally:
        shutdown_distributed()
    return RunPaths.of(one).checkpoints


def test_four_ranks_on_two_nodes_make_the_updates_of_one_process_accumulating_four(one_epoch):
    """Same images per step, BN over each 96-image micro-batch, gradients and BN statistics
    averaged over the 4 ranks (all-reduce across the nodes) or the 4 micro-batches: the same
    weights, and, since BN is averaged over all ranks before validating, the same validation."""
    ours = RunPaths.of(load_config(one_epoch)).checkpoints
    theirs = _one_process_accumulating_four(one_epoch)

    def state(folder, name):
        return torch.load(folder / name, weights_only=True)

    first, end = "ckpt-e0000-s0000001.pt", "ckpt-e0001-s0000000.pt"
    base = state(theirs, first)["model"]
    assert_same_updates(state(theirs, end)["model"], state(ours, end)["model"], base)
    val_one = state(theirs, end)["progress"]["history"][0]
    val_four = state(ours, end)["progress"]["history"][0]
    assert val_four["val_loss"] == pytest.approx(val_one["val_loss"], rel=1e-4)
    assert val_four["val_top1"] == val_one["val_top1"]


def interrupted(path, log_dir, *command):
    """`train` started, `command` run with the job id appended once training is under way,
    and `train` waited for: it must finish. The job id and `train`'s output."""
    process = start_train(path, log_dir)
    wait_until(lambda: mid_run_checkpoint(path), "a checkpoint mid-run")
    job = job_id(path)
    subprocess.run([*command, job], check=True)
    assert process.wait(timeout=400) == 0
    return job, (log_dir / "train.log").read_text()


def test_the_requeue_signal_saves_requeues_and_resumes(reference, digits, tmp_path):
    path = demo_on_slurm(tmp_path, digits)
    job, log = interrupted(path, tmp_path, "scancel", "--signal=USR2")  # preemption's signal
    assert "received SIGUSR2: checkpointing at the next step" in log
    assert f"Requeued job {job}" in log and "resuming from" in log
    assert same(final_weights(reference), final_weights(path))
    assert [j["state"] for j in sacct(job)] == ["COMPLETED"]
    config = load_config(path)
    client = MlflowClient(config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(config.experiment).experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["slurm_job_id"] == job
    assert runs[0].info.status == "FINISHED"  # RUNNING through the requeue, then done


def test_scontrol_requeue_resumes_bit_identical_on_a_new_port(reference, digits, tmp_path):
    path = demo_on_slurm(tmp_path, digits)
    job, log = interrupted(path, tmp_path, "scontrol", "requeue")  # no signal first
    assert "resuming from" in log and "received SIGUSR2" not in log
    assert same(final_weights(reference), final_weights(path))
    # the requeued run met on another port: the first run's may still be held on its node
    assert f"{NODES[0]}:{job_port(job, 1)} " in task_log(path, job, 0)


def test_a_node_whose_ranks_are_killed_ends_the_job_clearly_and_train_resumes(
    reference, digits, tmp_path
):
    path = demo_on_slurm(tmp_path, digits)
    config = load_config(path)
    process = start_train(path, tmp_path)
    wait_until(lambda: mid_run_checkpoint(path), "a checkpoint mid-run")
    wait_until(lambda: len(training_pids(NODES[1])) == 2, "the second node's two ranks")
    job = job_id(path)
    for pid in training_pids(NODES[1]):
        os.kill(pid, signal.SIGKILL)  # as a node failure would end them
    assert process.wait(timeout=300) != 0
    log = (tmp_path / "train.log").read_text()
    assert f"training job {job} ended as FAILED" in log
    # The node, named: srun says "tasks 2-3" when both ends reach it together, else one line
    # a task ("task 2", "task 3"), as the kills land.
    killed = re.findall(rf"srun: error: {NODES[1]}: tasks? ([0-9,-]+): Killed", log)
    assert killed and set("".join(killed)) <= set("23,-"), log
    run_id = Journal(RunPaths.of(config).journal).run_id()
    run = MlflowClient(config.tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED"
    # Said by rank 0 when it sees a peer gone, or by `train` when srun's --kill-on-bad-exit
    # ended rank 0 first (it sends SIGTERM to the surviving tasks at once): a race, both true.
    assert any(
        reason in run.data.tags["end_reason"]
        for reason in ("lost contact with the other ranks", f"training job {job} ended as FAILED")
    ), run.data.tags["end_reason"]
    again = run_stage("train", "--config", str(path))
    assert "train: resuming from" in again.stderr
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

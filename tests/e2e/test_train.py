"""`python -m pipeline train` as a user runs it: submitit's local executor, 2 gloo processes,
the embedded digits demo, MLflow read back through its own client."""

import errno
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

from conftest import PROJECT, demo_config, free_port, mlflow_server, run_stage
from faults import NO_BYPASS, assert_one_line_fault, size_limited
from pipeline.config_files import load_config
from pipeline.paths import ReportPaths, RunPaths
from pipeline.tracking import Journal

pytestmark = pytest.mark.slow
EPOCHS = 2


@pytest.fixture(scope="module")
def demo_shards(module_tmp):
    """The demo's digits, indexed and sharded once for the module."""
    tmp = module_tmp("demo")
    config = demo_config(tmp, None)
    for stage in ("demo-data", "index", "shard"):
        run_stage(stage, "--config", str(config))
    return tmp / "results" / "data" / "digits"


def train(config_path, *extra, check=True):
    return run_stage("train", "--config", str(config_path), *extra, check=check)


def states_equal(a, b):
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def finished(demo_shards, module_tmp):
    folder = module_tmp("finished")
    path = demo_config(folder, demo_shards)
    result = train(path)
    return load_config(path), result


def test_training_writes_final_weights_and_a_summary(finished):
    config, result = finished
    run = RunPaths.of(config)
    done = json.loads(run.train_done.read_text())
    assert done["epochs"] == EPOCHS and done["world_size"] == 2 and done["global_batch"] == 64
    assert 0.5 < done["final"]["val_top1"] <= 1.0  # digits are learnt within two epochs
    final = torch.load(run.final, weights_only=True)
    assert final["arch"] == "resnet18" and final["num_classes"] == 10
    assert "train: done: val_top1" in result.stderr
    assert "epoch 2/2: train_loss" in result.stdout  # rank 0's progress is streamed


def test_evaluating_the_last_checkpoint_of_two_ranks_gives_the_last_validation(finished):
    """The end-of-training checkpoint holds both ranks' BN statistics; evaluate averages them as
    the trainer did before its last validation, and counts the same images the same way."""
    config, _ = finished
    run = RunPaths.of(config)
    last = run.checkpoints / f"ckpt-e{EPOCHS:04d}-s0000000.pt"
    assert len(torch.load(last, weights_only=True)["per_rank"]) == 2
    path = config.results_path.parent / "config.yaml"  # written by demo_config
    run_stage("evaluate", "--config", str(path), "--checkpoint", str(last))
    done = json.loads(run.train_done.read_text())
    result = json.loads(
        ReportPaths.of(config).evaluation(last.stem, config.data.val_resize, 32).read_text()
    )
    assert result["top1"] == done["final"]["val_top1"]


def test_mlflow_holds_params_tags_and_one_metric_per_epoch(finished):
    config, _ = finished
    client = MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("demo-")
    assert run.data.params["train.epochs"] == str(EPOCHS)
    assert run.data.params["optimizer.name"] == "hybrid"
    tags = run.data.tags
    assert tags["world_size"] == "2" and tags["slurm_job_id"] == "none"
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}  # the Datasets view
    assert set(inputs) == {"digits/train", "digits/val"}
    assert json.loads(inputs["digits/train"].dataset.profile)["num_rows"] == 1438
    assert inputs["digits/val"].tags[0].value == "evaluation"
    assert inputs["digits/train"].dataset.digest != inputs["digits/val"].dataset.digest
    assert tags["git_commit"] and tags["host"] and tags["fingerprint"]
    for key in (
        "train_loss",
        "train_top1",
        "val_loss",
        "val_top1",
        "val_top5",
        "lr",
        "alpha_sgd",
        "epoch_time_s",
        "images_per_s",
        "noise_scale",
    ):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(EPOCHS)), key
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        samples = client.get_metric_history(run.info.run_id, key)  # the System metrics tab
        assert len(samples) >= 2 and all(m.value >= 0 for m in samples), key
    iteration_lr = client.get_metric_history(run.info.run_id, "iter/lr")
    assert len(iteration_lr) >= 2 * 22 // 4
    journal = Journal(RunPaths.of(config).journal).read()
    epochs = [r for r in journal if r.get("type") == "metrics" and r["scope"] == "epoch"]
    val = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_top1")}
    assert {r["step"]: r["metrics"]["val_top1"] for r in epochs} == val


def test_killed_mid_epoch_and_resumed_ends_bit_identical(finished, demo_shards, tmp_path):
    reference, _ = finished
    path = demo_config(tmp_path, demo_shards)
    config = load_config(path)
    run = RunPaths.of(config)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", "--config", str(path)],
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300

    def mid_second_epoch():
        return [
            p
            for p in run.checkpoints.glob("ckpt-e0001-s*.pt")
            if not p.name.endswith("s0000000.pt")
        ]

    while not mid_second_epoch():
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the CLI, submitit's controller and both ranks
    process.wait()
    time.sleep(1)
    assert not run.final.exists()

    resumed = train(path)
    assert "resuming from" in resumed.stderr
    a = torch.load(RunPaths.of(reference).final, weights_only=True)["model"]
    b = torch.load(run.final, weights_only=True)["model"]
    assert states_equal(a, b)
    last = f"ckpt-e{EPOCHS:04d}-s0000000.pt"
    opt_a = torch.load(RunPaths.of(reference).checkpoints / last, weights_only=True)["optimizer"]
    opt_b = torch.load(run.checkpoints / last, weights_only=True)["optimizer"]
    for key, state in opt_a["state"].items():
        assert torch.equal(state["delta"], opt_b["state"][key]["delta"])
        assert torch.equal(state["square_avg"], opt_b["state"][key]["square_avg"])

    # One MLflow run, each epoch logged once.
    client = MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_top1")]
    assert sorted(steps) == list(range(EPOCHS))


def test_an_unreachable_tracking_server_loses_nothing(demo_shards, tmp_path):
    port = free_port()
    path = demo_config(tmp_path, demo_shards, tracking={"uri": f"http://127.0.0.1:{port}"})
    config = load_config(path)
    result = train(path)
    assert "warning: MLflow at" in result.stderr
    journal = Journal(RunPaths.of(config).journal)
    records = journal.read()
    epochs = sorted(r["step"] for r in records if r.get("scope") == "epoch")
    assert epochs == list(range(EPOCHS))
    assert journal.run_id() is None

    for stage in ("sync-mlflow", "report"):  # still down: a clear error, and no run made
        down = run_stage(stage, "--config", str(path), check=False)
        assert down.returncode == 2, down.stderr
        assert f"MLflow at http://127.0.0.1:{port} failed" in down.stderr
        assert str(journal.path) in down.stderr and "Traceback" not in down.stderr
    assert journal.run_id() is None

    with mlflow_server(port, tmp_path / "server") as uri:
        first = run_stage("sync-mlflow", "--config", str(path))
        assert "created" in first.stderr
        second = run_stage("sync-mlflow", "--config", str(path))
        assert "0 metrics added" in second.stderr
        client = MlflowClient(uri)
        run_id = journal.run_id()
        assert run_id is not None
        history = client.get_metric_history(run_id, "val_top1")
        assert sorted(m.step for m in history) == list(range(EPOCHS))
        assert client.get_run(run_id).data.params["train.epochs"] == str(EPOCHS)
        names = [i.dataset.name for i in client.get_run(run_id).inputs.dataset_inputs]
        assert sorted(names) == ["digits/train", "digits/val"]  # journalled, backfilled once


def test_a_job_killed_under_a_waiting_train_marks_its_run_killed(demo_shards, tmp_path):
    """The training processes die (the OOM killer, a node gone): `train` fails, and the MLflow
    run says KILLED with the reason, instead of staying RUNNING for ever."""
    path = demo_config(tmp_path, demo_shards, train={"epochs": 20})
    config = load_config(path)
    run = RunPaths.of(config)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", "--config", str(path)],
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not any(p.name != "ckpt-e0000-s0000000.pt" for p in run.checkpoints.glob("*.pt")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    job = json.loads(run.job.read_text())["job_id"]
    ranks = subprocess.run(
        ["pgrep", "-f", f"submitit.core._submit {run.submitit}"], capture_output=True, text=True
    ).stdout.split()
    assert len(ranks) == 2
    for pid in ranks:
        os.kill(int(pid), signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0 and f"training job {job}" in stderr
    mlflow_run = MlflowClient(config.tracking_uri).get_run(Journal(run.journal).run_id())
    assert mlflow_run.info.status == "KILLED"
    assert mlflow_run.data.tags["end_reason"] == f"training job {job} ended without a result"


def test_a_failing_job_exits_non_zero_with_the_tail_of_its_log(demo_shards, tmp_path):
    # An infinite learning rate turns the weights to inf/NaN at the first update.
    path = demo_config(
        tmp_path, demo_shards, schedule={"base_lr": float("inf")}, launcher={"tasks_per_node": 1}
    )
    result = train(path, check=False)
    assert result.returncode == 2
    assert "ended as" in result.stderr and "last lines of" in result.stderr
    assert "NaN/Inf at iteration 1 (epoch 0, step 1)" in result.stderr


def _children(pid):
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_the_requeue_signal_checkpoints_requeues_and_resumes(finished, demo_shards, tmp_path):
    """SIGUSR2 to every task, as Slurm sends on preemption (and submitit before a time
    limit): the tasks agree on a step, checkpoint, submitit requeues, the new tasks resume."""
    reference, _ = finished
    path = demo_config(tmp_path, demo_shards)
    config = load_config(path)
    run = RunPaths.of(config)
    with open(tmp_path / "train.out", "w") as out, open(tmp_path / "train.err", "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "train", "--config", str(path)],
            cwd=PROJECT,
            stdout=out,
            stderr=err,
        )
        deadline = time.monotonic() + 300
        while not (run.job.is_file() and list(run.checkpoints.glob("ckpt-e0000-s*.pt"))):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        controller = int(json.loads(run.job.read_text())["job_id"])
        tasks = _children(controller)
        assert len(tasks) == 2
        for pid in tasks:
            os.kill(pid, signal.SIGUSR2)
        assert process.wait(timeout=300) == 0
    stdout = (tmp_path / "train.out").read_text()
    stderr = (tmp_path / "train.err").read_text()
    assert "received SIGUSR2: checkpointing at the next step" in stderr
    assert "Requeued job" in stdout + stderr and "resuming from" in stdout
    a = torch.load(RunPaths.of(reference).final, weights_only=True)["model"]
    b = torch.load(run.final, weights_only=True)["model"]
    assert states_equal(a, b)
    client = MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.experiment)
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_a_checkpoint_over_the_size_limit_ends_train_in_one_line_and_a_rerun_finishes(
    demo_shards, tmp_path
):
    """As a full disk would: the checkpoint (0.4 MB with the optimizer's state) cannot be
    written, the journal's lines can; the tracking server's disk is another."""
    port = free_port()
    path = demo_config(tmp_path, demo_shards, tracking={"uri": f"http://127.0.0.1:{port}"})
    config = load_config(path)
    command = [sys.executable, "-m", "pipeline", "train", "--config", str(path)]
    with mlflow_server(port, tmp_path / "server") as uri:
        result = subprocess.run(
            command, cwd=PROJECT, capture_output=True, text=True, preexec_fn=size_limited(300_000)
        )
        line = assert_one_line_fault(result, "train", os.strerror(errno.EFBIG))
        assert str(RunPaths.of(config).checkpoints) in line and "(training job " in line, line
        assert list((tmp_path / "results" / "runs").rglob(".*.tmp")) == []
        run_id = Journal(RunPaths.of(config).journal).run_id()
        run = MlflowClient(uri).get_run(run_id)
        assert run.info.status == "FAILED" and run.data.tags["end_reason"] in line
        # The first checkpoint failed, so the rerun starts afresh, keeping what the first made.
        again = train(path)
        assert "no checkpoint to resume from; the previous run is kept" in again.stderr
        new_run = Journal(RunPaths.of(config).journal).run_id()
        assert MlflowClient(uri).get_run(new_run).info.status == "FINISHED"
        assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"  # as it ended
    assert json.loads(RunPaths.of(config).train_done.read_text())["epochs"] == EPOCHS


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not here")
def test_report_and_evaluate_name_the_file_they_cannot_write_and_a_rerun_finishes(finished):
    config, _ = finished
    path = config.results_path.parent / "config.yaml"  # written by demo_config
    folder = ReportPaths.of(config).summary.parent
    folder.mkdir(parents=True, exist_ok=True)
    before = sorted(folder.iterdir())  # what other tests of the module wrote there
    folder.chmod(0o555)  # and root's bypass dropped, where the tests run as root
    wrap = ["setpriv", f"--bounding-set={NO_BYPASS}", "--"] if os.geteuid() == 0 else []
    try:
        for stage in ("report", "evaluate"):
            command = [*wrap, sys.executable, "-m", "pipeline", stage, "--config", str(path)]
            result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True)
            line = assert_one_line_fault(result, stage, os.strerror(errno.EACCES))
            assert f"{folder}/" in line and "fix the permissions" in line
            assert sorted(folder.iterdir()) == before
    finally:
        folder.chmod(0o755)
    for stage in ("report", "evaluate"):
        run_stage(stage, "--config", str(path))
    assert json.loads(ReportPaths.of(config).summary.read_text())["mlflow_run_id"]

"""Where a training job's ranks meet, and which device each takes: the port every task derives
alike, an inherited MASTER_PORT ignored, and the refusals that stand in for hangs."""

import os
import socket
import subprocess
import sys

import pytest
import submitit
import torch

from conftest import PROJECT, write_config
from pipeline.config_files import load_config
from pipeline.launch import _local_master_port, warn_oversubscribed
from pipeline.ports import _ephemeral_low
from pipeline.train import distributed
from pipeline.train.rendezvous import (
    LOCAL_PORT_VARIABLE,
    PORT_LOW,
    PORT_SPAN,
    LaunchError,
    discover,
    job_port,
    select_device,
)


def test_a_job_port_is_the_same_everywhere_and_another_after_a_requeue():
    ports = {job_port(str(job)) for job in range(1000, 1200)}
    assert all(PORT_LOW <= p < PORT_LOW + PORT_SPAN for p in ports)
    assert len(ports) > 190  # spread over the range, not a handful of values
    assert job_port("4242") == job_port("4242")
    assert job_port("4242", restart_count=1) != job_port("4242")
    if _ephemeral_low():
        assert _ephemeral_low() >= PORT_LOW + PORT_SPAN  # never one the kernel hands out


def _slurm_task(env: dict[str, str]) -> str:
    """`discover()` in a process with a Slurm task's environment, as srun gives it."""
    code = "from pipeline.train.rendezvous import discover; print(discover())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_a_slurm_task_meets_on_the_first_node_at_the_job_port():
    task = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "16",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NODELIST": "gpu-[017-018]",
        "SLURM_PROCID": "11",
        "SLURM_LOCALID": "3",
        # exported in the submitting shell (another job's, say), inherited by this one:
        "MASTER_PORT": "12345",
        "RANK": "0",
        "WORLD_SIZE": "1",
    }
    os.environ.pop("SLURM_RESTART_COUNT", None)
    first = _slurm_task(task)
    assert "rank=11, world_size=16, local_rank=3, master_addr='gpu-017'" in first
    assert f"master_port={job_port('4242')}, source='slurm'" in first
    requeued = _slurm_task({**task, "SLURM_RESTART_COUNT": "1"})
    assert f"master_port={job_port('4242', 1)}," in requeued


def test_a_local_job_meets_on_the_port_checked_at_submission(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "12345")  # inherited from the shell: not used
    config = load_config(write_config(tmp_path, tmp_path, launcher={"cluster": "local"}))
    executor = submitit.LocalExecutor(tmp_path / "submitit")
    executor.update_parameters(timeout_min=2, tasks_per_node=1)
    with _local_master_port(config):
        expected = int(os.environ[LOCAL_PORT_VARIABLE])
        job = executor.submit(discover)
    assert LOCAL_PORT_VARIABLE not in os.environ  # restored after the submission
    place = job.result()
    assert (place.master_port, place.source, place.world_size) == (expected, "local", 1)
    with socket.socket() as sock:
        sock.bind(("", expected))  # it was free, below the ephemeral range


def test_launcher_master_port_is_taken_as_set(tmp_path):
    config = load_config(
        write_config(tmp_path, tmp_path, launcher={"cluster": "local", "master_port": 24680})
    )
    with _local_master_port(config):
        assert os.environ[LOCAL_PORT_VARIABLE] == "24680"


# --------------------------------------------------------------------------------------------
# Devices. Without a GPU here, CUDA's answers are stood in for; what is checked is our logic.


def test_gpus_asked_for_on_a_rank_without_cuda_is_refused_with_the_fix():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(LaunchError) as caught:
        select_device(gpus_per_node=8, local_rank=0)
    message = str(caught.value)
    assert "launcher.gpus_per_node is 8" in message and "sees no CUDA device" in message
    assert "launcher.gpus_per_node: 0" in message
    assert select_device(0, 5) == torch.device("cpu")


@pytest.fixture
def eight_gpus(monkeypatch):
    """A node whose task sees `visible[0]` GPUs (CUDA stood in for: there is no GPU here)."""
    visible = [8]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible[0])
    return visible


def test_each_local_rank_takes_its_own_gpu_or_the_one_bound_to_it(eight_gpus):
    assert select_device(8, 5) == torch.device("cuda", 5)
    eight_gpus[0] = 1  # the site binds one GPU to each task (--gpus-per-task=1)
    assert select_device(8, 5) == torch.device("cuda", 0)
    eight_gpus[0] = 4
    with pytest.raises(LaunchError, match="local rank 5 .* sees 4 GPUs"):
        select_device(8, 5)


def test_the_gpu_is_made_current_before_the_process_group_exists(eight_gpus, monkeypatch):
    """NCCL and the object collectives use the current device: set_device comes first, and the
    group is bound to that GPU."""
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set", device)))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)

    def init_process_group(backend, **kwargs):
        calls.append(("init", backend, kwargs["device_id"], kwargs["rank"]))

    monkeypatch.setattr(distributed.dist, "init_process_group", init_process_group)
    torchrun = dict(RANK="3", WORLD_SIZE="16", LOCAL_RANK="3", MASTER_ADDR="n1", MASTER_PORT="9")
    for key, value in torchrun.items():
        monkeypatch.setenv(key, value)
    env, place = distributed.init_distributed(gpus_per_node=8)
    gpu = torch.device("cuda", 3)
    assert calls == [("set", gpu), ("init", "nccl", gpu, 3)]
    assert place.source == "torchrun" and place.init_method == "tcp://n1:9"
    assert (env.device, env.backend, env.local_rank) == (gpu, "nccl", 3)


def test_tasks_per_node_follows_the_gpus_and_a_mismatch_is_refused(tmp_path):
    config = load_config(
        write_config(tmp_path, tmp_path, launcher={"cluster": "slurm", "gpus_per_node": 8})
    )
    assert config.launcher.tasks_per_node == 8 and config.launcher.world_size == 8
    mismatch = {"cluster": "slurm", "gpus_per_node": 8, "tasks_per_node": 1}
    with pytest.raises(Exception, match="launcher.tasks_per_node = 1 with launcher.gpus_per_node"):
        load_config(write_config(tmp_path, tmp_path, launcher=mismatch))


def test_more_loader_workers_than_a_task_has_cores_is_warned_with_the_figures(tmp_path):
    def config(workers, cpus):
        return load_config(
            write_config(
                tmp_path,
                tmp_path,
                data={"loader_workers": workers},
                launcher={"cpus_per_task": cpus},
            )
        )

    warning = warn_oversubscribed(config(8, 4))
    assert "data.loader_workers = 8" in warning and "launcher.cpus_per_task = 4" in warning
    assert "Set cpus_per_task: 9, or loader_workers: 3." in warning
    assert warn_oversubscribed(config(8, 9)) is None
    assert warn_oversubscribed(config(0, 1)) is None

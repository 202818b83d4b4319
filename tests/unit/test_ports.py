"""Rendezvous ports: free ones, outside the kernel's ephemeral range, and given to local jobs."""

import os
import socket

import pytest
import submitit

from conftest import write_config
from pipeline.config_files import load_config
from pipeline.launch import _local_master_port
from pipeline.ports import LOW_PORT, _ephemeral_low, free_port


def test_free_port_is_bindable_and_below_the_ephemeral_range():
    ports = {free_port() for _ in range(20)}
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("", port))  # raises if it was not free
    if _ephemeral_low() > LOW_PORT + 100:
        assert all(LOW_PORT <= port < _ephemeral_low() for port in ports)
    assert len(ports) > 1  # drawn at random, not the same port every time


def test_free_port_skips_a_port_in_use(monkeypatch):
    if _ephemeral_low() <= LOW_PORT + 100:
        pytest.skip("no room below the ephemeral port range on this machine")
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken_port = taken.getsockname()[1]
        # the first candidate drawn is the taken port: free_port must move on to the next
        monkeypatch.setattr(
            "pipeline.ports.random.SystemRandom.sample",
            lambda self, population, k: [taken_port, LOW_PORT + 7],
        )
        assert free_port() == LOW_PORT + 7


@pytest.mark.parametrize("cluster", ["local", "slurm"])
def test_local_jobs_get_a_checked_master_port_for_their_tasks(tmp_path, monkeypatch, cluster):
    monkeypatch.delenv("MASTER_PORT", raising=False)
    config = load_config(write_config(tmp_path, tmp_path, launcher={"cluster": cluster}))
    with _local_master_port(config):
        inside = os.environ.get("MASTER_PORT")
    assert "MASTER_PORT" not in os.environ  # restored after the submission
    if cluster == "local":
        with socket.socket() as sock:
            sock.bind(("", int(inside)))
    else:  # a Slurm job would inherit a port checked on the submitting host
        assert inside is None


def test_a_local_submitit_job_sees_that_port(tmp_path, monkeypatch):
    monkeypatch.delenv("MASTER_PORT", raising=False)
    config = load_config(write_config(tmp_path, tmp_path, launcher={"cluster": "local"}))
    executor = submitit.LocalExecutor(tmp_path / "submitit")
    executor.update_parameters(timeout_min=2, tasks_per_node=1)
    with _local_master_port(config):
        expected = os.environ["MASTER_PORT"]
        job = executor.submit(os.getenv, "MASTER_PORT")
    assert job.result() == expected  # what submitit's TorchDistributedEnvironment then uses

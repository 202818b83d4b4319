"""MLflow as a cluster runs it: `python -m pipeline tracking-server` over Debian's PostgreSQL
with proxied artifacts, and a sweep of four trainings logging to it at the same time.

In the system tier (PIPELINE_TEST_SLURM=1): it installs PostgreSQL with apt-get where absent.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import PROJECT, SLURM_TIER, free_port, write_config
from conftest import run_snakemake as snakemake
from pipeline.config_files import load_config
from pipeline.experiments import expand_experiments
from pipeline.journal import Journal
from pipeline.mlflow_store import compare_with_journal
from pipeline.paths import ReportPaths, RunPaths
from pipeline.train.model import build_model

pytestmark = [pytest.mark.slow, SLURM_TIER]
SWEEP = {
    "data": {"image_size": 32, "val_resize": 36, "loader_workers": 0},
    "model": {"arch": "resnet18"},
    "train": {"epochs": 2, "batch_per_worker": 32, "log_every": 1},
    "launcher": {"cluster": "local", "tasks_per_node": 1, "cpus_per_task": 1, "poll_s": 1},
    "sweep": {
        "methods": {"akiba": {}, "goyal": {"optimizer": {"name": "sgd"}}},
        "grid": {"seed": [0, 1], "train.global_batch": [64]},
    },
}


def peak_overlap(spans: list[tuple[int, int]]) -> int:
    """The most runs whose first and last logged metrics enclose one moment."""
    return max(sum(start <= moment <= end for start, end in spans) for moment, _ in spans)


def wait_for_start(process: subprocess.Popen, log: Path) -> None:
    """Until the command says where the server is (it does once both servers answer)."""
    deadline = time.monotonic() + 180
    while "tracking-server: MLflow on" not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server():
    """The documented command, as a user starts it, on a folder PostgreSQL's user can reach."""
    if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "postgresql"]
        if subprocess.run(install, capture_output=True, env=env).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, env=env)
            subprocess.run(install, check=True, capture_output=True, env=env)
    folder = Path(tempfile.mkdtemp(prefix="pipeline-tracking-"))
    folder.chmod(0o755)
    port, log = free_port(), folder / "command.log"
    command = [sys.executable, "-m", "pipeline", "tracking-server", "--folder", str(folder)]
    command += ["--port", str(port), "--pg-port", str(free_port())]
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=PROJECT, stdout=output, stderr=output)
    try:
        wait_for_start(process, log)
        yield f"http://127.0.0.1:{port}", folder
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, log.read_text()
        left = subprocess.run(["pgrep", "-f", f"postgres -D {folder}"], capture_output=True)
        assert left.stdout == b"", "PostgreSQL outlived the command"
        shutil.rmtree(folder)


def test_the_server_keeps_its_store_in_postgresql(server):
    _, folder = server
    assert (folder / "postgres" / "PG_VERSION").is_file()
    assert "over postgresql://mlflow@127.0.0.1:" in (folder / "command.log").read_text()


def test_four_trainings_logging_at_once_lose_and_repeat_nothing(server, synthetic_tree, tmp_path):
    url, folder = server
    path = write_config(
        tmp_path,
        synthetic_tree.root,
        experiment="many",
        tracking={"uri": url, "system_metrics_s": 1.0},
        **SWEEP,
    )
    snakemake(
        tmp_path,
        "reproduce",
        "--cores",
        "4",
        "--resources",
        "train_slots=4",
        "--configfile",
        str(path),
    )
    configs = expand_experiments(load_config(path))
    assert len(configs) == 4
    client = MlflowClient(url)
    mlflow.set_tracking_uri(url)
    inputs = torch.randn(2, 3, 32, 32)
    spans = []
    for config in configs:
        journal = Journal(RunPaths.of(config).journal)
        records = journal.read()
        times = [r["time_ms"] for r in records if r.get("type") == "metrics"]
        spans.append((min(times), max(times)))
        run_id = journal.run_id()
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", config.experiment
        counts = compare_with_journal(client, run_id, journal)
        assert set(counts) == {"once"} and counts["once"] > 50, (config.experiment, counts)
        # the artifacts and the logged model come back through the server (proxied)
        summary = ReportPaths.of(config).summary
        got = Path(client.download_artifacts(run_id, f"report/{summary.name}", str(tmp_path)))
        assert got.read_bytes() == summary.read_bytes()
        model_copy = tmp_path / config.experiment  # not MLflow's default, a /tmp it keeps
        model_copy.mkdir()
        logged = mlflow.pytorch.load_model(run.data.tags["model_uri"], dst_path=str(model_copy))
        final = torch.load(RunPaths.of(config).final, weights_only=True)
        trained = build_model(config.model, final["num_classes"])
        trained.load_state_dict(final["model"])
        torch.testing.assert_close(logged(inputs), trained.eval()(inputs))
    # Snakemake starts all four together, but on 2 cores one may finish before the last one
    # has imported torch: what must hold is that the server took several writers at once.
    assert peak_overlap(spans) >= 2, spans
    assert list((folder / "artifacts").iterdir())  # the server kept them, in its folder

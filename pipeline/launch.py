"""Submitting training through submitit, waiting for it, and re-attaching after a restart.

`submit_and_wait` is the `train` stage's work. It submits one job (local processes, Slurm, or
in-process debug) that runs `pipeline.train.job.TrainJob` in every task, records its id in
`runs/<experiment>/train/job.json`, streams rank 0's output and waits. If that job is still
alive when `train` runs again (Snakemake was restarted), it re-attaches instead of submitting a
second job. A new job resumes from the latest valid checkpoint of the experiment when it was
made with the same config and data (the fingerprint); otherwise the old run is moved aside,
never deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import submitit

from pipeline import atomic
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.job_watch import ALIVE_SLURM_STATES, local_job_alive, slurm_state, wait_for
from pipeline.paths import SPLITS, DataPaths, RunPaths
from pipeline.ports import free_port
from pipeline.stage_keys import stage_fingerprint
from pipeline.train import checkpoint
from pipeline.train.job import TrainJob
from pipeline.train.rendezvous import LOCAL_PORT_VARIABLE

# --------------------------------------------------------------------------------------------
# Fingerprints: which checkpoints belong to which run


def run_fingerprint(config: Config) -> str:
    """The training fingerprint plus the exact shards (their index.json files)."""
    data = DataPaths.of(config)
    digest = hashlib.sha256(stage_fingerprint(config, "train").encode())
    for split in SPLITS:
        index = data.shard_index(split)
        if not index.is_file():
            raise PipelineError(f"{index} not found: build and verify the shards first")
        digest.update(index.read_bytes())
    return digest.hexdigest()[:12]


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def make_executor(config: Config, folder: Path) -> submitit.Executor:
    launcher = config.launcher
    if launcher.cluster == "debug":
        if launcher.world_size != 1:
            raise PipelineError("launcher.cluster = debug runs one process: set tasks_per_node 1")
        return submitit.DebugExecutor(folder)
    if launcher.cluster == "local":
        if launcher.nodes != 1:
            raise PipelineError("launcher.cluster = local runs on this machine: set nodes 1")
        executor = submitit.LocalExecutor(folder, max_num_timeout=launcher.max_num_timeout)
        executor.update_parameters(
            timeout_min=launcher.timeout_min,
            tasks_per_node=launcher.tasks_per_node,
            gpus_per_node=launcher.gpus_per_node,
            signal_delay_s=launcher.signal_delay_s,
        )
        return executor
    executor = submitit.SlurmExecutor(folder, max_num_timeout=launcher.max_num_timeout)
    params: dict[str, Any] = {
        "job_name": f"train-{config.experiment}",
        "nodes": launcher.nodes,
        "ntasks_per_node": launcher.tasks_per_node,
        "cpus_per_task": launcher.cpus_per_task,
        "time": launcher.timeout_min,
        "signal_delay_s": launcher.signal_delay_s,
        "additional_parameters": dict(launcher.slurm_additional),
        # A task that dies ends the step: its peers would otherwise wait in their next
        # collective (NCCL: until its timeout, with every GPU of the job held).
        "srun_args": ["--kill-on-bad-exit=1"],
    }
    if launcher.gpus_per_node:
        params["gpus_per_node"] = launcher.gpus_per_node
    if launcher.partition:
        params["partition"] = launcher.partition
    if launcher.account:
        params["account"] = launcher.account
    if launcher.mem_gb:
        params["mem"] = f"{int(launcher.mem_gb * 1024)}MB"
    executor.update_parameters(**params)
    return executor


@contextlib.contextmanager
def _local_master_port(config: Config) -> Iterator[None]:
    """For a local job, a port that is free on this host now (or launcher.master_port), in this
    process's environment while submitit starts the job: its tasks inherit it. A Slurm job's
    tasks derive theirs from the job id (`rendezvous.job_port`): a port checked here would
    be checked on the wrong host."""
    if config.launcher.cluster != "local":
        yield
        return
    before = os.environ.get(LOCAL_PORT_VARIABLE)
    os.environ[LOCAL_PORT_VARIABLE] = str(config.launcher.master_port or free_port())
    try:
        yield
    finally:
        if before is None:
            del os.environ[LOCAL_PORT_VARIABLE]
        else:
            os.environ[LOCAL_PORT_VARIABLE] = before


def _reattach(run: RunPaths, config: Config, fingerprint: str) -> submitit.Job | None:
    if not run.job.is_file():
        return None
    record = json.loads(run.job.read_text())
    if record.get("fingerprint") != fingerprint or record.get("cluster") != config.launcher.cluster:
        return None
    job_id = record["job_id"]
    if record["cluster"] == "slurm":
        job = submitit.SlurmJob(run.submitit, job_id)
        if slurm_state(job) in ALIVE_SLURM_STATES - {"UNKNOWN"}:
            return job
    elif record["cluster"] == "local" and local_job_alive(job_id):
        return submitit.LocalJob(run.submitit, job_id)
    return None


def _archive_run(run: RunPaths, reason: str) -> None:
    """Move the previous run's files into runs/<experiment>/previous-N/: never delete them."""
    movable = [p for p in (run.checkpoints, run.journal, run.final, run.train_done) if p.exists()]
    if not movable:
        return
    n = 1
    while (target := run.root / f"previous-{n}").exists():
        n += 1
    target.mkdir(parents=True)
    for path in movable:
        path.rename(target / path.name)
    print(f"train: {reason}; the previous run is kept in {target}", file=sys.stderr)


def _group_tags(config: Config) -> dict[str, str]:
    """A sweep point's run nests under its group's parent run (found or made here, or by the
    Snakemake rule `mlflow_group` before any training job starts, so that parallel jobs do not
    each make one). MLflow being down costs the nesting, never the training."""
    from pipeline.tracking import group_parent

    if config.tracking.group is None:
        return {}
    try:
        return {"mlflow.parentRunId": group_parent(config.tracking_uri, config.tracking.group)}
    except Exception as err:  # the store is unreachable: the journal keeps everything else
        print(f"warning: no MLflow parent run for {config.tracking.group}: {err}", file=sys.stderr)
        return {}


def warn_oversubscribed(config: Config) -> str | None:
    """A warning when each task's loader workers and training process outnumber its cores:
    they then take turns on the cores, and training waits for data."""
    workers, cpus = config.data.loader_workers, config.launcher.cpus_per_task
    if workers + 1 <= cpus:
        return None
    return (
        f"data.loader_workers = {workers} and the training process make {workers + 1} busy "
        f"processes per task on launcher.cpus_per_task = {cpus} cores: they will take turns and "
        f"training will wait for data. Set cpus_per_task: {workers + 1}, or loader_workers: "
        f"{cpus - 1}."
    )


def submit_and_wait(config: Config, fresh: bool = False) -> dict[str, Any]:
    run = RunPaths.of(config)
    warning = warn_oversubscribed(config)
    if warning is not None:
        print(f"train: warning: {warning}", file=sys.stderr)
    fingerprint = run_fingerprint(config)
    job = None if fresh else _reattach(run, config, fingerprint)
    attached = job is not None
    if attached:
        print(f"train: re-attaching to job {job.job_id}, which is still running", file=sys.stderr)
    else:
        latest = checkpoint.load_latest(run.checkpoints)
        if fresh:
            _archive_run(run, "--fresh")
        elif latest is not None and latest.state["fingerprint"] != fingerprint:
            _archive_run(run, "the config or the shards changed since the last checkpoint")
        elif latest is None:
            _archive_run(run, "no checkpoint to resume from")
        else:
            print(f"train: resuming from {latest.path}", file=sys.stderr)
        tags = {
            "git_commit": git_commit(),
            "fingerprint": fingerprint,
            "global_batch": str(config.global_batch),
            "point": config.experiment,
            "method": config.method,
            "seed": str(config.seed),
            **_group_tags(config),
        }
        executor = make_executor(config, run.submitit)
        with _local_master_port(config):
            job = executor.submit(TrainJob(config.model_dump(mode="json"), fingerprint, tags))
        atomic.write_json(
            run.job,
            {
                "job_id": str(job.job_id),
                "cluster": config.launcher.cluster,
                "fingerprint": fingerprint,
                "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        print(
            f"train: submitted job {job.job_id} ({config.launcher.cluster}, "
            f"{config.launcher.world_size} processes); logs in {run.submitit}",
            file=sys.stderr,
        )
    if config.launcher.cluster == "debug":  # ran in this process already
        summary = job.results()[0]
    else:
        summary = wait_for(job, config, run.submitit, attached)
    summary = {**summary, "job_id": str(job.job_id), "final_weights": str(run.final)}
    atomic.write_json(run.train_done, summary)
    return summary

"""Waiting for a submitted training job: its state, rank 0's output as it comes, and, when it
ends without a result, a report of how (Slurm's account of the tasks, the crashed task's last
lines) and an MLflow run that does not stay RUNNING."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import submitit

from pipeline.config import Config
from pipeline.errors import FILE_FAULT_MARK, PipelineError
from pipeline.paths import RunPaths

ALIVE_SLURM_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SIGNALING",
    "STAGE_OUT",
    "UNKNOWN",
}


class TrainFailed(PipelineError, RuntimeError):
    """The training job ended without a result; the message says how and where its logs are."""


def local_job_alive(job_id: str) -> bool:
    """A local submitit job's id is its controller's pid; alive if that pid still runs it."""
    try:
        cmdline = Path(f"/proc/{int(job_id)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"submitit" in cmdline


def slurm_state(job: submitit.Job) -> str:
    try:
        return str(job.state).split()[0]
    except Exception:  # sacct may be briefly unavailable; treat as unknown, try again
        return "UNKNOWN"


def _job_finished(job: submitit.Job, cluster: str, attached: bool) -> bool:
    if cluster == "slurm":
        return slurm_state(job) not in ALIVE_SLURM_STATES
    if attached:  # re-attached local job: we have no process handle, only its pid
        return not local_job_alive(job.job_id)
    return job.done()


class _Tail:
    """Follows a growing log file from where it was last read."""

    def __init__(self, path: Path, out: Any) -> None:
        self.path = path
        self.out = out
        self.offset = path.stat().st_size if path.exists() else 0

    def pump(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, errors="replace") as handle:
            handle.seek(self.offset)
            text = handle.read()
            self.offset = handle.tell()
        if text:
            self.out.write(text)
            self.out.flush()


def _tail_lines(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _crash_log(job: submitit.Job, folder: Path) -> Path | None:
    """The first task log of the job holding a Python traceback: where it crashed."""
    stderrs = sorted(folder.glob(f"{job.job_id}_*_log.err"))
    return next((p for p in stderrs if "Traceback" in p.read_text(errors="replace")), None)


def _srun_errors(job: submitit.Job, folder: Path) -> list[str]:
    """What srun said of the job's tasks (which node's tasks were killed, which exited with
    which code), from the batch script's log: the first place to look when a node failed."""
    batch_log = folder / f"{job.job_id}_0_log.err"
    if not batch_log.exists():
        return []
    lines = batch_log.read_text(errors="replace").splitlines()
    return list(dict.fromkeys(line for line in lines if line.startswith("srun: error:")))[:10]


def _file_fault(job: submitit.Job, folder: Path) -> str | None:
    """The one line a task printed for a file-system error (a full disk, a quota), if any."""
    mark = f"{FILE_FAULT_MARK}train: "
    for log in sorted(folder.glob(f"{job.job_id}_*_log.err")):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(mark):
                return line[len(FILE_FAULT_MARK) :]
    return None


def _failure_report(job: submitit.Job, state: str, folder: Path) -> str:
    stderrs = sorted(folder.glob(f"{job.job_id}_*_log.err"))
    failing = _crash_log(job, folder) or (stderrs[0] if stderrs else None)
    text = f"training job {job.job_id} ended as {state}; its logs are in {folder}"
    srun = _srun_errors(job, folder)
    if srun:
        text += "\nSlurm's account of the tasks:\n" + "\n".join(srun)
    if failing is not None:
        text += f"\nlast lines of {failing}:\n{_tail_lines(failing)}"
    return text


def wait_for(job: submitit.Job, config: Config, folder: Path, attached: bool) -> dict[str, Any]:
    """Stream rank 0's output until the job ends; its result, or TrainFailed."""
    cluster = config.launcher.cluster
    paths = submitit.core.utils.JobPaths(folder, job.job_id, task_id=0)
    tails = [_Tail(paths.stdout, sys.stdout), _Tail(paths.stderr, sys.stderr)]
    if attached:  # show where it is, not everything it printed before we left
        for tail in tails:
            tail.offset = max(0, tail.offset - 2000)
    while not _job_finished(job, cluster, attached):
        for tail in tails:
            tail.pump()
        time.sleep(config.launcher.poll_s)
    for tail in tails:
        tail.pump()
    state = slurm_state(job) if cluster == "slurm" else "FINISHED"
    try:
        return job.results()[0]  # rank 0's summary (every task returns one)
    except Exception as err:  # FailedJobError, UncompletedJobError, ...
        _end_mlflow_run(config, job, state, crashed=_crash_log(job, folder) is not None)
        fault = _file_fault(job, folder)
        if fault is not None:  # a full disk, a quota: the whole story in one line
            raise TrainFailed(f"{fault} (training job {job.job_id}, logs in {folder})") from None
        raise TrainFailed(f"{_failure_report(job, state, folder)}\n{err}") from None


# Slurm's end states of a job that was stopped from outside rather than failing by itself.
STOPPED_SLURM_STATES = {"CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "DEADLINE"}


def _end_mlflow_run(config: Config, job: submitit.Job, state: str, crashed: bool) -> None:
    """The job is gone without a result: its MLflow run must not stay RUNNING. KILLED when it
    was stopped (cancelled, killed, out of time for good), FAILED when it crashed; a reason
    in the tag `end_reason`. A run the job already ended (a crash inside training sets FAILED
    and its reason itself) is left as it is."""
    from pipeline.tracking import Journal, mlflow_client

    run_id = Journal(RunPaths.of(config).journal).run_id()
    if run_id is None:
        return
    killed = state in STOPPED_SLURM_STATES or (state == "FINISHED" and not crashed)
    status = "KILLED" if killed else "FAILED"
    how = f"ended as {state}" if config.launcher.cluster == "slurm" else "ended without a result"
    try:
        client = mlflow_client(config.tracking_uri)
        if client.get_run(run_id).info.status != "RUNNING":
            return
        client.set_tag(run_id, "end_reason", f"training job {job.job_id} {how}")
        client.set_terminated(run_id, status)
    except Exception as err:  # the store is down: the run's status is not worth a failure
        print(f"warning: could not mark MLflow run {run_id} {status}: {err}", file=sys.stderr)

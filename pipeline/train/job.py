"""The callable submitit runs in every task of the training job: set the process up, train,
and hand over to submitit on the requeue signal.

`TrainJob` is checkpointable: on the requeue signal (time limit or preemption) the tasks agree
on a step, save a checkpoint, and rank 0 hands over to submitit, which resubmits the same
callable; the new job resumes from that checkpoint, in the same MLflow run.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

import submitit

from pipeline.config import Config
from pipeline.errors import FILE_FAULT_MARK, PipelineError, file_fault_line, first_line
from pipeline.hardware import cpu_name
from pipeline.paths import RunPaths


@dataclass
class _StopHandler:
    """Replaces submitit's requeue-signal handler: the signal only raises a flag, the loop
    saves a checkpoint at the next agreed step, then submitit's own handler requeues."""

    flag: Any
    original: Any = None

    def install(self) -> None:
        usr_signal = signal.SIGUSR2
        self.original = signal.getsignal(usr_signal)
        signal.signal(usr_signal, self._raise_flag)

    def _raise_flag(self, signum: int, frame: Any) -> None:
        print(
            f"received {signal.Signals(signum).name}: checkpointing at the next step",
            file=sys.stderr,
            flush=True,
        )
        self.flag.requested = True

    def hand_over(self) -> None:
        """Let submitit checkpoint (our `checkpoint` method) and requeue; it exits."""
        if callable(self.original):
            self.original(signal.SIGUSR2, None)


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


class LostRank(PipelineError, RuntimeError):
    """A collective failed because another rank of the job is gone."""


class TrainJob(submitit.helpers.Checkpointable):
    """The function every task of the training job runs."""

    def __init__(self, config: dict[str, Any], fingerprint: str, tags: dict[str, str]) -> None:
        self.config = config
        self.fingerprint = fingerprint
        self.tags = tags

    def __call__(self) -> dict[str, Any]:
        import torch

        from pipeline.data.sharding import describe_shards
        from pipeline.tracking import Journal, Tracker, flatten
        from pipeline.train.distributed import (
            init_distributed,
            peer_lost,
            shutdown_distributed,
        )
        from pipeline.train.host_memory import retain_freed_memory
        from pipeline.train.loop import Preempted, StopFlag, Trainer

        config = Config.model_validate(self.config)
        stop = StopFlag()
        handler = _StopHandler(stop)
        if os.environ.get("SUBMITIT_EXECUTOR") or os.environ.get("SLURM_JOB_ID"):
            handler.install()
        launcher = config.launcher
        env, place = init_distributed(launcher.gpus_per_node, launcher.master_port)
        print(place.describe(env.device, env.backend), file=sys.stderr, flush=True)
        hosts = self._hosts(env)
        if env.device.type == "cpu":
            torch.set_num_threads(launcher.cpus_per_task)
            retain_freed_memory()  # no page faults for the same buffers every step
        trainer = Trainer(config, env, self.fingerprint, stop)
        tracker = None
        if env.is_main:
            tags = {
                **self.tags,
                **self._job_tags(env, torch),
                "hosts": hosts,
                "rendezvous": f"{place.master_addr}:{place.master_port}",
                "steps_per_epoch": str(trainer.sampler.steps_per_epoch),
            }
            tracker = Tracker(
                Journal(RunPaths.of(config).journal),
                config.tracking_uri,
                config.mlflow_experiment,
                run_name=f"{config.experiment}-{self.fingerprint[:8]}",
                params=flatten(self.config),
                tags=tags,
                run_id=trainer.run_id,
            )
            trainer.run_id = tracker.run_id
            tracker.log_datasets(describe_shards(config))
        sampler = self._system_metrics(config, env, trainer, tracker)
        status = "FAILED"
        try:
            summary = trainer.fit(tracker)
            trainer.save_final()
            status = "FINISHED"
            return summary
        except Preempted:
            status = "RUNNING"  # the requeued job continues this MLflow run
            if sampler is not None:
                sampler.stop()
                sampler = None
            if tracker is not None:
                tracker.close(status)
                tracker = None
            shutdown_distributed()
            if env.is_main:
                handler.hand_over()  # submitit requeues and exits the process
            sys.exit(0)
        except Exception as err:  # a crash, the NaN check, a lost rank: the run says why
            if not peer_lost(err):
                file_fault = isinstance(err, OSError)  # a full disk, a quota: one line says it
                reason = (
                    file_fault_line("train", err)
                    if file_fault
                    else f"{type(err).__name__}: {first_line(err, 400)}"
                )
                if tracker is not None:
                    tracker.set_tag("end_reason", reason)
                if file_fault:  # the launcher finds the line and shows it; no traceback
                    print(f"{FILE_FAULT_MARK}{reason}", file=sys.stderr, flush=True)
                    raise SystemExit(2) from None
                raise
            lost = LostRank(
                f"rank {env.rank} on {socket.gethostname()} lost contact with the other ranks "
                f"({type(err).__name__}: {first_line(err, 300)}): a node failed or a process "
                "of the job was killed; the other tasks' logs say which. Run `train` again to "
                f"resume from the last checkpoint ({trainer.last_checkpoint or 'none yet'})."
            )
            if tracker is not None:
                tracker.set_tag("end_reason", str(lost))
            raise lost from err
        finally:
            if sampler is not None:
                sampler.stop()
            if tracker is not None:
                tracker.close(status)
            shutdown_distributed()

    @staticmethod
    def _hosts(env: Any) -> str:
        """Collective: the job's hosts and the ranks on each, e.g. `node1: 0-7; node2: 8-15`,
        for rank 0 to show and tag (every rank's own line is in its task log)."""
        from pipeline.train.distributed import gather_to_main

        ranks: dict[str, list[int]] = {}
        for rank, host in enumerate(gather_to_main(socket.gethostname())):
            ranks.setdefault(str(host), []).append(rank)
        if not env.is_main:
            return ""
        text = "; ".join(f"{host}: {_ranges(r)}" for host, r in ranks.items())
        print(f"ranks by host: {text}", flush=True)
        return text

    @staticmethod
    def _system_metrics(config: Config, env: Any, trainer: Any, tracker: Any) -> Any:
        """Start the first process of each node sampling its system metrics. Rank 0 logs its
        node's itself; on a multi-node run the others keep theirs for rank 0, which collects
        them at the end of each epoch (a collective: every rank takes part)."""
        from pipeline.train.distributed import gather_to_main
        from pipeline.train.system_metrics import SampleBuffer, SystemSampler

        interval, nodes = config.tracking.system_metrics_s, config.launcher.nodes
        if interval <= 0:
            return None
        node = env.rank // config.launcher.tasks_per_node
        buffer = SampleBuffer()
        sampler = None
        if env.local_rank == 0:
            if tracker is not None:
                scope = "system" if nodes == 1 else f"system/node_{node}"
                sampler = SystemSampler(interval, lambda sample: tracker.log_system(scope, sample))
            else:
                sampler = SystemSampler(interval, buffer.add)
            sampler.start()
        if nodes > 1:

            def collect() -> None:
                gathered = gather_to_main((node, buffer.drain()))
                if tracker is not None:
                    tracker.log_system_samples(
                        [
                            (f"system/node_{n}", sample)
                            for n, samples in gathered
                            for sample in samples
                        ]
                    )

            trainer.at_epoch_end = collect
        return sampler

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # The state is on disk already (saved by the loop); the new job resumes from it.
        return submitit.helpers.DelayedSubmission(
            TrainJob(self.config, self.fingerprint, self.tags)
        )

    @staticmethod
    def _job_tags(env: Any, torch: Any) -> dict[str, str]:
        device = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else cpu_name()
        return {
            "world_size": str(env.world_size),
            "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", "none"),
            "device": device,
            "backend": env.backend,
        }

"""CPU, memory, disk, network and GPU use during training, for MLflow's *System metrics* tab.

MLflow's own monitors (psutil; NVML or ROCm on GPUs) take the samples, on a background thread
of one process per node, so a step never waits for them. They are logged through the run's
Tracker like every other metric (the journal first, MLflow from its thread), so an unreachable
tracking server loses none: MLflow's SystemMetricsMonitor would instead stop at the first
failed request. On a multi-node run each node's metrics carry its id
(`system/node_3/cpu_utilization_percentage`), and the nodes other than rank 0's hand their
samples to rank 0 at the end of each epoch.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

Sample = dict[str, float]


def mlflow_monitors() -> list[Any]:
    """MLflow's monitors for this machine: CPU and memory, disk, network, and the GPUs when
    NVML (nvidia-ml-py) or ROCm can see any."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

    monitors: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    for gpu in (GPUMonitor, ROCMMonitor):
        try:
            monitors.append(gpu())
            break
        except Exception:  # no such GPUs, or no library to see them: CPU metrics only
            continue
    return monitors


class SystemSampler:
    """Every `interval_s`, one sample of this node, averaged over the interval, handed to
    `publish` on the sampling thread."""

    def __init__(self, interval_s: float, publish: Callable[[Sample], None]) -> None:
        self.interval_s = interval_s
        self.publish = publish
        self.monitors = mlflow_monitors()
        self._stop = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)

    def start(self) -> SystemSampler:
        for monitor in self.monitors:  # the first CPU reading covers the time since this one
            monitor.collect_metrics()
            monitor.clear_metrics()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5 * self.interval_s + 5)

    def sample(self) -> Sample:
        metrics: Sample = {}
        for monitor in self.monitors:
            monitor.collect_metrics()
            metrics.update(monitor.aggregate_metrics())
            monitor.clear_metrics()
        return metrics

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.publish(self.sample())
            except Exception as err:  # a monitor failing must not end training
                if not self._warned:
                    self._warned = True
                    print(f"warning: system metrics: {err}", file=sys.stderr, flush=True)


class SampleBuffer:
    """Samples kept for rank 0 by a node that has no tracker of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: list[Sample] = []

    def add(self, sample: Sample) -> None:
        with self._lock:
            self._samples.append(sample)

    def drain(self) -> list[Sample]:
        with self._lock:
            samples, self._samples = self._samples, []
        return samples

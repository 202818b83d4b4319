"""benchmarks/gpu.sh runs once, unattended, on a lent GPU machine with a few minutes of budget:
it must not be the first time it runs. Here it runs on the CPU at tiny sizes (`--quick`, a
smaller model), through the shell script as the device runs it, and every row must come out.
The numbers mean nothing on a CPU and are not checked."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT

ROWS = [
    "resnet18 training, synthetic data, fp32 (TF32)",
    "resnet18 training, synthetic data, bf16 autocast",
    "resnet18 training, synthetic data, bf16 + channels_last",
    "our loader alone (workers: 1)",
    "resnet18 bf16 + channels_last fed by our loader",
    "loader alone / training fed by it",
    "JPEG decode (cpu_one_core)",
    "resnet18 training step, 2 process(es), gloo",
    "resnet18 training, synthetic data, bf16 + channels_last, compiled update",
    "that measurement with its compile",
]


def test_the_gpu_script_runs_every_measurement_on_a_cpu(tmp_path: Path):
    script = PROJECT / "benchmarks" / "gpu.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = os.environ | {
        "DEVICE": "cpu",
        "OUT": str(tmp_path),
        # The script calls `python3`; here that must be this interpreter, with its packages.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    run = subprocess.run(
        ["bash", str(script), "--quick", "--arch", "resnet18"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert [label for label, _, _ in report["rows"]] == ROWS
    assert all(math.isfinite(value) and value > 0 for _, value, _ in report["rows"])
    assert "| resnet18 bf16 + channels_last fed by our loader |" in run.stdout

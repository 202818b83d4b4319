"""retain_freed_memory: a real CPU training step, in a fresh process each way, faults its
buffers in again every step unless freed memory is kept."""

import json
import statistics
import subprocess
import sys

import pytest

from conftest import PROJECT

STEPS = """
import json, resource, sys
import torch, torchvision
from pipeline.train.host_memory import retain_freed_memory
retained = retain_freed_memory() if sys.argv[1] == "retain" else None
torch.set_num_threads(1)  # one malloc arena: the same steps every run
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=10)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))
faults = []
for _ in range(22):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"retained": retained, "faults": faults[2:]}))
"""


def _steps(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", STEPS, mode], cwd=PROJECT, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux's")
def test_kept_memory_takes_the_page_faults_of_a_training_step_away():
    default = _steps("default")
    retained = _steps("retain")
    assert retained["retained"] is True
    # Measured over steps 3-22: by default mostly 3,000-11,500 faults per step, but a single step
    # can fall to a few hundred (CI once saw 385) and a few in a row to none (the median of 8
    # steps was once 0), so the median of 20 is what is checked (4,320-9,184 in 8 runs); with
    # the memory kept mostly none, now and then one step with ~500-2,700 while the heap grows.
    assert statistics.median(default["faults"]) > 1000
    assert sum(retained["faults"]) < sum(default["faults"]) / 5

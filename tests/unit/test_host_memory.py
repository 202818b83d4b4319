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


def _faulting_default_run(tries: int = 4) -> dict:
    """Steps with glibc's default settings that fault, as they mostly do: 3,440-9,184 faults per
    step (median of steps 3-22) in 18 of 20 fresh processes here. Now and then glibc's dynamic
    thresholds settle so that a process hardly faults at all (median 0 in the other two, and once
    in `make test`): that run leaves nothing to take away, so another process is tried."""
    for _ in range(tries):
        run = _steps("default")
        if statistics.median(run["faults"]) > 1000:
            return run
    pytest.fail(
        f"default malloc took under 1,000 page faults per training step in {tries} fresh "
        "processes: on this machine there is nothing for retain_freed_memory to take away"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux's")
def test_kept_memory_takes_the_page_faults_of_a_training_step_away():
    default = _faulting_default_run()
    retained = _steps("retain")
    assert retained["retained"] is True
    # With the memory kept, steps 3-22 fault mostly not at all, now and then one step with
    # ~250-2,100 while the heap grows: 1,027-3,075 in all in 8 runs, against 110,218-150,034
    # in 7 default runs that faulted.
    assert sum(retained["faults"]) < sum(default["faults"]) / 5

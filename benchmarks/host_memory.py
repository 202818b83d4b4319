"""Minor page faults per CPU training step, with glibc's default malloc and with freed memory
kept (`pipeline.train.host_memory.retain_freed_memory`, which every CPU training job calls).

Each measurement is a fresh process (the malloc settings are process-wide and glibc's dynamic
thresholds start from scratch), training ResNet-18 at 64 px, batch 16, one thread; steps 3-22
are counted. The two settings alternate, so drift on the machine hits both alike.

    python benchmarks/host_memory.py [--processes 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.report import write_benchmark_report  # noqa: E402

STEPS = """
import json, resource, sys
import torch, torchvision
from pipeline.train.host_memory import retain_freed_memory
retained = retain_freed_memory() if sys.argv[1] == "retained" else None
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
SETTINGS = ("default", "retained")


def measure(setting: str) -> list[int]:
    """Page faults of steps 3-22 in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", STEPS, setting],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["faults"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=8, help="fresh processes per setting")
    parser.add_argument("--out", type=Path, default=PROJECT / "results/bench/host_memory.json")
    args = parser.parse_args()
    runs: dict[str, list[list[int]]] = {s: [] for s in SETTINGS}
    for _ in range(args.processes):
        for setting in SETTINGS:
            runs[setting].append(measure(setting))
    rows = {}
    for setting in SETTINGS:
        medians = [statistics.median(faults) for faults in runs[setting]]
        rows[setting] = {
            "median_faults": medians,
            "processes_under_1000": sum(m < 1000 for m in medians),
        }
    report = write_benchmark_report(args.out, "host_memory", args, rows=rows, faults=runs)
    print(markdown(report))


LABELS = {"default": "default", "retained": "freed memory kept"}


def markdown(report: dict) -> str:
    """The table of docs/performance.md, from the report's JSON."""
    lines = [
        "| malloc | faults per step, median over each process's steps (min-max over processes) "
        "| processes under 1,000 |",
        "|---|---|---|",
    ]
    for setting, row in report["rows"].items():
        medians = row["median_faults"]
        lines.append(
            f"| {LABELS[setting]} | {statistics.median(medians):,.0f} ({min(medians):,.0f}-"
            f"{max(medians):,.0f}) | {row['processes_under_1000']} of {len(medians)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

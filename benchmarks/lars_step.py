"""The LARS optimizer step against torch.optim.SGD's, at ResNet-50's parameter shapes.

Side by side, interleaved in a balanced order over the repeats: our LARS in each of its forms
(a loop over the tensors, the CPU default; foreach kernels over each group, the GPU default;
torch.compile'd, `train.compile_optimizer`), the LARS step as it was before those forms (the
norms by `torch._foreach_norm`, then a Python loop of small kernels per tensor; kept here as
the reference), and torch.optim.SGD with momentum and weight decay (its foreach
implementation, the default). The groups are training's: weights with LARS's trust ratio and
weight decay, BN parameters and biases with plain momentum. Random gradients; the timed steps
follow one untimed (and a compile, for the compiled form). Reported: the median ms per step,
and the median of the per-repeat ratios with a bootstrap 95 % interval. Goal: LARS at most
1.3x SGD's step.

    python benchmarks/lars_step.py [--arch resnet50] [--repeats 20] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.order import balanced_order  # noqa: E402
from benchmarks.report import write_benchmark_report  # noqa: E402
from benchmarks.stats import median_interval, paired_ratios  # noqa: E402
from pipeline.train.host_memory import retain_freed_memory  # noqa: E402
from pipeline.train.lars import LARS  # noqa: E402
from pipeline.train.model import param_groups  # noqa: E402


class BeforeLARS(LARS):
    """The update as LARS computed it before its three forms, line for line."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            buffers = []
            for p in params:
                if not self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(self.state[p]["momentum_buffer"])
            lr, momentum = group["lr"], group["momentum"]
            if not group["adapt"]:
                for p, g, v in zip(params, grads, buffers, strict=True):
                    v.mul_(momentum).add_(g, alpha=lr)
                    p.sub_(v)
                continue
            wd, eeta, eps = group["weight_decay"], group["eeta"], group["eps"]
            weight_norms = torch._foreach_norm(params)
            grad_norms = torch._foreach_norm(grads)
            for p, g, v, w_norm, g_norm in zip(
                params, grads, buffers, weight_norms, grad_norms, strict=True
            ):
                trust = torch.where(
                    (w_norm > 0) & (g_norm > 0),
                    eeta * w_norm / (g_norm + wd * w_norm + eps),
                    torch.ones_like(w_norm),
                )
                update = g.add(p, alpha=wd) if wd else g
                v.mul_(momentum).addcmul_(update, trust, value=lr)
                p.sub_(v)


SGD, BEFORE = "torch.optim.SGD", "LARS before (norms fused, update per tensor)"
VARIANTS: dict[str, Callable[[list[dict]], torch.optim.Optimizer]] = {
    "LARS, per tensor (CPU default)": lambda groups: LARS(groups, lr=2.0, foreach=False),
    "LARS, foreach (GPU default)": lambda groups: LARS(groups, lr=2.0, foreach=True),
    "LARS, compiled": lambda groups: LARS(groups, lr=2.0, compiled=True),
    BEFORE: lambda groups: BeforeLARS(groups, lr=2.0),
    SGD: lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9),
}


def optimizers(arch: str) -> dict[str, torch.optim.Optimizer]:
    """Each on its own copy of the model's parameters, with random gradients."""
    made = {}
    for name, make in VARIANTS.items():
        torch.manual_seed(0)
        model = torchvision.models.get_model(arch, num_classes=1000)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        made[name] = make(param_groups(model, 5e-5))
    return made


def markdown(report: dict) -> str:
    """The table of docs/performance.md, from the report's JSON."""
    r = report["results"]
    lines = [f"| step | ms/step | vs {SGD} | vs LARS before |", "|---|---|---|---|"]
    for name, ms in r["ms"].items():
        cells = ""
        for other in (SGD, BEFORE):
            key = f"{name} / {other}"
            if key in r["ratios"]:
                value, (low, high) = r["ratios"][key], r["intervals"][key]
                cells += f" {value:.2f}x ({low:.2f}-{high:.2f}) |"
            else:
                cells += " |"
        lines.append(f"| {name} | {ms:.1f} |{cells}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--out", type=Path, default=PROJECT / "results" / "bench")
    args = parser.parse_args()
    retain_freed_memory()
    made = optimizers(args.arch)
    for opt in made.values():
        opt.step()  # the compiled form compiles here, before anything is timed
    times: dict[str, list[float]] = {name: [] for name in made}
    for repeat in range(args.repeats):
        for name in balanced_order(list(made), repeat):
            made[name].step()  # untimed
            start = time.perf_counter()
            for _ in range(args.steps):
                made[name].step()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    ratios, intervals = {}, {}
    for name in made:
        for other in (SGD, BEFORE):
            if name in (SGD, other):
                continue
            paired = paired_ratios(times[name], times[other])
            ratios[f"{name} / {other}"] = statistics.median(paired)
            intervals[f"{name} / {other}"] = median_interval(paired)
    report = write_benchmark_report(
        args.out / "lars_step.json",
        "lars_step",
        args,
        results={
            "ms": {name: statistics.median(t) for name, t in times.items()},
            "ratios": ratios,
            "intervals": intervals,
            "repeats": times,
            "tensors": sum(len(g["params"]) for g in made[SGD].param_groups),
        },
    )
    print(f"\nOptimizer step at {args.arch}'s shapes, {args.repeats} repeats x {args.steps} steps")
    print(markdown(report))


if __name__ == "__main__":
    main()

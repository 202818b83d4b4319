"""What the reduced-precision gradient all-reduce loses at 8 to 1,024 workers, on ResNet-50.

Real ResNet-50 gradients: 8 micro-batches of 32 images (224 px; Imagenette's when the shared
data is present, else random pixels), at initialisation, where the paper's RMSprop warm-up
begins. A world of W ranks gives rank r micro-batch r mod 8's gradient. Each form turns a
rank's fp32 gradient into what it sends (for ours, the hook's own `wire_values`), and the sum
is taken in two orders, rounded to the wire dtype after each addition as NCCL and gloo reduce
half-precision data: a ring's (one rank's value added at a time) and a binary tree's. The
result is compared, on 2^21 elements drawn at random from the 25.6 M, with the float64 mean of
the ranks' gradients.

    python benchmarks/allreduce_precision.py [--worlds 8 32 128 512 1024] [--samples 2097152]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.report import write_benchmark_report  # noqa: E402
from pipeline.config import ModelConfig  # noqa: E402
from pipeline.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from pipeline.train.distributed import wire_values  # noqa: E402
from pipeline.train.model import build_model  # noqa: E402

SHARED = PROJECT.parent / "shared" / "data" / "imagenette-ci" / "train"
MICRO_BATCHES = 8
FP16, BF16, FP32 = torch.float16, torch.bfloat16, torch.float32


def images(count: int, size: int) -> tuple[torch.Tensor, str]:
    """`count` normalised images: Imagenette's where the shared data is, else random pixels."""
    files = sorted(SHARED.glob("*/*.JPEG"))
    if not files:
        return torch.randn(count, 3, size, size), "random pixels"
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    batch = []
    for i in range(count):
        image = Image.open(files[i % len(files)]).convert("RGB").resize((size, size))
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
        batch.append((pixels - mean) / std)
    return torch.stack(batch), "Imagenette (imagenette-ci train images)"


def micro_batch_gradients(batch: int, size: int) -> tuple[list[torch.Tensor], str]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet50"), 1000)
    x, source = images(MICRO_BATCHES * batch, size)
    labels = torch.randint(0, 1000, (MICRO_BATCHES * batch,))
    grads = []
    for k in range(MICRO_BATCHES):
        model.zero_grad(set_to_none=True)
        part = slice(k * batch, (k + 1) * batch)
        F.cross_entropy(model(x[part]), labels[part]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        print(f"  gradient of micro-batch {k + 1}/{MICRO_BATCHES}", flush=True)
    return grads, source


def ring_sum(sent: list[torch.Tensor], world: int, dtype: torch.dtype) -> torch.Tensor:
    """A ring's order: rank 0's value, then each rank's added in turn, rounded to `dtype`
    after each sum (W - 1 roundings in a row: the most a sum can lose)."""
    total = sent[0].clone()
    for rank in range(1, world):
        total = (total.float() + sent[rank % len(sent)].float()).to(dtype)
    return total.float()


def tree_sum(sent: list[torch.Tensor], world: int, dtype: torch.dtype) -> torch.Tensor:
    """A binary tree's order: neighbours' values added pairwise, level by level (log2(W)
    roundings). Rank r holds value r mod 8, so from the fourth level up every pair holds two
    equal partial sums, and adding one to itself is exact: the levels above 8 double."""
    level = [sent[rank % len(sent)] for rank in range(min(world, len(sent)))]
    while len(level) > 1:
        level = [
            (a.float() + b.float()).to(dtype) for a, b in zip(level[::2], level[1::2], strict=True)
        ]
    total = level[0]
    for _ in range(int(math.log2(world // min(world, len(sent))))):
        total = (total.float() * 2).to(dtype)  # exact, unless it overflows the dtype
    return total.float()


def power_of_two_root(world: int) -> int:
    return 2 ** round(math.log2(world) / 2)


@dataclass(frozen=True)
class Form:
    """What a rank sends of its fp32 gradient (`send`), in `dtype`, and how the sum becomes
    the mean (`finish`)."""

    dtype: torch.dtype
    send: Callable[[torch.Tensor, int], torch.Tensor]
    finish: Callable[[torch.Tensor, int], torch.Tensor] = lambda total, world: total


def divide_then_cast(dtype: torch.dtype) -> Form:
    return Form(dtype, lambda g, world: wire_values(g.clone(), world, dtype))


FORMS = {
    "fp16, divide then cast (ours)": divide_then_cast(FP16),
    "fp16, cast then divide": Form(FP16, lambda g, world: g.to(FP16).div_(world)),
    "fp16, split sqrt(W) before and after": Form(
        FP16,
        lambda g, world: (g / power_of_two_root(world)).to(FP16),
        lambda total, world: total / (world // power_of_two_root(world)),
    ),
    "bf16, divide then cast": divide_then_cast(BF16),
    "fp32": divide_then_cast(FP32),
}


def losses(result: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    finite = torch.isfinite(result)
    nonzero = exact != 0
    zeroed = nonzero & (result == 0)
    error = (result.double() - exact).where(finite, torch.zeros((), dtype=torch.float64))
    relative = (error.abs() / exact.abs())[nonzero & finite]
    return {
        "relative_l2_error": float(error.norm() / exact.norm()),
        "zeroed_share": float(zeroed.sum() / nonzero.sum()),
        "zeroed_norm_share": float(exact[zeroed].square().sum() / exact.square().sum()),
        "median_relative_error": float(relative.median()),
        "nonfinite": int((~finite).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[8, 32, 128, 512, 1024])
    parser.add_argument("--samples", type=int, default=2**21)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=PROJECT / "results" / "bench")
    args = parser.parse_args()
    start = time.perf_counter()
    print("ResNet-50 gradients:")
    grads, source = micro_batch_gradients(args.batch, args.size)
    picks = torch.randperm(grads[0].numel(), generator=torch.Generator().manual_seed(0))
    picks = picks[: args.samples]
    sampled = [g[picks] for g in grads]
    exact = torch.stack(sampled).double().mean(0)  # W is a multiple of 8: the same mean
    magnitudes = exact.abs()[exact != 0]
    quantiles = {q: float(magnitudes.quantile(q)) for q in (0.01, 0.1, 0.5, 0.9, 0.99)}
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for name, form in FORMS.items():
        table[name] = {}
        for world in args.worlds:
            sent = [form.send(g, world) for g in sampled]
            table[name][str(world)] = {
                order: losses(form.finish(add(sent, world, form.dtype), world), exact)
                for order, add in (("ring", ring_sum), ("tree", tree_sum))
            }
    report = write_benchmark_report(
        args.out / "allreduce_precision.json",
        "allreduce_precision",
        args,
        images=source,
        parameters=grads[0].numel(),
        mean_magnitude_quantiles=quantiles,
        results=table,
        seconds=time.perf_counter() - start,
    )
    print(f"\nAll-reduce precision against the float64 mean, ResNet-50 gradients ({source}),")
    print(f"{args.samples:,} of {grads[0].numel():,} elements; |mean| quantiles: {quantiles}")
    print(markdown(report))


def markdown(report: dict) -> str:
    """The table of docs/performance.md, from the report's JSON."""
    lines = [
        "| form | W | relative L2 error, ring | relative L2 error, tree | elements returned as 0 "
        "(ring) | their share of the mean's squared norm |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in report["results"].items():
        for world, orders in rows.items():
            ring, tree = orders["ring"], orders["tree"]
            bad = sum(r["nonfinite"] for r in orders.values())
            flag = f" ({bad} non-finite)" if bad else ""
            lines.append(
                f"| {name} | {int(world):,} | {ring['relative_l2_error']:.2e}{flag} | "
                f"{tree['relative_l2_error']:.2e} | {100 * ring['zeroed_share']:.2f} % | "
                f"{100 * ring['zeroed_norm_share']:.4f} % |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

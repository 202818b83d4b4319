"""Our training step against a hand-written plain PyTorch loop, side by side in one run.

Both train the same model on the same batches held in memory, with 1 and with 2 gloo
processes. Ours is `pipeline.train.step.TrainStep`, exactly what the training loop runs: the
hybrid optimizer, DDP with the fp16 communication hook (2 processes), uint8 -> float
normalisation, the accumulation machinery, and tracking at the default interval (a host sync,
a small all-reduce and a journal/MLflow record every `log_every` steps). The plain loop is
`torch.optim.SGD(momentum=0.9)`, DDP without a hook (2 processes) or the bare model (1), inputs
already normalised; the same loop with `torch.optim.RMSprop(momentum=0.9)` is the baseline that
does the RMSprop phase's arithmetic (a square average, a square root and a division per
parameter), so that what our machinery costs shows apart from what the paper's optimizer
costs. Ours runs in both phases, with the default optimizer update and with
`train.compile_optimizer` (the update fused by torch.compile). The variants take turns in
many short measurements (3 steps after 1 untimed), in a balanced order (in every six repeats
each runs right after each other once); the table gives the median ms/step and the median of
the ratios to the plain loops within a repeat, with its bootstrap 95 % interval. With 2
processes, ours also runs measuring the gradient noise scale on one step in LOG_EVERY (as
training does) and on every step, each compared with ours without it. Also: the optimizer step
alone (the hybrid and LARS) against torch.optim.SGD and torch.optim.RMSprop. Every process
keeps its freed memory, as a CPU training job does (`retain_freed_memory`).

    python benchmarks/trainer_step.py [--arch resnet18] [--size 64] [--batch 32] [--repeats 24]
        [--processes 1 2] [--variants ours_sgd_phase ...]

`--variants` times only the named steps of ours (and the plain loops they are compared with),
so that a longer run can settle one ratio.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import torchvision

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.order import balanced_order  # noqa: E402
from benchmarks.report import write_benchmark_report  # noqa: E402
from benchmarks.stats import median_interval, paired_ratios  # noqa: E402
from benchmarks.trainer_step_tables import (  # noqa: E402
    BASELINES,
    VARIANTS,
    markdown,
    optimizer_markdown,
)
from pipeline.config import ModelConfig, OptimizerConfig  # noqa: E402
from pipeline.data.transforms import Normalizer  # noqa: E402
from pipeline.ports import free_port  # noqa: E402
from pipeline.tracking import Journal, Tracker  # noqa: E402
from pipeline.train.distributed import DistEnv, all_reduce_sum, wrap_ddp  # noqa: E402
from pipeline.train.host_memory import retain_freed_memory  # noqa: E402
from pipeline.train.lars import LARS  # noqa: E402
from pipeline.train.model import build_model, param_groups  # noqa: E402
from pipeline.train.noise_scale import NoiseProbe  # noqa: E402
from pipeline.train.optim import HybridRMSpropSGD  # noqa: E402
from pipeline.train.step import TrainStep  # noqa: E402

LOG_EVERY = 10  # the TrainConfig default
FIRST_STEPS = 3  # untimed, before the repeats


# The plain loops: how the table names them, and their optimizer.
def make_batches(args, rank: int, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 batches laid out as the loader delivers them: NCHW views of channels-last memory."""
    generator = torch.Generator().manual_seed(rank)
    shape = (args.batch, args.size, args.size, 3)
    return [
        (
            torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator).permute(
                0, 3, 1, 2
            ),
            torch.randint(0, 1000, (args.batch,), generator=generator),
        )
        for _ in range(count)
    ]


def ours(
    args,
    env: DistEnv,
    batches,
    tracker: Tracker | None,
    alpha: float,
    compiled: bool,
    noise: str | None,
):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=args.arch), 1000)
    wrapped, comm = wrap_ddp(model, env, "fp16")
    optimizer = HybridRMSpropSGD(
        param_groups(model, 1e-4), lr=0.1, alpha_sgd=alpha, compiled=compiled
    )
    probe = None
    if noise is not None:
        probe = comm.probe = NoiseProbe(model, accumulate=1, hooked=env.world_size > 1)
    step = TrainStep(model, wrapped, optimizer, Normalizer(env.device), env.device, noise=probe)
    sums = torch.zeros(3, dtype=torch.float64)
    losses: list[torch.Tensor] = []
    next_batch = functools.partial(next, itertools.cycle(batches))

    def run(iteration: int | None) -> None:
        log_point = iteration is not None and (iteration + 1) % LOG_EVERY == 0
        measure = noise == "every" or (noise == "log" and log_point)
        losses.append(
            step(
                next_batch,
                0.1,
                alpha,
                sgd_from_now_on=alpha == 1.0,
                sums=sums,
                measure_noise=measure,
            )
        )
        if log_point:  # the loop's sync point
            finite = float(torch.isfinite(torch.stack(losses)).all())
            norms = [float(probe.small_sq), float(probe.big_sq)] if probe else [0.0, 0.0]
            all_reduce_sum([*sums.tolist(), finite, 0.0, 0.0, *norms], env.device)
            if tracker is not None:
                tracker.log(
                    "iteration",
                    iteration,
                    {"lr": 0.1, "alpha_sgd": alpha, "train_loss": float(sums[0])},
                )
            losses.clear()
            sums.zero_()

    return model, run


def plain(args, env: DistEnv, batches, optimizer_name: str):
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.arch, num_classes=1000)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if env.world_size > 1 else model
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    else:  # the paper's RMSprop settings, as the hybrid optimizer's RMSprop term uses them
        paper = OptimizerConfig()
        optimizer = torch.optim.RMSprop(
            model.parameters(),
            lr=paper.lr_rmsprop,
            alpha=paper.rms_decay,
            eps=paper.eps,
            momentum=paper.momentum,
            weight_decay=1e-4,
        )
    normalize = Normalizer(env.device)
    floats = itertools.cycle([(normalize(x), y) for x, y in batches])  # normalised, in memory

    def run(iteration: int | None) -> None:
        x, y = next(floats)
        loss = F.cross_entropy(wrapped(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, run


def timed(run, first: int, steps: int, warmup: int) -> float:
    """ms per step of `steps` iterations after `warmup` untimed ones. The timed ones are numbered
    on from `first`, so that across a variant's measurements one timed step in LOG_EVERY
    tracks, as in training; untimed ones (numbered None) never do."""
    for _ in range(warmup):
        run(None)
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    for i in range(first, first + steps):
        run(i)
    if dist.is_initialized():
        dist.barrier()
    return (time.perf_counter() - start) / steps * 1000


def worker(rank: int, world: int, args, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    retain_freed_memory()  # as a CPU training job does; both loops run in this process
    dist.init_process_group("gloo", rank=rank, world_size=world)
    env = DistEnv(rank, world, rank, torch.device("cpu"), "gloo")
    batches = make_batches(args, rank)
    tracker = None
    if rank == 0:
        folder = Path(tempfile.mkdtemp())
        tracker = Tracker(
            Journal(folder / "metrics.jsonl"),
            f"sqlite:///{folder}/mlflow.db",
            "bench",
            "bench",
            {},
            {},
            None,
        )
    runners = {
        name: plain(args, env, batches, opt)[1]
        for name, (_, opt) in BASELINES.items()
        if name in args.baselines
    }
    for name in args.variants:
        _, alpha, compiled, noise = VARIANTS[name]
        if noise is not None and world == 1:
            continue  # one process, no accumulation: there is no noise scale to measure
        runners[name] = ours(args, env, batches, tracker, alpha, compiled, noise)[1]
    results: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    # Each variant's first steps cost more (the compiled variants compile, the allocator
    # grows): they run once, untimed, before the repeats.
    for name in names:
        for _ in range(FIRST_STEPS):
            runners[name](None)
    done = dict.fromkeys(names, 0)  # timed iterations each variant has run
    for repeat in range(args.repeats):
        # Many short measurements, interleaved, in a balanced order: a shared machine's speed drifts
        # over seconds, so a variant and the plain loop timed close together in one repeat
        # compare better, and whatever running first or right after a given variant costs
        # is spread over all of them.
        for name in balanced_order(names, repeat):
            results[name].append(timed(runners[name], done[name], args.steps, args.warmup))
            done[name] += args.steps
    if tracker is not None:
        tracker.close()
        shutil.rmtree(folder)  # the throwaway MLflow store and journal
        (out / f"world{world}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def optimizer_only(args) -> dict[str, float]:
    torch.set_num_threads(os.cpu_count() or 1)
    retain_freed_memory()
    model = torchvision.models.get_model(args.arch, num_classes=1000)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    candidates = {
        "hybrid (alpha_sgd 0.5)": HybridRMSpropSGD(params, lr=0.1, alpha_sgd=0.5),
        "hybrid (SGD phase, m skipped)": HybridRMSpropSGD(params, lr=0.1, alpha_sgd=1.0),
        "hybrid compiled (alpha_sgd 0.5)": HybridRMSpropSGD(
            params, lr=0.1, alpha_sgd=0.5, compiled=True
        ),
        "hybrid compiled (SGD phase)": HybridRMSpropSGD(
            params, lr=0.1, alpha_sgd=1.0, compiled=True
        ),
        "LARS": LARS([{"params": params, "weight_decay": 1e-4}], lr=0.1),
        "torch.optim.SGD momentum": torch.optim.SGD(params, lr=0.1, momentum=0.9),
        "torch.optim.RMSprop momentum": torch.optim.RMSprop(params, lr=3e-4, momentum=0.9),
    }
    for name in ("hybrid (SGD phase, m skipped)", "hybrid compiled (SGD phase)"):
        candidates[name].param_groups[0]["track_square_avg"] = False
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(args.repeats):
        for name, opt in candidates.items():
            opt.step()
            start = time.perf_counter()
            for _ in range(5):
                opt.step()
            times[name].append((time.perf_counter() - start) / 5 * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each")
    parser.add_argument(
        "--repeats",
        type=int,
        help="a multiple of the number of steps timed (of twice it, if odd) balances the order "
        "(default: 4 times it)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1, 2],
        choices=[1, 2],
        help="process counts to measure (one run each)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="our steps to time (default: all)",
    )
    parser.add_argument("--out", type=Path, default=PROJECT / "results" / "bench")
    args = parser.parse_args()
    args.variants = list(dict.fromkeys(args.variants))  # each once, in the order given
    # The plain SGD loop is every variant's baseline; the RMSprop loop only the RMSprop phase's.
    rmsprop_phase = any(VARIANTS[name][1] < 1 for name in args.variants)
    args.baselines = ["plain", "plain_rmsprop"] if rmsprop_phase else ["plain"]
    if args.repeats is None:
        args.repeats = 4 * (len(args.baselines) + len(args.variants))
    args.out.mkdir(parents=True, exist_ok=True)

    steps = {}
    for world in args.processes:
        mp.start_processes(
            worker, args=(world, args, free_port(), args.out), nprocs=world, start_method="spawn"
        )
        raw = json.loads((args.out / f"world{world}.json").read_text())
        steps[world] = {k: statistics.median(v) for k, v in raw.items()}
        steps[world]["spread"] = {k: [min(v), max(v)] for k, v in raw.items()}
        # Each repeat times the plain loops and ours back to back: the ratio within a repeat
        # cancels the machine's drift, so the table reports the median of those paired ratios.
        for phase in (v for v in args.variants if v in raw):
            alpha, noise = VARIANTS[phase][1], VARIANTS[phase][3]
            baselines = args.baselines if alpha < 1 else ["plain"]
            if noise is not None and "ours_sgd_phase" in raw:
                baselines = [*baselines, "ours_sgd_phase"]  # what measuring the noise costs
            for baseline in baselines:
                paired = paired_ratios(raw[phase], raw[baseline])
                key = f"{phase}_vs_{baseline}"
                steps[world][key] = statistics.median(paired)
                steps[world][f"{key}_spread"] = [min(paired), max(paired)]
                steps[world][f"{key}_interval"] = median_interval(paired)
    optim = optimizer_only(args)

    report = write_benchmark_report(
        args.out / "trainer_step.json",
        "trainer_step",
        args,
        step_ms=steps,
        optimizer_ms=optim,
    )
    print(
        f"\nTraining step, {args.arch} at {args.size} px, batch {args.batch} per process, "
        f"{args.steps} steps x {args.repeats} interleaved repeats: median ms/step, and the "
        "median of the per-repeat ratios to the plain loops (to the RMSprop one for the RMSprop "
        "phase only) with its bootstrap 95 % interval; min-max in the JSON"
    )
    print(markdown(report))
    n_params = sum(p.numel() for p in torchvision.models.get_model(args.arch).parameters())
    print(f"\nOptimizer step alone, {args.arch} ({n_params / 1e6:.1f} M parameters), ms")
    print(optimizer_markdown(report))


if __name__ == "__main__":
    main()

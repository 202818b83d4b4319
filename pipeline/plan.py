"""A scaling model: time per iteration and time to train on N GPUs.

Per iteration every GPU computes forward and backward on its own batch (T_compute), then the
gradients are averaged with a two-level ring all-reduce (alpha-beta model):

    inside a node (g GPUs):  2 (g-1)/g x S / B_node_internal            (reduce-scatter + gather)
    across n nodes:          2 (n-1)/n x S / B_network + 2 (n-1) alpha  (each GPU's 1/g share,
                                                                        the NICs shared by g)

S = parameters x bytes per value (fp16: 2). Buckets all-reduced while backward still runs hide up
to `overlap` x the backward time (backward ~ 2/3 of T_compute); the rest is exposed:

    T_iter = T_compute + max(0, T_allreduce - overlap x 2/3 x T_compute)
    time   = epochs x floor(images / (N x batch)) x T_iter;   efficiency = T_compute / T_iter

`bandwidth_efficiency` scales both bandwidths (1.0 = the links' rated speed). The model leaves
out data loading, the optimizer step, BN averaging and validation, stragglers and congestion, so
at the rated speed it is an optimistic bound; `check_against_paper` says how far, and which
bandwidth efficiency would reproduce the paper's time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

IMAGENET_TRAIN = 1_281_167
RESNET50_PARAMETERS = 25_557_032  # torchvision resnet50

# Per-GPU ResNet-50 training throughput, images/s, with where the number comes from.
GPUS = {
    "p100-pcie": (
        171.0,
        "TensorFlow's published benchmarks (2017): DGX-1 P100 (SXM2), ResNet-50, fp32, batch 32, "
        "195 img/s; scaled by the PCIe card's fp32 peak (9.3 vs 10.6 TFLOPS)",
    ),
    "a100": (
        2470.0,
        "NVIDIA's published ResNet-50 training throughput on one A100 with AMP and DALI",
    ),
}
# Link speeds, bytes/s, per node (network) and inside a node.
NETWORKS = {
    "fdr-ib": (56e9 / 8 * 64 / 66, "InfiniBand FDR 4x: 56 Gb/s signalling, 64b/66b encoding"),
    "edr-ib": (100e9 / 8 * 64 / 66, "InfiniBand EDR 4x: 100 Gb/s, 64b/66b encoding"),
    "hdr-ib": (200e9 / 8 * 64 / 66, "InfiniBand HDR 4x: 200 Gb/s, 64b/66b encoding"),
    "100gbe": (100e9 / 8, "100 Gb Ethernet"),
}
NODE_LINKS = {
    "pcie3": (10e9, "PCIe 3.0 x16: 15.8 GB/s peak, ~10 GB/s achieved by GPU rings"),
    "nvlink3": (230e9, "NVLink 3 (A100): 600 GB/s aggregate, ~230 GB/s all-reduce bus bandwidth"),
}
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class Inputs:
    gpus: int
    batch_per_gpu: int
    images_per_s_per_gpu: float
    parameters: int = RESNET50_PARAMETERS
    allreduce_dtype: str = "fp16"
    gpus_per_node: int = 8
    network_bytes_per_s: float = NETWORKS["fdr-ib"][0]
    nics_per_node: int = 1
    node_bytes_per_s: float = NODE_LINKS["pcie3"][0]
    latency_s: float = 5e-6  # per ring step: IB ~1 us plus MPI/NCCL software
    overlap: float = 0.0
    bandwidth_efficiency: float = 1.0
    epochs: int = 90
    images: int = IMAGENET_TRAIN


@dataclass(frozen=True)
class Prediction:
    global_batch: int
    iterations: int
    compute_s: float
    allreduce_s: float
    exposed_s: float
    iteration_s: float
    time_to_train_s: float
    efficiency: float


def predict(inputs: Inputs) -> Prediction:
    g = min(inputs.gpus_per_node, inputs.gpus)
    n = math.ceil(inputs.gpus / g)
    size = inputs.parameters * BYTES[inputs.allreduce_dtype]
    node_bw = inputs.node_bytes_per_s * inputs.bandwidth_efficiency
    net_bw = inputs.network_bytes_per_s * inputs.nics_per_node * inputs.bandwidth_efficiency
    intra = 2 * (g - 1) / g * size / node_bw if g > 1 else 0.0
    inter = (2 * (n - 1) / n * size / net_bw + 2 * (n - 1) * inputs.latency_s) if n > 1 else 0.0
    compute = inputs.batch_per_gpu / inputs.images_per_s_per_gpu
    allreduce = intra + inter
    exposed = max(0.0, allreduce - inputs.overlap * 2 / 3 * compute)
    iteration = compute + exposed
    global_batch = inputs.gpus * inputs.batch_per_gpu
    iterations = inputs.epochs * (inputs.images // global_batch)
    return Prediction(
        global_batch=global_batch,
        iterations=iterations,
        compute_s=compute,
        allreduce_s=allreduce,
        exposed_s=exposed,
        iteration_s=iteration,
        time_to_train_s=iterations * iteration,
        efficiency=compute / iteration,
    )


PAPER_TIME_S = 898.0  # 90 epochs, 1,024 P100s (the paper's 15 minutes)
PAPER_EFFICIENCY = 0.70


def paper_inputs(bandwidth_efficiency: float = 1.0) -> Inputs:
    """The paper's setup: 1,024 P100 (PCIe) in 128 nodes of 8, 32 images each, InfiniBand FDR,
    fp16 all-reduce, ChainerMN's all-reduce after backward (no overlap)."""
    return Inputs(
        gpus=1024,
        batch_per_gpu=32,
        images_per_s_per_gpu=GPUS["p100-pcie"][0],
        allreduce_dtype="fp16",
        gpus_per_node=8,
        network_bytes_per_s=NETWORKS["fdr-ib"][0],
        node_bytes_per_s=NODE_LINKS["pcie3"][0],
        overlap=0.0,
        bandwidth_efficiency=bandwidth_efficiency,
    )


def check_against_paper() -> dict[str, float]:
    """The model at rated link speeds against the paper, and the bandwidth efficiency that
    reproduces the paper's time (bisection: time falls as bandwidth rises)."""
    rated = predict(paper_inputs())
    low, high = 1e-3, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if predict(paper_inputs(mid)).time_to_train_s > PAPER_TIME_S:
            low = mid
        else:
            high = mid
    fitted = predict(paper_inputs(high))
    return {
        "rated_time_s": rated.time_to_train_s,
        "rated_efficiency": rated.efficiency,
        "paper_time_s": PAPER_TIME_S,
        "paper_efficiency": PAPER_EFFICIENCY,
        "bandwidth_efficiency_matching_paper": high,
        "matched_efficiency": fitted.efficiency,
    }


def describe(inputs: Inputs, prediction: Prediction) -> str:
    p = prediction
    lines = [
        "Inputs: "
        + ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in asdict(inputs).items()
        ),
        f"global batch {p.global_batch:,}, {p.iterations:,} iterations",
        f"per iteration: compute {1000 * p.compute_s:.1f} ms, all-reduce "
        f"{1000 * p.allreduce_s:.1f} ms ({1000 * p.exposed_s:.1f} ms exposed), total "
        f"{1000 * p.iteration_s:.1f} ms",
        f"time to train: {p.time_to_train_s:.0f} s ({p.time_to_train_s / 60:.1f} min); scaling "
        f"efficiency vs one GPU: {100 * p.efficiency:.0f} %",
    ]
    return "\n".join(lines)

"""Evaluation artifacts, read back from MLflow: metrics.csv, curves.png, summary.json and
report.md per experiment (pipeline/compare.py sets several experiments side by side).

The report stage first backfills MLflow from the run's journal (`sync_journal`), so the store
is complete even if the tracking server was down during training; then it reads every number
from the store with `MlflowClient.get_metric_history`.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from pipeline import atomic
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.paths import ReportPaths, RunPaths
from pipeline.tracking import Journal, mlflow_client, store_errors, sync_journal
from pipeline.train.export import log_model

EPOCH_METRICS = (
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "lr",
    "alpha_sgd",
    "epoch_time_s",
    "images_per_s",
    "data_wait_fraction",
    "noise_scale",
    "noise_trace",
    "noise_grad_sq",
)

# Table 1 of Akiba, Suzuki and Fukuda (2017): ResNet-50 on ImageNet, 90 epochs.
PAPER_TABLE = [
    ("He et al. [7]", "Tesla P100 x 8", "Caffe", "256", "29 hr", "75.3 %"),
    ("Goyal et al. [1]", "Tesla P100 x 256", "Caffe2", "8,192", "1 hr", "76.3 %"),
    ("Codreanu et al. [3]", "KNL 7250 x 720", "Intel Caffe", "11,520", "62 min", "75.0 %"),
    ("You et al. [10]", "Xeon 8160 x 1,600", "Intel Caffe", "16,000", "31 min", "75.3 %"),
    ("Akiba et al. (the paper)", "Tesla P100 x 1,024", "Chainer", "32,768", "15 min", "74.9 %"),
]


def fetch_history(client: Any, run_id: str) -> tuple[list[dict[str, float]], dict[str, list]]:
    """Per-epoch rows (one per epoch, every metric a column) and per-iteration series, read
    through `client` (an MlflowClient)."""
    by_epoch: dict[int, dict[str, float]] = defaultdict(dict)
    for key in EPOCH_METRICS:
        for m in client.get_metric_history(run_id, key):
            by_epoch[m.step][key] = m.value
    rows = [{"epoch": step, **by_epoch[step]} for step in sorted(by_epoch)]
    series: dict[str, list] = {}
    for key in ("epoch", "lr", "alpha_sgd", "train_loss"):
        history = sorted(client.get_metric_history(run_id, f"iter/{key}"), key=lambda m: m.step)
        series[key] = [(m.step, m.value) for m in history]
    return rows, series


def write_metrics_csv(rows: list[dict[str, float]], path: Path) -> None:
    columns = ["epoch", *EPOCH_METRICS]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})
    atomic.write_text(path, out.getvalue())


def plot_curves(
    rows: list[dict[str, float]],
    series: dict[str, list],
    title: str,
    path: Path,
    global_batch: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom, noise) = plt.subplots(
        3, 1, figsize=(8, 9.5), sharex=True, height_ratios=[3, 3, 2]
    )
    epochs = [r["epoch"] + 1 for r in rows]  # accuracy after epoch k is plotted at k
    top.plot(epochs, [100 * r["val_top1"] for r in rows], "o-", label="val top-1")
    top.plot(epochs, [100 * r["val_top5"] for r in rows], "s--", label="val top-5")
    top.set_ylabel("accuracy (%)")
    loss_axis = top.twinx()
    loss_axis.plot(epochs, [r["train_loss"] for r in rows], "k:", label="train loss")
    loss_axis.set_ylabel("train loss")
    handles = top.get_legend_handles_labels()[0] + loss_axis.get_legend_handles_labels()[0]
    top.legend(handles, [h.get_label() for h in handles], loc="center right")
    top.set_title(title)
    top.grid(alpha=0.3)

    fractional = dict(series.get("epoch", []))
    lr = [(fractional[s], v) for s, v in series.get("lr", []) if s in fractional]
    alpha = [(fractional[s], v) for s, v in series.get("alpha_sgd", []) if s in fractional]
    if lr:
        bottom.plot(*zip(*lr, strict=True), "b-", label="learning rate (eta_SGD)")
    bottom.set_ylabel("learning rate")
    alpha_axis = bottom.twinx()
    if alpha:
        alpha_axis.plot(*zip(*alpha, strict=True), "r-", label="alpha_SGD")
    alpha_axis.set_ylim(-0.05, 1.05)
    alpha_axis.set_ylabel("alpha_SGD (0 = RMSprop, 1 = SGD)")
    handles = bottom.get_legend_handles_labels()[0] + alpha_axis.get_legend_handles_labels()[0]
    bottom.legend(handles, [h.get_label() for h in handles], loc="center right")
    bottom.grid(alpha=0.3)
    _plot_noise_scale(noise, rows, global_batch)
    noise.set_xlabel("epoch")
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _plot_noise_scale(axis: Any, rows: list[dict[str, float]], global_batch: int) -> None:
    """The gradient noise scale per epoch beside the global minibatch: a minibatch well
    above it spends images for little gain per step (McCandlish et al. 2018)."""
    measured = [(r["epoch"] + 1, r["noise_scale"]) for r in rows if r.get("noise_scale", 0) > 0]
    axis.axhline(global_batch, color="grey", linestyle="--", label=f"global batch {global_batch:,}")
    if measured:
        axis.plot(*zip(*measured, strict=True), "g^-", label="noise scale B_simple")
    else:
        axis.text(
            0.5,
            0.5,
            "noise scale not measured (it needs two batch sizes: several processes or accumulate)",
            transform=axis.transAxes,
            ha="center",
            va="center",
        )
    axis.set_yscale("log")
    axis.set_ylabel("images")
    axis.legend(loc="best")
    axis.grid(alpha=0.3)


def _median_noise_scale(rows: list[dict[str, float]]) -> float | None:
    """The median over the epochs that measured it: one epoch's estimate swings widely when
    the gradient is small (late in training, a decayed learning rate), the median does not."""
    values = [r["noise_scale"] for r in rows if r.get("noise_scale")]
    return statistics.median(values) if values else None


def duration(seconds: float) -> str:
    """A wall time as a person reads it: "1.5 hr", "12.0 min" or "40 s"."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hr"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def build_summary(config: Config, rows: list[dict[str, float]], run: Any) -> dict[str, Any]:
    tags = run.data.tags
    final = rows[-1] if rows else {}
    world = int(tags.get("world_size", config.launcher.world_size))
    device = tags.get("device", "unknown")
    return {
        "experiment": config.experiment,
        "final_val_top1": final.get("val_top1", math.nan),
        "final_val_top5": final.get("val_top5", math.nan),
        "best_val_top1": max((r["val_top1"] for r in rows), default=math.nan),
        "best_val_top5": max((r["val_top5"] for r in rows), default=math.nan),
        "epochs": len(rows),
        "wall_time_s": sum(r.get("epoch_time_s", 0.0) for r in rows),
        "images_per_s": (
            sum(r.get("images_per_s", 0.0) for r in rows) / len(rows) if rows else math.nan
        ),
        "global_batch": config.global_batch,
        "steps_per_epoch": int(tags.get("steps_per_epoch", 0)) or "",
        "world_size": world,
        "hardware": f"{device} x {world}",
        "method": config.method,
        "seed": config.seed,
        "optimizer": config.optimizer.name,
        "schedule": config.schedule.name,
        "noise_scale": _median_noise_scale(rows),
        "mlflow_run_id": run.info.run_id,
        "git_commit": tags.get("git_commit", "unknown"),
    }


def _noise_sentence(summary: dict[str, Any]) -> str:
    noise, batch = summary["noise_scale"], summary["global_batch"]
    if noise is None:
        return "Gradient noise scale: not measured (one process without accumulation)."
    return (
        f"Gradient noise scale B_simple, median over the epochs: {noise:,.0f} images, against a "
        f"global minibatch of {batch:,} ({batch / noise:.2g}x the noise scale)."
    )


def _model_section(summary: dict[str, Any]) -> list[str]:
    if "model_uri" not in summary:
        return []
    return [
        "## The model",
        "",
        "`../model/model.safetensors` is a plain torchvision state dict; `../model/model.json`",
        "names the architecture, the classes and the preprocessing. Without this project:",
        "",
        "```python",
        "import json, safetensors.torch, torchvision",
        'card = json.load(open("model.json"))',
        'net = torchvision.models.get_model(card["arch"], num_classes=card["num_classes"])',
        'net.load_state_dict(safetensors.torch.load_file("model.safetensors"))',
        "```",
        "",
        f'In MLflow: `mlflow.pytorch.load_model("{summary["model_uri"]}")`.',
        "",
    ]


def write_markdown(config: Config, summary: dict[str, Any], path: Path) -> None:
    import torch

    ours = (
        f"this pipeline: `{config.experiment}`",
        summary["hardware"],
        f"PyTorch {torch.__version__.split('+')[0]}",
        f"{summary['global_batch']:,}",
        duration(summary["wall_time_s"]),
        f"{100 * summary['final_val_top1']:.1f} %",
    )
    lines = [
        f"# {config.experiment}",
        "",
        f"{config.model.arch}, {summary['epochs']} epochs, optimizer `{config.optimizer.name}`, "
        f"schedule `{config.schedule.name}`, global minibatch {summary['global_batch']:,}, "
        f"dataset `{config.data.name}`. MLflow run `{summary['mlflow_run_id']}`, "
        f"commit `{summary['git_commit'][:12]}`.",
        "",
        "Final val top-1 {:.2f} % (best {:.2f} %), top-5 {:.2f} %.".format(
            100 * summary["final_val_top1"],
            100 * summary["best_val_top1"],
            100 * summary["final_val_top5"],
        ),
        "",
        _noise_sentence(summary),
        "",
        "## In the form of the paper's Table 1",
        "",
        "The first five rows are ResNet-50 on ImageNet as published (Akiba et al. 2017, Table 1);",
        "the last is this run, on its own dataset and hardware: compare the shape, not the digits.",
        "",
        "| Team | Hardware | Software | Minibatch size | Time | Accuracy |",
        "|---|---|---|---|---|---|",
        *["| " + " | ".join(row) + " |" for row in PAPER_TABLE],
        "| " + " | ".join(ours) + " |",
        "",
        *_model_section(summary),
        "## Curves",
        "",
        "![validation accuracy, training loss, learning rate, alpha_SGD and the gradient noise "
        "scale](curves.png)",
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    atomic.write_text(path, "\n".join(lines))


def write_report(config: Config) -> dict[str, Any]:
    """The report of one experiment, read back from MLflow after backfilling it from the
    journal; also logged as artifacts of the run. Returns summary.json's content."""
    run_paths = RunPaths.of(config)
    report = ReportPaths.of(config)
    uri = config.tracking_uri
    synced = sync_journal(Journal(run_paths.journal), uri)
    with store_errors(uri, run_paths.journal):
        client = mlflow_client(uri)
        run = client.get_run(synced.run_id)
        rows, series = fetch_history(client, synced.run_id)
    if not rows:
        raise PipelineError(
            f"MLflow run {synced.run_id} has no per-epoch metrics, nor has {run_paths.journal}: "
            "did the first epoch finish? Train further, then run the report again."
        )
    write_metrics_csv(rows, report.metrics_csv)
    plot_curves(
        rows,
        series,
        f"{config.experiment}: {config.model.arch}, batch {config.global_batch:,}",
        report.curves,
        config.global_batch,
    )
    summary = build_summary(config, rows, run)
    with store_errors(uri, run_paths.journal):
        if run_paths.model_weights.is_file():
            summary["model_uri"] = log_model(run_paths.model_dir, uri, synced.run_id)
    atomic.write_json(report.summary, summary)
    write_markdown(config, summary, report.markdown)
    with store_errors(uri, run_paths.journal):
        for path in (report.metrics_csv, report.curves, report.summary, report.markdown):
            client.log_artifact(synced.run_id, str(path), artifact_path="report")
    return summary

"""summary.md and summary.png: several experiments' report summaries side by side, one row per
method and minibatch size (mean over seeds, with the min-max), and top-1 against minibatch size,
one line per method."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipeline import atomic
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.paths import ComparisonPaths, ReportPaths
from pipeline.report import duration


def _spread(values: list[float]) -> str:
    """Mean in %, with min-max over seeds when there are several."""
    mean = 100 * sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.2f} %"
    return f"{mean:.2f} % ({100 * min(values):.2f}-{100 * max(values):.2f}, n={len(values)})"


def _mean_noise(runs: list[dict[str, Any]]) -> str:
    values = [r["noise_scale"] for r in runs if r.get("noise_scale")]
    return f"{sum(values) / len(values):,.0f}" if values else "-"


def render_comparison(summaries: list[dict[str, Any]], markdown: Path, plot: Path) -> None:
    """summary.md and summary.png over several experiments: one row per method and batch size
    (mean and min-max over seeds), then every run; top-1 against batch size per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        groups[(s["method"], s["global_batch"])].append(s)
    lines = [
        "# Experiments compared",
        "",
        "Final and best validation top-1 per method and global minibatch size: the mean, and the",
        "minimum-maximum over seeds when there are several.",
        "",
        "| Method | Minibatch | Steps/epoch | Final top-1 | Best top-1 | Noise scale | Runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for (method, batch), runs in sorted(groups.items()):
        steps = runs[0].get("steps_per_epoch", "")
        lines.append(
            f"| {method} | {batch:,} | {steps} | {_spread([r['final_val_top1'] for r in runs])} | "
            f"{_spread([r['best_val_top1'] for r in runs])} | {_mean_noise(runs)} | {len(runs)} |"
        )
    lines += [
        "",
        "Noise scale: the gradient noise scale B_simple, median over each run's epochs, mean over",
        "seeds.",
        "",
        "![final top-1 against minibatch size](summary.png)",
        "",
        "## Every run",
        "",
        "| Experiment | Method | Optimizer | Schedule | Minibatch | Seed | Epochs | Final top-1 "
        "| Best top-1 | Final top-5 | Time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['experiment']} | {s['method']} | {s['optimizer']} | {s['schedule']} | "
            f"{s['global_batch']:,} | {s['seed']} | {s['epochs']} | "
            f"{100 * s['final_val_top1']:.2f} % | {100 * s['best_val_top1']:.2f} % | "
            f"{100 * s['final_val_top5']:.2f} % | {duration(s['wall_time_s'])} |"
        )
    lines.append("")
    atomic.write_text(markdown, "\n".join(lines))

    fig, axis = plt.subplots(figsize=(7, 4.5))
    for method in sorted({m for m, _ in groups}):
        batches = sorted(b for m, b in groups if m == method)
        values = [[r["final_val_top1"] * 100 for r in groups[(method, b)]] for b in batches]
        means = [sum(v) / len(v) for v in values]
        low = [m - min(v) for m, v in zip(means, values, strict=True)]
        high = [max(v) - m for m, v in zip(means, values, strict=True)]
        axis.errorbar(batches, means, yerr=[low, high], fmt="o-", capsize=3, label=method)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("global minibatch size")
    axis.set_ylabel("final val top-1 (%)")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    with atomic.atomic_path(plot) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_comparison(config: Config, summary_files: list[Path] | None = None) -> None:
    """summary.md / summary.png over `summary_files`, by default those of every experiment of
    the config."""
    from pipeline.experiments import expand_experiments

    if summary_files is None:
        summary_files = [ReportPaths.of(e).summary for e in expand_experiments(config)]
    missing = [str(path) for path in summary_files if not path.is_file()]
    if missing:
        raise PipelineError(
            f"compare: no report yet for {len(missing)} of {len(summary_files)} experiments "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); run their "
            "report stage first (`snakemake reproduce` or `snakemake` does)"
        )
    summaries = [json.loads(path.read_text()) for path in summary_files]
    paths = ComparisonPaths.of(config)
    render_comparison(summaries, paths.markdown, paths.plot)

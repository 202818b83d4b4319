"""The tables of docs/reproduction.md's regime study, read from the runs' JSON committed in
docs/reproduction/regime/<run>/ and from the study's two configs.

docs/reproduction.md calls these from cog blocks: `make docs` writes them, and `make lint`
and tests/unit/test_doc_figures.py fail when the page no longer says what the JSON says.
"""

from __future__ import annotations

import csv
import json
import statistics
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "docs" / "reproduction" / "regime"
CONFIGS = [
    ROOT / "config" / "experiments" / "regime-imagenette.yaml",
    ROOT / "config" / "experiments" / "regime-imagenette-ablations.yaml",
]
RECIPES = ["goyal", "akiba", "lars"]
# The paper's recipe, what each ablation changes of it, then the two recipes it is set against
# and LARS without its schedule and label smoothing.
ABLATION_ORDER = [
    "akiba",
    "akiba-smoothing",
    "akiba-bn-ema",
    "sgd-slowstart",
    "hybrid-goyal",
    "goyal",
    "lars-step",
    "lars",
]
PAPER_BATCH = 240  # 39 steps an epoch, as ImageNet's 1,281,167 images at 32,768


@cache
def runs() -> list[dict[str, Any]]:
    """Every committed run's summary (method, minibatch, seed, top-1, noise scale) and the
    updates it made."""
    found = []
    for folder in sorted(p for p in RUNS.iterdir() if p.is_dir()):
        summary = json.loads((folder / "summary.json").read_text())
        done = json.loads((folder / "train_done.json").read_text())
        assert summary["experiment"] == folder.name, f"{folder}: holds another run's summary"
        found.append({**summary, "updates": done["iterations"]})
    return found


def select(method: str, batch: int) -> list[dict[str, Any]]:
    return [r for r in runs() if r["method"] == method and r["global_batch"] == batch]


def percent_cell(values: list[float]) -> str:
    """Mean top-1 in %, the seeds' range after it; a lone seed says so."""
    if not values:
        return "not run"
    mean = 100 * statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.2f} (1 seed)"
    return f"{mean:.2f} ({100 * min(values):.2f}-{100 * max(values):.2f})"


def batches() -> list[int]:
    return sorted({r["global_batch"] for r in runs() if r["method"] in RECIPES})


def size_header(batch: int) -> str:
    """'240 (39 steps/epoch, 1,170 updates)', from the runs at that size."""
    at = [r for r in runs() if r["global_batch"] == batch]
    steps = {r["steps_per_epoch"] for r in at}
    updates = {r["updates"] for r in at}
    assert len(steps) == len(updates) == 1, f"runs at {batch} disagree: {steps}, {updates}"
    return f"{batch:,} ({steps.pop()} steps/epoch, {updates.pop():,} updates)"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def recipe_table(metric: str) -> str:
    """Goyal's, the paper's and LARS's recipes at each size: `metric` over seeds, and its
    change from the smallest size to the largest (means)."""
    sizes = batches()
    rows = []
    for method in RECIPES:
        cells = [[r[metric] for r in select(method, b)] for b in sizes]
        change = (
            f"{100 * (statistics.mean(cells[-1]) - statistics.mean(cells[0])):+.2f}"
            if cells[0] and cells[-1]
            else ""
        )
        rows.append([f"`{method}`", *(percent_cell(c) for c in cells), change])
    header = ["recipe", *(size_header(b) for b in sizes), f"{sizes[0]} -> {sizes[-1]}"]
    return markdown(header, rows)


def noise_table() -> str:
    """The measured B_simple (median over a run's epochs, mean over its seeds) and the
    minibatch's ratio to it."""
    sizes = batches()
    rows = []
    for method in RECIPES:
        cells = []
        for b in sizes:
            values = [r["noise_scale"] for r in select(method, b) if r.get("noise_scale")]
            noise = statistics.mean(values) if values else None
            cells.append(f"{noise:,.0f} ({b / noise:.2f})" if noise else "not measured")
        rows.append([f"`{method}`", *cells])
    return markdown(["recipe", *(f"{b:,}" for b in sizes)], rows)


@cache
def methods() -> dict[str, dict[str, Any]]:
    """Each method of the study as its configs define it (the overlay adds the ablations)."""
    defined: dict[str, dict[str, Any]] = {}
    for path in CONFIGS:
        defined.update(yaml.safe_load(path.read_text())["sweep"]["methods"])
    return defined


def recipe_parts(method: str) -> list[str]:
    """What a method trains with: optimizer, schedule, BN moving averages, label smoothing."""
    spec = methods()[method]
    smoothing = spec.get("train", {}).get("label_smoothing", 0.0)
    return [
        spec["optimizer"]["name"],
        spec["schedule"]["name"],
        "yes" if spec["model"]["bn_moving_average"] else "no",
        f"{smoothing:g}" if smoothing else "no",
    ]


def ablation_table() -> str:
    """Every method at the paper-equivalent size, with what it is made of."""
    rows = []
    for method in ABLATION_ORDER:
        at = select(method, PAPER_BATCH)
        noise = [r["noise_scale"] for r in at if r.get("noise_scale")]
        rows.append(
            [
                f"`{method}`",
                *recipe_parts(method),
                percent_cell([r["final_val_top1"] for r in at]),
                percent_cell([r["best_val_top1"] for r in at]),
                f"{statistics.mean(noise):,.0f}" if noise else "",
            ]
        )
    parts = ["optimizer", "schedule", "BN EMA", "label smoothing"]
    return markdown(["method", *parts, "final top-1 %", "best top-1 %", "B_simple"], rows)


def epoch_times(run: dict[str, Any]) -> list[float]:
    with open(RUNS / run["experiment"] / "metrics.csv", newline="") as f:
        return [float(row["epoch_time_s"]) for row in csv.DictReader(f)]


def cost_line() -> str:
    """What the study's runs cost: epoch times at each size (the fastest is a run alone on
    the cores, the median includes runs that shared them with other work), and in all."""
    per_size: dict[int, list[float]] = {}
    for r in runs():
        per_size.setdefault(r["global_batch"], []).extend(epoch_times(r))
    parts = [
        f"{min(t):.0f} s fastest, {statistics.median(t):.0f} s median at {b:,}"
        for b, t in sorted(per_size.items())
    ]
    total = sum(r["wall_time_s"] for r in runs()) / 3600
    text = (
        f"An epoch, validation included, took {'; '.join(parts)}. The {len(runs())} runs "
        f"below trained for {total:.1f} h in all (the sum of their epoch times; process "
        "start-up and the data stages come on top)."
    )
    return textwrap.fill(text, 96) + "\n"

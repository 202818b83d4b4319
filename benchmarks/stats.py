"""Summaries of a benchmark's interleaved repeats.

On a noisy machine two variants timed in the same repeat drift together, so their ratio within
each repeat (a paired ratio) is steadier than the ratio of their separate medians. The tables
report the median of the paired ratios with a bootstrap interval of that median.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence


def paired_ratios(
    numerators: Sequence[float], denominators: Sequence[float], scale: float = 1.0
) -> list[float]:
    """numerator / (denominator x scale), repeat by repeat."""
    return [n / (d * scale) for n, d in zip(numerators, denominators, strict=True)]


def median_interval(values: Sequence[float], resamples: int = 2000) -> list[float]:
    """Bootstrap 95 % interval of the median of `values`: how far the table's median ratio
    could move in another run on this machine, which decides whether a goal is met or not."""
    rng = random.Random(0)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    return [medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]]

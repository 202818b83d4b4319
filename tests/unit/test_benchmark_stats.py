"""The benchmarks' summaries: paired ratios and the bootstrap interval of their median."""

import statistics

import pytest

from benchmarks.stats import median_interval, paired_ratios


def test_paired_ratios_divide_repeat_by_repeat_with_a_scale():
    assert paired_ratios([6.0, 9.0], [3.0, 2.0]) == [2.0, 4.5]
    assert paired_ratios([6.0, 9.0], [3.0, 2.0], scale=2) == [1.0, 2.25]
    with pytest.raises(ValueError):  # a repeat missing for one variant is an error
        paired_ratios([1.0, 2.0], [1.0])


def test_median_interval_holds_the_median_and_narrows_with_more_repeats():
    noisy = [1.0, 1.2, 0.9, 1.1, 1.05, 0.95, 1.3, 0.8, 1.02, 0.98]
    low, high = median_interval(noisy)
    assert low <= statistics.median(noisy) <= high
    assert min(noisy) <= low < high <= max(noisy)
    low4, high4 = median_interval(noisy * 4)
    assert high4 - low4 < high - low
    assert median_interval([1.5] * 5) == [1.5, 1.5]
    assert median_interval(noisy) == [low, high]  # seeded: the same table every time

"""The benchmarks' run order: every variant runs after every other equally often."""

from collections import Counter
from itertools import pairwise

import pytest

from benchmarks.order import balanced_order


def neighbours(names: list[str], repeats: int) -> Counter:
    pairs: Counter = Counter()
    for repeat in range(repeats):
        order = balanced_order(names, repeat)
        assert sorted(order) == sorted(names), f"repeat {repeat} is not a permutation: {order}"
        pairs.update(pairwise(order))
    return pairs


@pytest.mark.parametrize("n", [2, 4, 6, 8])
def test_even_count_puts_each_variant_after_each_other_once_in_n_repeats(n: int) -> None:
    names = [f"v{i}" for i in range(n)]
    pairs = neighbours(names, n)
    assert set(pairs) == {(a, b) for a in names for b in names if a != b}
    assert set(pairs.values()) == {1}


@pytest.mark.parametrize("n", [3, 5, 7])
def test_odd_count_puts_each_variant_after_each_other_twice_in_2n_repeats(n: int) -> None:
    names = [f"v{i}" for i in range(n)]
    pairs = neighbours(names, 2 * n)
    assert set(pairs) == {(a, b) for a in names for b in names if a != b}
    assert set(pairs.values()) == {2}


def test_every_variant_runs_first_equally_often() -> None:
    names = ["a", "b", "c", "d", "e", "f"]
    firsts = Counter(balanced_order(names, repeat)[0] for repeat in range(len(names)))
    assert set(firsts.values()) == {1}


def test_the_loader_benchmark_runs_ours_between_its_two_ceilings_each_side_equally() -> None:
    from benchmarks.loader import run_order

    before = Counter()
    for repeat in range(6):
        order = run_order(repeat)
        assert sorted(order) == sorted(
            ["ceiling", "concurrent_ceiling", "imagefolder", "ours", "ours_cpu_norm"]
        )
        at = order.index("ours")
        assert {order[at - 1], order[at + 1]} == {"ceiling", "concurrent_ceiling"}, order
        before[order[at - 1]] += 1
    assert before == {"ceiling": 3, "concurrent_ceiling": 3}

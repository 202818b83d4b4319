"""The order in which a benchmark's variants run in each repeat.

Timing variants back to back lets a variant's cost depend on the one before it (caches, freed
memory, worker processes still shutting down). A plain rotation (A B C, B C A, C A B) moves
which variant runs first, but keeps every variant behind the same predecessor. A balanced
Latin square (Williams 1949) puts every variant right after every other variant equally often:
once each over n repeats when the number of variants n is even, twice each over 2n repeats
when it is odd.
"""

from __future__ import annotations

from collections.abc import Sequence


def balanced_order(names: Sequence[str], repeat: int) -> list[str]:
    """The variants in the order they run in repeat `repeat` (0-based); the pattern repeats
    after len(names) repeats (even count) or 2 * len(names) (odd count)."""
    n = len(names)
    if n == 0:
        return []
    # First row 0, 1, n-1, 2, n-2, ...: its differences between neighbours are all distinct
    # modulo n, so shifting it by 0..n-1 gives every ordered pair as neighbours once.
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    cycle = n if n % 2 == 0 else 2 * n
    row = repeat % cycle
    order = [(k + row % n) % n for k in first]
    if row >= n:  # odd n: the second half of the cycle runs the rows backwards
        order.reverse()
    return [names[i] for i in order]

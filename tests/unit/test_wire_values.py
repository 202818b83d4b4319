"""What fp16 loses at 1,024 workers, as docs/design.md states it, checked against what a rank
sends (`wire_values`, the communication hook's own step)."""

import re

import pytest
import torch

from conftest import PROJECT
from pipeline.train.distributed import wire_values

WORLD = 1024


def stated() -> tuple[float, float, float]:
    """The figures of docs/design.md's "What fp16 loses at scale"."""
    text = " ".join((PROJECT / "docs" / "design.md").read_text().split())
    found = re.search(
        r"At W = 1,024 an element below (\S+) on every rank comes back as 0 .*? elements below "
        r"(\S+) are sent as subnormals, with a step of (\S+) in the mean",
        text,
    )
    assert found, "docs/design.md no longer states what fp16 loses at 1,024 workers"
    return tuple(float(x) for x in found.groups())


def returned_mean(gradient: float) -> float:
    """The mean that 1,024 ranks all holding `gradient` get back (the sum of 1,024 equal
    shares is exact at these sizes: below 2^-13 fp16's step is 2^-24 throughout)."""
    sent = wire_values(torch.tensor([gradient]), WORLD, torch.float16)
    return float(sent.float() * WORLD)


def test_the_elements_fp16_returns_as_0_at_1024_workers_are_those_stated():
    zero_below, _, _ = stated()
    assert returned_mean(0.99 * zero_below) == 0
    assert returned_mean(1.01 * zero_below) > 0


def test_the_subnormal_range_and_its_step_at_1024_workers_are_those_stated():
    _, subnormal_below, step = stated()
    tiny = torch.finfo(torch.float16).tiny  # the smallest normal value
    assert wire_values(torch.tensor([0.99 * subnormal_below]), WORLD, torch.float16) < tiny
    assert wire_values(torch.tensor([1.01 * subnormal_below]), WORLD, torch.float16) >= tiny
    small = 2e-3  # a typical ResNet-50 gradient (docs/performance.md): subnormal when sent
    assert 0 < abs(returned_mean(small) - small) <= step / 2
    next_value = returned_mean(small + step) - returned_mean(small)
    assert next_value == pytest.approx(step, rel=1e-3)  # the stated step, to its digits

"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018, "An Empirical
Model of Large-Batch Training", appendix A): the minibatch beyond which a bigger one buys little.

It is estimated from two batch sizes that training already has: the micro-batch each process
differentiates (B_small = train.batch_per_worker) and the minibatch the all-reduce averages
(B_big = the global batch). With E|G_B|^2 = |G|^2 + tr(Sigma) / B at both sizes,

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

The two estimates are averaged separately over the epoch and divided at its end (the ratio of
noisy estimates is biased; the ratio of their averages much less). Micro-batches rather than
each process's whole share are the small batch, so that 1 process x accumulate 2 and 2
processes x accumulate 1 measure the same thing; with accumulate 1 they coincide.
"""

from __future__ import annotations

import torch
from torch import nn


def noise_estimates(
    small_sq: float, big_sq: float, batch_small: int, batch_big: int
) -> tuple[float, float]:
    """(tr(Sigma), |G|^2) from the mean squared gradient norms at the two batch sizes."""
    grad_sq = (batch_big * big_sq - batch_small * small_sq) / (batch_big - batch_small)
    trace = (small_sq - big_sq) / (1.0 / batch_small - 1.0 / batch_big)
    return trace, grad_sq


def add_noise_sample(
    sums: list[float], small_sq: float, big_sq: float, batch_small: int, batch_big: int
) -> None:
    """Add one measured step to the epoch's `sums` (tr(Sigma), |G|^2, samples): the mean
    squared gradient norm of a micro-batch and of the minibatch, over all ranks."""
    trace, grad_sq = noise_estimates(small_sq, big_sq, batch_small, batch_big)
    sums[0] += trace
    sums[1] += grad_sq
    sums[2] += 1


def epoch_noise_scale(sums: list[float]) -> dict[str, float]:
    """B_simple over the epoch's samples; nothing when |G|^2 did not come out positive (noise
    swamped the signal: there is no number to report)."""
    trace, grad_sq, samples = sums
    if not samples or grad_sq <= 0:
        return {}
    return {
        "noise_scale": trace / grad_sq,
        "noise_trace": trace / samples,
        "noise_grad_sq": grad_sq / samples,
    }


class NoiseProbe:
    """Squared gradient norms of one process's micro-batches and of the averaged minibatch
    gradient, on the steps asked to measure; on the others it does nothing.

    A micro-batch's own gradient is accumulate x (.grad after it - .grad before it). Before
    the last micro-batch's all-reduce only the communication hook sees the local gradient, so
    with several processes the hook calls `add_bucket`; with one process `after_micro` does it.
    """

    def __init__(self, model: nn.Module, accumulate: int, hooked: bool) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.accumulate = accumulate
        self.hooked = hooked
        self.measuring = False
        device = self.params[0].device
        self.small_sq = torch.zeros((), dtype=torch.float64, device=device)
        self.big_sq = torch.zeros((), dtype=torch.float64, device=device)
        self._before: dict[torch.Tensor, torch.Tensor] = {}  # .grad before this micro-batch

    def begin(self) -> None:
        self.measuring = True
        self.small_sq.zero_()
        self.big_sq.zero_()
        self._before.clear()

    def after_micro(self, micro: int) -> None:
        """Called after each micro-batch's backward on a measured step."""
        last = micro == self.accumulate - 1
        if last and self.hooked:
            return  # the hook has measured it, before the all-reduce
        with torch.no_grad():
            pairs = [(p, p.grad) for p in self.params if p.grad is not None]
            self.small_sq += self._micro_sq(pairs)
            if not last:
                for p, grad in pairs:
                    if p in self._before:
                        self._before[p].copy_(grad)
                    else:
                        self._before[p] = grad.detach().clone()

    def add_bucket(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        """From the communication hook: one bucket of the last micro-batch, not yet reduced."""
        with torch.no_grad():
            self.small_sq += self._micro_sq(list(zip(params, grads, strict=True)))

    def finish(self) -> None:
        """After the step's backward: the gradient every process now holds is the minibatch's."""
        with torch.no_grad():
            grads = [p.grad for p in self.params if p.grad is not None]
            self.big_sq += _sum_sq(grads)
        self.measuring = False

    def _micro_sq(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        diffs = [g - self._before[p] if p in self._before else g for p, g in pairs]
        return _sum_sq(diffs) * self.accumulate**2


def _sum_sq(tensors: list[torch.Tensor]) -> torch.Tensor:
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    norms = torch._foreach_norm(tensors)
    return torch.stack(norms).double().square().sum()

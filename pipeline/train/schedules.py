"""Learning-rate and alpha_SGD schedules: pure functions of the fractional epoch, and
`Schedule`, which picks them for a config.

`epoch` is fractional everywhere: epoch + iteration / iterations_per_epoch. Milestones are
stated for the paper's 90 epochs; `epochs` rescales them (and the warm-up) for other lengths.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import Config

PAPER_EPOCHS = 90.0


def alpha_sgd(epoch: float, center: float = 10.0, period: float = 5.0) -> float:
    """The ELU-shaped move from RMSprop (0) to SGD (1), Akiba et al. appendix A.

    0.5 * exp(2 (e - c) / p) before the center, then linear with slope 1/p (the same slope, so
    the curve is smooth) until it reaches 1 at c + p/2. The paper's appendix prints
    0.5 + 2 (e - c) / p for the linear part, which would jump to 1.5 at c + p/2 and contradicts
    its own text; see docs/design.md.
    """
    if epoch < center:
        return 0.5 * math.exp(2.0 * (epoch - center) / period)
    if epoch < center + period / 2:
        return 0.5 + (epoch - center) / period
    return 1.0


def _step(epoch: float, base_lr: float, epochs: float, steps: list[tuple[float, float]]) -> float:
    """`steps` = [(start epoch out of 90, factor)], ascending."""
    scale = epochs / PAPER_EPOCHS
    factor = steps[0][1]
    for start, value in steps:
        if epoch >= start * scale:
            factor = value
    return base_lr * factor


def slow_start_lr(epoch: float, base_lr: float, epochs: float = PAPER_EPOCHS) -> float:
    """The paper's slow start: 0.5 eta_base for [0, 40), 0.075 for [40, 70), 0.01 for [70, 85),
    0.001 for [85, 90)."""
    return _step(epoch, base_lr, epochs, [(0, 0.5), (40, 0.075), (70, 0.01), (85, 0.001)])


def goyal_lr(
    epoch: float,
    base_lr: float,
    epochs: float = PAPER_EPOCHS,
    warmup_epochs: float = 5.0,
    warmup_start_lr: float = 0.1,
) -> float:
    """Goyal et al.: a gradual linear warm-up from 0.1 (the batch-256 rate) to eta_base over the
    first 5 epochs, then eta_base for [0, 30), 0.1x for [30, 60), 0.01x for [60, 80), 0.001x
    for [80, 90). With eta_base below 0.1 (batches under 256) there is nothing to warm up."""
    warmup = warmup_epochs * epochs / PAPER_EPOCHS
    if epoch < warmup:
        start = min(warmup_start_lr, base_lr)
        return start + (base_lr - start) * epoch / warmup
    return _step(epoch, base_lr, epochs, [(0, 1.0), (30, 0.1), (60, 0.01), (80, 0.001)])


def poly_lr(
    epoch: float,
    base_lr: float,
    epochs: float,
    warmup_epochs: float,
    power: float = 2.0,
    end_lr: float = 1e-4,
) -> float:
    """The MLPerf reference's LARS schedule: linear warm-up from 0 to eta_base over
    `warmup_epochs`, then (eta_base - end_lr) * (1 - t / T) ** power + end_lr, with t the epochs
    since the warm-up and T = epochs - warmup_epochs."""
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    decay = max(epochs - warmup_epochs, 1e-12)
    done = min(epoch - warmup_epochs, decay) / decay
    return (base_lr - end_lr) * (1.0 - done) ** power + end_lr


class Schedule:
    """(eta_SGD, alpha_SGD) as functions of the fractional epoch, for the configured recipe
    (LARS has no RMSprop phase: its alpha_SGD is 1, which the loop passes on unused)."""

    def __init__(self, config: Config) -> None:
        epochs = config.train.epochs if config.schedule.scale_to_epochs else PAPER_EPOCHS
        self.scale = scale = epochs / PAPER_EPOCHS
        self.epochs = epochs
        self.train_epochs = config.train.epochs  # poly decays over the run, however long
        self.base_lr = config.base_lr
        self.recipe = config.schedule
        self.optimizer = config.optimizer.name
        self.center = config.schedule.center * scale
        self.period = config.schedule.period * scale

    def __call__(self, epoch: float) -> tuple[float, float]:
        if self.recipe.name == "goyal":
            lr = goyal_lr(epoch, self.base_lr, self.epochs, warmup_epochs=self.recipe.warmup_epochs)
        elif self.recipe.name == "poly":
            lr = poly_lr(
                epoch,
                self.base_lr,
                self.train_epochs,
                self.recipe.warmup_epochs * self.scale,
                self.recipe.power,
                self.recipe.end_lr,
            )
        else:
            lr = slow_start_lr(epoch, self.base_lr, self.epochs)
        if self.optimizer in ("sgd", "lars"):
            return lr, 1.0
        if self.optimizer == "rmsprop":
            return lr, 0.0
        return lr, alpha_sgd(epoch, self.center, self.period)

    def sgd_from(self, epoch: float) -> bool:
        """True when alpha_SGD is 1 from `epoch` to the end (it never decreases)."""
        if self.optimizer in ("sgd", "lars"):
            return True
        if self.optimizer == "rmsprop":
            return False
        return epoch >= self.center + self.period / 2

import itertools
import math

import pytest

from pipeline.config_files import config_from_mapping
from pipeline.train.schedules import Schedule, alpha_sgd, goyal_lr, poly_lr, slow_start_lr

MINIMAL = {"experiment": "x", "data": {"name": "d", "root": "/data"}}


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [(0, 0.009158), (5, 0.067668), (10, 0.5), (11.25, 0.75), (12.5, 1.0), (13, 1.0), (89, 1.0)],
)
def test_alpha_sgd_reference_values(epoch, expected):
    assert alpha_sgd(epoch) == pytest.approx(expected, abs=5e-7)


def test_alpha_sgd_is_continuous_with_continuous_slope_at_the_center():
    h = 1e-7
    assert alpha_sgd(10 - h) == pytest.approx(0.5, abs=1e-6)
    left_slope = (alpha_sgd(10 - h) - alpha_sgd(10 - 2 * h)) / h
    right_slope = (alpha_sgd(10 + 2 * h) - alpha_sgd(10 + h)) / h
    assert left_slope == pytest.approx(1 / 5, rel=1e-3)
    assert right_slope == pytest.approx(1 / 5, rel=1e-3)
    # The misprinted 0.5 + 2 (e - c) / p would reach 1.5 at c + p/2; this reaches exactly 1.
    assert alpha_sgd(12.5 - 1e-9) == pytest.approx(1.0, abs=1e-8)


def test_alpha_sgd_is_monotone():
    values = [alpha_sgd(e / 10) for e in range(0, 900)]
    assert all(b >= a for a, b in itertools.pairwise(values))


@pytest.mark.parametrize(
    ("epoch", "factor"),
    [(0, 0.5), (39.999, 0.5), (40, 0.075), (69.999, 0.075), (70, 0.01), (85, 0.001), (89.9, 0.001)],
)
def test_slow_start_milestones(epoch, factor):
    assert slow_start_lr(epoch, 12.8) == pytest.approx(12.8 * factor)


def test_slow_start_scales_with_the_number_of_epochs():
    assert slow_start_lr(19.99, 1.0, epochs=45) == 0.5
    assert slow_start_lr(20.0, 1.0, epochs=45) == 0.075
    assert slow_start_lr(42.5, 1.0, epochs=45) == 0.001


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, 0.1),
        (2.5, 0.1 + (3.2 - 0.1) / 2),
        (5, 3.2),
        (29.99, 3.2),
        (30, 0.32),
        (60, 0.032),
        (80, 0.0032),
        (89.99, 0.0032),
    ],
)
def test_goyal_warmup_and_milestones(epoch, expected):
    assert goyal_lr(epoch, 3.2) == pytest.approx(expected)


def test_goyal_has_nothing_to_warm_up_below_batch_256():
    assert goyal_lr(0, 0.05) == goyal_lr(3, 0.05) == 0.05


def test_linear_scaling_rule_gives_12_8_at_32k():
    config = config_from_mapping(
        {
            **MINIMAL,
            "train": {"batch_per_worker": 32},
            "launcher": {"nodes": 128, "tasks_per_node": 8},
        }
    )
    assert config.global_batch == 32768
    assert config.base_lr == pytest.approx(12.8)


@pytest.mark.parametrize(
    ("name", "alpha_at_0"), [("hybrid", 0.5 * math.exp(-4)), ("sgd", 1.0), ("rmsprop", 0.0)]
)
def test_optimizer_name_selects_alpha(name, alpha_at_0):
    config = config_from_mapping({**MINIMAL, "optimizer": {"name": name}, "train": {"epochs": 90}})
    assert Schedule(config)(0.0)[1] == pytest.approx(alpha_at_0)


def test_schedule_scales_transition_and_milestones_to_short_runs():
    config = config_from_mapping({**MINIMAL, "train": {"epochs": 9}, "schedule": {"base_lr": 1}})
    lr_alpha = Schedule(config)
    assert lr_alpha(1.0)[1] == pytest.approx(0.5)  # center 10 -> 1 epoch
    assert lr_alpha(1.25)[1] == pytest.approx(1.0)  # 12.5 -> 1.25
    assert lr_alpha(3.99)[0] == 0.5 and lr_alpha(4.0)[0] == 0.075  # 40 -> 4
    fixed = config_from_mapping(
        {**MINIMAL, "train": {"epochs": 9}, "schedule": {"base_lr": 1, "scale_to_epochs": False}}
    )
    assert Schedule(fixed)(4.0)[0] == 0.5
    assert not lr_alpha.sgd_from(1.24) and lr_alpha.sgd_from(1.25)


# --------------------------------------------------------------------------------------------
# poly: the MLPerf LARS schedule (base 31.2 at 32k, 25 warm-up epochs, about 76 epochs).


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0.0, 0.0),  # the warm-up starts from 0
        (12.5, 15.6),  # halfway up
        (25.0, 31.2),  # the top, where the decay starts
        (50.5, (31.2 - 1e-4) * 0.25 + 1e-4),  # halfway down: (1 - 1/2) ** 2
        (76.0, 1e-4),  # the end
        (80.0, 1e-4),  # past the end: held at end_lr
    ],
)
def test_poly_warmup_and_decay_milestones(epoch, expected):
    assert poly_lr(epoch, 31.2, 76.0, 25.0) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_poly_is_continuous_and_decreasing_after_the_warmup():
    rates = [poly_lr(e / 10, 2.0, 10.0, 1.0, power=2.0, end_lr=0.0) for e in range(101)]
    assert rates[:11] == pytest.approx([0.2 * i for i in range(11)])
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert poly_lr(1.0 - 1e-9, 2.0, 10.0, 1.0) == pytest.approx(poly_lr(1.0, 2.0, 10.0, 1.0))


def test_poly_decays_over_the_run_and_scales_only_its_warmup():
    lars = {"name": "lars"}
    short = config_from_mapping(
        {
            **MINIMAL,
            "optimizer": lars,
            "train": {"epochs": 9},
            "schedule": {"name": "poly", "base_lr": 1.0, "warmup_epochs": 10, "end_lr": 0.0},
        }
    )
    schedule = Schedule(short)
    assert schedule(1.0) == (pytest.approx(1.0), 1.0)  # warm-up 10 of 90 -> 1 of 9
    assert schedule(5.0)[0] == pytest.approx((1 - 4 / 8) ** 2)  # over the 9 epochs, not 90
    assert schedule.sgd_from(0.0)  # LARS has no RMSprop phase


def test_lr_scaling_from_a_reference_point():
    def base_lr(scaling, batch_per_worker):
        schedule = {"reference_lr": 10.5, "reference_batch": 3264, "lr_scaling": scaling}
        return config_from_mapping(
            {**MINIMAL, "schedule": schedule, "train": {"batch_per_worker": batch_per_worker}}
        ).base_lr

    assert base_lr("sqrt", 816) == pytest.approx(10.5 / 2)  # a quarter of the batch
    assert base_lr("linear", 816) == pytest.approx(10.5 / 4)

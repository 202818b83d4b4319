"""The gradient noise scale where the answer is known: linear regression with Gaussian inputs
and noise, whose per-example gradients have a covariance we can write down."""

import pytest
import torch

from pipeline.train.noise_scale import NoiseProbe, noise_estimates


def test_the_estimators_invert_the_expected_norms_exactly():
    grad_sq, trace = 2.5, 40.0
    small = grad_sq + trace / 8  # E|G_B|^2 = |G|^2 + tr(Sigma) / B
    big = grad_sq + trace / 64
    assert noise_estimates(small, big, 8, 64) == (pytest.approx(trace), pytest.approx(grad_sq))


def test_linear_regression_noise_scale_lands_on_the_analytic_value():
    """Loss 0.5 (x.w - y)^2 with x ~ N(0, I_d), y = x.w* + eps, eps ~ N(0, s^2). At w, with
    r = w - w*, a per-example gradient is x (x.r - eps): mean G = r, and its covariance is
    r r^T + (|r|^2 + s^2) I, so tr(Sigma) = |r|^2 + d (|r|^2 + s^2) and
    B_simple = 1 + d (1 + s^2 / |r|^2). Here d = 10, |r| = 1, s = 1: B_simple = 21."""
    torch.manual_seed(0)
    d, noise_std, micro, accumulate, steps = 10, 1.0, 8, 4, 3000
    w_star = torch.randn(d, dtype=torch.float64)
    model = torch.nn.Linear(d, 1, bias=False).double()
    r = torch.zeros(d, dtype=torch.float64)
    r[0] = 1.0
    with torch.no_grad():
        model.weight.copy_((w_star + r).unsqueeze(0))
    probe = NoiseProbe(model, accumulate, hooked=False)
    traces, grad_sqs = [], []
    for _ in range(steps):
        probe.begin()
        for k in range(accumulate):
            x = torch.randn(micro, d, dtype=torch.float64)
            y = x @ w_star + noise_std * torch.randn(micro, dtype=torch.float64)
            loss = 0.5 * (model(x).squeeze(1) - y).square().mean()
            (loss / accumulate).backward()
            probe.after_micro(k)
        probe.finish()
        model.zero_grad(set_to_none=True)
        trace, grad_sq = noise_estimates(
            float(probe.small_sq) / accumulate, float(probe.big_sq), micro, micro * accumulate
        )
        traces.append(trace)
        grad_sqs.append(grad_sq)
    expected_trace = 1 + d * (1 + noise_std**2)
    assert sum(traces) / steps == pytest.approx(expected_trace, rel=0.05)
    assert sum(grad_sqs) / steps == pytest.approx(1.0, rel=0.1)
    assert sum(traces) / sum(grad_sqs) == pytest.approx(expected_trace, rel=0.1)


def test_each_micro_batch_is_measured_on_its_own_gradient():
    """Two identical micro-batches: each has the minibatch's gradient g, so the micro-batch
    norms sum to 2 |g|^2. Reading .grad after the second (g/2 + g/2) without taking the first
    away would count |2 g|^2 for it instead."""
    model = torch.nn.Linear(3, 1).double()
    probe = NoiseProbe(model, accumulate=2, hooked=False)
    probe.begin()
    for k in range(2):
        (model(torch.ones(1, 3, dtype=torch.float64)).sum() / 2).backward()
        probe.after_micro(k)
    probe.finish()
    assert not probe.measuring
    assert float(probe.small_sq) == pytest.approx(2 * float(probe.big_sq), rel=1e-12)
    assert float(probe.big_sq) == pytest.approx(4.0)  # d/dw and d/db of w.1 + b: 3 + 1

"""The hybrid optimizer against the paper's three equations in float64 NumPy, in each of its
three forms: the per-tensor loop (CPU default), the foreach kernels (GPU default) and the
torch.compile'd update (`train.compile_optimizer`)."""

import numpy as np
import pytest
import torch

from pipeline.train.optim import HybridRMSpropSGD

MU1, MU2, EPS, LR_RMS = 0.9, 0.99, 1e-8, 3e-4


def reference(theta0, grads, lrs, alphas, weight_decay):
    """Appendix A of Akiba et al., literally, in float64."""
    theta = theta0.copy()
    m = np.zeros_like(theta)
    delta = np.zeros_like(theta)
    for g, lr, a in zip(grads, lrs, alphas, strict=True):
        g = g + weight_decay * theta
        m = MU2 * m + (1 - MU2) * g**2
        alpha_rms = (1 - a) * LR_RMS / lr
        delta = MU1 * delta - (a + alpha_rms / (np.sqrt(m) + EPS)) * g
        theta = theta + lr * delta
    return theta


MODES = {"plain": {"foreach": False}, "foreach": {"foreach": True}, "compiled": {"compiled": True}}


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Each test's shapes compile anew; without a reset they would count towards dynamo's
    recompile limit of the one compiled function, beyond which it silently runs uncompiled."""
    torch._dynamo.reset()


def run(theta0, grads, lrs, alphas, weight_decay, mode, dtype=torch.float64):
    param = torch.nn.Parameter(torch.tensor(theta0, dtype=dtype))
    opt = HybridRMSpropSGD(
        [param], lr=lrs[0], alpha_sgd=alphas[0], weight_decay=weight_decay, **MODES[mode]
    )
    for g, lr, a in zip(grads, lrs, alphas, strict=True):
        opt.param_groups[0]["lr"] = lr
        opt.param_groups[0]["alpha_sgd"] = a
        param.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    return param.detach()


@pytest.fixture
def trajectory():
    rng = np.random.default_rng(0)
    steps = 1000
    theta0 = rng.normal(size=(7, 5))
    grads = [rng.normal(scale=0.1 + 0.05 * (i % 7), size=(7, 5)) for i in range(steps)]
    e = np.linspace(0, 15, steps)  # through the whole RMSprop -> SGD transition
    alphas = np.where(e < 10, 0.5 * np.exp(2 * (e - 10) / 5), np.minimum(1, 0.5 + (e - 10) / 5))
    lrs = 0.05 * (1 + 0.5 * np.sin(np.arange(steps) / 40))  # changing every step
    return theta0, grads, lrs.tolist(), alphas.tolist()


@pytest.mark.parametrize("weight_decay", [0.0, 1e-4])
@pytest.mark.parametrize("mode", MODES)
def test_matches_the_papers_equations_over_1000_steps(trajectory, weight_decay, mode):
    theta0, grads, lrs, alphas = trajectory
    expected = reference(theta0, grads, lrs, alphas, weight_decay)
    got = run(theta0, grads, lrs, alphas, weight_decay, mode).numpy()
    relative = np.abs(got - expected) / np.maximum(np.abs(expected), 1e-12)
    assert relative.max() <= 1e-6
    assert np.abs(expected - theta0).max() > 0.1  # the test moved the parameters


def test_weight_decay_changes_the_result(trajectory):
    theta0, grads, lrs, alphas = trajectory
    a = run(theta0, grads, lrs, alphas, 0.0, "plain")
    b = run(theta0, grads, lrs, alphas, 1e-2, "plain")
    assert not torch.allclose(a, b)


def _compare(make_ours, make_theirs, lrs, steps=200):
    rng = np.random.default_rng(1)
    theta0 = rng.normal(size=(11,))
    ours = torch.nn.Parameter(torch.tensor(theta0))
    theirs = torch.nn.Parameter(torch.tensor(theta0))
    opt_ours, opt_theirs = make_ours([ours]), make_theirs([theirs])
    for i in range(steps):
        g = torch.tensor(rng.normal(size=(11,)))
        for opt in (opt_ours, opt_theirs):
            for group in opt.param_groups:
                group["lr"] = lrs(i) if opt is opt_ours else group["lr"]
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    return ours.detach(), theirs.detach()


def test_alpha_sgd_1_is_momentum_sgd():
    ours, theirs = _compare(
        lambda p: HybridRMSpropSGD(p, lr=0.1, alpha_sgd=1.0),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lrs=lambda i: 0.1,
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_alpha_sgd_0_is_rmsprop_with_momentum():
    ours, theirs = _compare(
        lambda p: HybridRMSpropSGD(p, lr=0.1, alpha_sgd=0.0),
        lambda p: torch.optim.RMSprop(p, lr=LR_RMS, alpha=MU2, eps=EPS, momentum=MU1),
        lrs=lambda i: 0.1,
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def _training_like_run(mode: str, dtype: torch.dtype) -> list[torch.Tensor]:
    """Two groups as training has them (weight decay on weights, none on BN and biases), a
    channels-last conv weight, lr changing every step, through alpha_sgd = 1 and on into the
    SGD phase without m."""
    torch.manual_seed(0)
    params = [
        torch.randn(64, 3, 3, 3).contiguous(memory_format=torch.channels_last),
        torch.randn(64),
        torch.randn(10, 64),
    ]
    p = [torch.nn.Parameter(t.to(dtype)) for t in params]
    opt = HybridRMSpropSGD(
        [{"params": [p[0], p[2]]}, {"params": [p[1]], "weight_decay": 0.0}],
        lr=0.2,
        alpha_sgd=0.3,
        weight_decay=1e-4,
        **MODES[mode],
    )
    generator = torch.Generator().manual_seed(1)
    for step in range(60):
        for group in opt.param_groups:
            group["alpha_sgd"] = min(1.0, 0.3 + step / 40)
            group["lr"] = 0.2 * (1 + step / 60)
            group["track_square_avg"] = step < 50
        for t in p:
            t.grad = torch.randn(t.shape, generator=generator).to(dtype)
        opt.step()
    assert p[0].is_contiguous(memory_format=torch.channels_last)
    return [t.detach().double() for t in p]


@pytest.mark.parametrize("mode", ["foreach", "compiled"])
def test_fast_steps_in_float32_are_as_accurate_as_the_plain_one(mode):
    """Against the same run in float64: the fused forms round differently (the compiled one
    fuses multiply-adds), so they must not be further off than the plain loop is."""
    exact = _training_like_run("plain", torch.float64)
    plain = _training_like_run("plain", torch.float32)
    fast = _training_like_run(mode, torch.float32)
    for e, p, f in zip(exact, plain, fast, strict=True):
        plain_error = (p - e).abs().max().item()
        assert plain_error < 1e-6 * e.abs().max().item()  # float32 rounding, nothing more
        assert (f - e).abs().max().item() <= 2 * plain_error


def test_state_is_the_papers_delta_and_m():
    p = torch.nn.Parameter(torch.ones(3))
    opt = HybridRMSpropSGD([p], lr=0.1, alpha_sgd=0.5)
    p.grad = torch.full((3,), 2.0)
    opt.step()
    state = opt.state[p]
    torch.testing.assert_close(state["square_avg"], torch.full((3,), 0.01 * 4))
    alpha_rms = 0.5 * LR_RMS / 0.1
    expected = -(0.5 + alpha_rms / (0.2 + EPS)) * 2.0
    torch.testing.assert_close(state["delta"], torch.full((3,), expected))


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha_sgd must be in"):
        HybridRMSpropSGD([torch.nn.Parameter(torch.ones(1))], lr=0.1, alpha_sgd=1.5)
    with pytest.raises(ValueError, match="lr must be positive"):
        HybridRMSpropSGD([torch.nn.Parameter(torch.ones(1))], lr=0, alpha_sgd=0.5)


@pytest.mark.parametrize("mode", MODES)
def test_skipping_m_once_sgd_for_good_changes_nothing_but_m(mode):
    torch.manual_seed(0)
    a, b = (torch.nn.Parameter(torch.ones(20)) for _ in range(2))
    opt_a = HybridRMSpropSGD([a], lr=0.1, alpha_sgd=1.0, weight_decay=1e-4, **MODES[mode])
    opt_b = HybridRMSpropSGD([b], lr=0.1, alpha_sgd=1.0, weight_decay=1e-4, **MODES[mode])
    opt_b.param_groups[0]["track_square_avg"] = False
    for _ in range(30):
        g = torch.randn(20)
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)
    assert torch.all(opt_b.state[b]["square_avg"] == 0) and torch.any(opt_a.state[a]["square_avg"])


def test_a_compiler_that_fails_is_named_with_what_to_do(monkeypatch):
    """A real compile with a C++ compiler that is not there (and no cached result to fall
    back on): the error says which setting to change."""
    monkeypatch.setattr(torch._inductor.config, "fx_graph_cache", False)
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", ("/nonexistent/c++",))
    p = torch.nn.Parameter(torch.ones(13))
    p.grad = torch.ones(13)
    opt = HybridRMSpropSGD([p], lr=0.1, alpha_sgd=0.5, compiled=True)
    with pytest.raises(RuntimeError, match="optimizer update on cpu.*compile_optimizer: false"):
        opt.step()
    assert torch.equal(p, torch.ones(13))  # nothing half-applied

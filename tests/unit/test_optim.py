"""The hybrid optimizer against the paper's three equations in float64 NumPy, in each of its
three forms: the per-tensor loop (CPU default), the foreach kernels (GPU default) and the
torch.compile'd update (`train.compile_optimizer`); and LARS against the MLPerf reference's
formulas, likewise in float64 NumPy."""

import copy

import numpy as np
import pytest
import torch

from pipeline.train.lars import LARS
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


def test_a_compiler_that_fails_is_named_with_what_to_do():
    """A real compile with a C++ compiler that is not there (and no cached result to fall
    back on): the error says which setting to change. (Inductor's own `patch` restores its
    config; monkeypatching the config module breaks every later compile in the process.)"""
    broken = {"fx_graph_cache": False, "cpp.cxx": ("/nonexistent/c++",)}
    p = torch.nn.Parameter(torch.ones(13))
    p.grad = torch.ones(13)
    opt = HybridRMSpropSGD([p], lr=0.1, alpha_sgd=0.5, compiled=True)
    message = "optimizer update on cpu.*compile_optimizer: false"
    with torch._inductor.config.patch(broken), pytest.raises(RuntimeError, match=message):
        opt.step()
    assert torch.equal(p, torch.ones(13))  # nothing half-applied


# --------------------------------------------------------------------------------------------
# LARS, against the MLPerf reference's formulas in float64 NumPy.

WD, EETA = 5e-4, 0.001


def lars_reference(w0, grads, lrs, adapt, weight_decay=WD, eeta=EETA, eps=0.0, momentum=0.9):
    w = w0.copy()
    v = np.zeros_like(w)
    for g, lr in zip(grads, lrs, strict=True):
        if adapt:
            w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
            ok = w_norm > 0 and g_norm > 0
            trust = eeta * w_norm / (g_norm + weight_decay * w_norm + eps) if ok else 1.0
            v = momentum * v + lr * trust * (g + weight_decay * w)
        else:
            v = momentum * v + lr * g
        w = w - v
    return w


def run_lars(groups, grads_per_param, lrs, **kwargs):
    opt = LARS(groups, lr=lrs[0], **kwargs)
    params = [p for g in groups for p in g["params"]]
    for i, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        for p, grads in zip(params, grads_per_param, strict=True):
            p.grad = torch.tensor(grads[i], dtype=p.dtype)
        opt.step()
    return [p.detach() for p in params]


@pytest.fixture
def lars_trajectory():
    rng = np.random.default_rng(1)
    steps = 500
    weight0, bias0 = rng.normal(size=(6, 4)), rng.normal(size=(6,))
    weight_grads = [rng.normal(scale=0.01 + 0.02 * (i % 5), size=(6, 4)) for i in range(steps)]
    bias_grads = [rng.normal(scale=0.05, size=(6,)) for _ in range(steps)]
    t = np.arange(steps) / steps
    lrs = np.where(t < 0.2, 2.0 * t / 0.2, 2.0 * (1 - t) ** 2 + 1e-4)  # warm-up then poly
    return weight0, bias0, weight_grads, bias_grads, lrs.tolist()


LARS_FORMS = {
    "per tensor": {"foreach": False},
    "foreach": {"foreach": True},
    "compiled": {"compiled": True},
}


@pytest.mark.parametrize("form", LARS_FORMS)
def test_lars_follows_the_mlperf_formulas_over_many_steps(lars_trajectory, form):
    weight0, bias0, weight_grads, bias_grads, lrs = lars_trajectory
    weight = torch.nn.Parameter(torch.tensor(weight0))
    bias = torch.nn.Parameter(torch.tensor(bias0))
    groups = [
        {"params": [weight], "weight_decay": WD, "adapt": True},
        {"params": [bias], "weight_decay": 0.0, "adapt": False},
    ]
    got_weight, got_bias = run_lars(
        groups, [weight_grads, bias_grads], lrs, eeta=EETA, **LARS_FORMS[form]
    )
    want_weight = lars_reference(weight0, weight_grads, lrs, adapt=True)
    want_bias = lars_reference(bias0, bias_grads, lrs, adapt=False)
    for got, want in ((got_weight, want_weight), (got_bias, want_bias)):
        error = np.linalg.norm(got.numpy() - want) / np.linalg.norm(want)
        assert error <= 1e-6, error
    # the trust ratio mattered: plain momentum SGD would have moved the weights elsewhere
    sgd = lars_reference(weight0, weight_grads, lrs, adapt=False)
    assert np.linalg.norm(sgd - want_weight) > 0.1 * np.linalg.norm(want_weight - weight0)


def test_lars_leaves_bn_and_bias_groups_without_trust_ratio_or_decay():
    """A non-adapted group steps exactly like momentum SGD with the lr inside the buffer,
    whatever its weight_decay says."""
    param = torch.nn.Parameter(torch.tensor([3.0, -4.0], dtype=torch.float64))
    opt = LARS([{"params": [param], "weight_decay": 0.1, "adapt": False}], lr=0.5, eeta=EETA)
    for _ in range(2):
        param.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
        opt.step()
    # v1 = 0.5 g, w1 = w0 - 0.5; v2 = 0.9 * 0.5 + 0.5 = 0.95, w2 = w1 - 0.95
    assert param.detach().tolist() == pytest.approx([3.0 - 1.45, -4.0 - 1.45], abs=1e-12)


@pytest.mark.parametrize("zero", ["weight", "grad"])
def test_lars_trust_ratio_is_one_for_zero_norm_tensors(zero):
    w = (
        torch.zeros(3, dtype=torch.float64)
        if zero == "weight"
        else torch.ones(3, dtype=torch.float64)
    )
    param = torch.nn.Parameter(w.clone())
    opt = LARS([{"params": [param], "weight_decay": 0.0, "adapt": True}], lr=0.1, eeta=EETA)
    grad = (
        torch.zeros(3, dtype=torch.float64)
        if zero == "grad"
        else torch.ones(3, dtype=torch.float64)
    )
    param.grad = grad
    opt.step()
    assert torch.isfinite(param).all()
    torch.testing.assert_close(param.detach(), w - 0.1 * grad)  # trust 1: a plain step


@pytest.mark.parametrize("form", LARS_FORMS)
def test_lars_resumes_bit_identical_from_its_state_dict(lars_trajectory, form):
    weight0, _, weight_grads, _, lrs = lars_trajectory

    def fresh():
        param = torch.nn.Parameter(torch.tensor(weight0, dtype=torch.float32))
        group = {"params": [param], "weight_decay": WD}
        return param, LARS([group], lr=lrs[0], **LARS_FORMS[form])

    def steps(param, opt, indices):
        for i in indices:
            opt.param_groups[0]["lr"] = lrs[i]
            param.grad = torch.tensor(weight_grads[i], dtype=torch.float32)
            opt.step()

    param, opt = fresh()
    steps(param, opt, range(100))
    weights, state = param.detach().clone(), copy.deepcopy(opt.state_dict())  # as saved
    steps(param, opt, range(100, 200))
    resumed, opt2 = fresh()
    with torch.no_grad():
        resumed.copy_(weights)
    opt2.load_state_dict(state)
    steps(resumed, opt2, range(100, 200))
    assert torch.equal(param, resumed)


def test_the_three_lars_forms_agree_on_many_tensors():
    """Each form over a group of tensors of other shapes (ResNet-like: a conv, a linear, a
    vector), with one all-zero gradient among them: the same weights to float32 rounding."""
    shapes = [(8, 4, 3, 3), (10, 16), (16,), (4, 4)]
    results = []
    for form in LARS_FORMS.values():
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
        opt = LARS([{"params": params, "weight_decay": WD}], lr=2.0, **form)
        for step in range(20):
            for i, p in enumerate(params):
                p.grad = torch.zeros_like(p) if i == 3 else torch.randn_like(p) * 0.01
            opt.param_groups[0]["lr"] = 2.0 * (1 - step / 20)
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in params]))
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-5, atol=1e-6)

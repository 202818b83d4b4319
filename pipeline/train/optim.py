"""The paper's hybrid optimizer: RMSprop warm-up moving smoothly to momentum SGD (LARS is in
pipeline/train/lars.py).

Per parameter and iteration (Akiba et al., appendix A; docs/design.md),
with g the gradient plus weight_decay * theta (Chainer's WeightDecay hook adds it first):

    m     = mu2 * m + (1 - mu2) * g^2
    Delta = mu1 * Delta - (alpha_sgd + alpha_rmsprop / (sqrt(m) + eps)) * g
    theta = theta + lr * Delta

with alpha_rmsprop = (1 - alpha_sgd) * lr_rmsprop / lr, m_0 = Delta_0 = 0 and no bias
correction. alpha_sgd = 1 is momentum SGD (torch.optim.SGD(momentum=0.9)); alpha_sgd = 0 is
RMSprop with momentum (torch.optim.RMSprop(lr=lr_rmsprop, alpha=0.99, momentum=0.9)).

Each param group carries `lr` (eta_SGD) and `alpha_sgd`, which the training loop sets every
iteration, and `track_square_avg`: the loop turns it off once alpha_SGD is 1 for good (the
schedule never lowers it), because m then no longer enters the update; skipping it makes the SGD
phase cost what torch.optim.SGD costs.

The step runs as a handful of fused `torch._foreach_*` kernels over all parameters of a group on
GPUs; on CPUs a per-tensor loop is faster (each tensor stays in cache through all its
operations), so `foreach=None` picks by device.

`compiled=True` runs the whole update as one `torch.compile`d function per group: one pass over
each tensor's memory instead of eight, so the RMSprop phase costs what the SGD phase does
(docs/performance.md). The price is compiling it once in every process, with a C++ compiler on
CPUs or Triton on GPUs. The tests check that all three give the same result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from pipeline.errors import first_line


class HybridRMSpropSGD(Optimizer):
    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        alpha_sgd: float,
        lr_rmsprop: float = 3e-4,
        momentum: float = 0.9,
        rms_decay: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
        compiled: bool = False,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= alpha_sgd <= 1.0:
            raise ValueError(f"alpha_sgd must be in [0, 1], got {alpha_sgd}")
        defaults = dict(
            lr=lr,
            alpha_sgd=alpha_sgd,
            lr_rmsprop=lr_rmsprop,
            momentum=momentum,
            rms_decay=rms_decay,
            eps=eps,
            weight_decay=weight_decay,
            foreach=foreach,
            track_square_avg=True,
        )
        super().__init__(params, defaults)
        self.compiled = compiled
        # lr, alpha_sgd and alpha_rmsprop change every iteration: the compiled update takes them
        # as 0-d tensors on the parameters' device (filled, never re-created: no host-device
        # copy), so that new values do not recompile it.
        self._scalars: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, squares, deltas = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("HybridRMSpropSGD does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                squares.append(state["square_avg"])
                deltas.append(state["delta"])
            if not params:
                continue
            alpha_sgd = group["alpha_sgd"]
            # In the SGD phase there is no RMSprop term, whatever lr is (poly starts at 0).
            alpha_rms = (
                0.0 if alpha_sgd == 1.0 else (1.0 - alpha_sgd) * group["lr_rmsprop"] / group["lr"]
            )
            if self.compiled:
                self._compiled_step(group, params, grads, squares, deltas, alpha_sgd, alpha_rms)
                continue
            foreach = group["foreach"]
            if foreach is None:  # like torch's own optimizers: fused kernels pay off on GPUs
                foreach = params[0].is_cuda
            update = _foreach_update if foreach else _plain_update
            update(
                params,
                grads,
                squares,
                deltas,
                lr=group["lr"],
                alpha_sgd=alpha_sgd,
                alpha_rms=alpha_rms,
                momentum=group["momentum"],
                rms_decay=group["rms_decay"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                track_square_avg=group["track_square_avg"],
            )
        return loss

    def _compiled_step(self, group, params, grads, squares, deltas, alpha_sgd, alpha_rms) -> None:
        key = (params[0].device, params[0].dtype)
        if key not in self._scalars:
            self._scalars[key] = torch.zeros(3, device=key[0], dtype=key[1])
        scalars = self._scalars[key]
        scalars[0].fill_(group["lr"])
        scalars[1].fill_(alpha_sgd)
        scalars[2].fill_(alpha_rms)
        try:
            _compiled_update()(
                params,
                grads,
                squares,
                deltas,
                scalars,
                momentum=group["momentum"],
                rms_decay=group["rms_decay"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                track_square_avg=group["track_square_avg"],
                rmsprop_term=alpha_rms != 0.0,
            )
        except Exception as error:  # compiler missing or failing: say what to do
            raise RuntimeError(
                f"train.compile_optimizer: torch.compile could not build the optimizer update on "
                f"{key[0]} ({type(error).__name__}: {first_line(error)}). Install a C++ compiler "
                "(CPU) or Triton (GPU), or set train.compile_optimizer: false."
            ) from error


def _plain_update(
    params,
    grads,
    squares,
    deltas,
    *,
    lr,
    alpha_sgd,
    alpha_rms,
    momentum,
    rms_decay,
    eps,
    weight_decay,
    track_square_avg,
) -> None:
    for p, g, m, delta in zip(params, grads, squares, deltas, strict=True):
        if weight_decay:
            g = g.add(p, alpha=weight_decay)
        if track_square_avg:
            m.mul_(rms_decay).addcmul_(g, g, value=1.0 - rms_decay)
        # Delta = mu1 Delta - alpha_sgd g - alpha_rms g / (sqrt(m) + eps), in that order
        delta.mul_(momentum).add_(g, alpha=-alpha_sgd)
        if alpha_rms:
            delta.addcdiv_(g, m.sqrt().add_(eps), value=-alpha_rms)
        p.add_(delta, alpha=lr)


def _foreach_update(
    params,
    grads,
    squares,
    deltas,
    *,
    lr,
    alpha_sgd,
    alpha_rms,
    momentum,
    rms_decay,
    eps,
    weight_decay,
    track_square_avg,
) -> None:
    """The same arithmetic as `_plain_update`, one fused kernel per line over all tensors
    (8 passes over the parameters' memory; 3, as torch.optim.SGD, once m is no longer needed)."""
    if weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if track_square_avg:
        torch._foreach_mul_(squares, rms_decay)
        torch._foreach_addcmul_(squares, grads, grads, value=1.0 - rms_decay)
    torch._foreach_mul_(deltas, momentum)
    torch._foreach_add_(deltas, grads, alpha=-alpha_sgd)
    if alpha_rms:
        denominators = torch._foreach_sqrt(squares)
        torch._foreach_add_(denominators, eps)
        torch._foreach_addcdiv_(deltas, grads, denominators, value=-alpha_rms)
    torch._foreach_add_(params, deltas, alpha=lr)


def _fused_update(
    params,
    grads,
    squares,
    deltas,
    scalars,
    *,
    momentum,
    rms_decay,
    eps,
    weight_decay,
    track_square_avg,
    rmsprop_term,
) -> None:
    """The same arithmetic as `_plain_update`, written for torch.compile, which fuses each
    tensor's lines into one loop. `scalars` holds lr, alpha_sgd, alpha_rmsprop; the keyword
    arguments are constants of a run (a new value compiles a new variant)."""
    lr, alpha_sgd, alpha_rms = scalars[0], scalars[1], scalars[2]
    for p, g, m, delta in zip(params, grads, squares, deltas, strict=True):
        if weight_decay:
            g = g + weight_decay * p
        if track_square_avg:
            m.copy_(m * rms_decay + (1.0 - rms_decay) * (g * g))
        step = delta * momentum - alpha_sgd * g
        if rmsprop_term:
            step = step - alpha_rms * g / (m.sqrt() + eps)
        delta.copy_(step)
        p.add_(lr * step)


@functools.cache
def _compiled_update() -> Callable[..., None]:
    """Compiled on first use, so that importing this module does not import the compiler."""
    return torch.compile(_fused_update, fullgraph=True, dynamic=False)

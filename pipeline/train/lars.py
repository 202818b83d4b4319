"""Layer-wise Adaptive Rate Scaling (You et al. 2017) as the MLPerf ResNet-50 reference defines
it. Per tensor, with w the weights and g the gradient:

    trust = eeta * |w| / (|g| + weight_decay * |w| + eps)   (1 unless both norms > 0)
    v     = momentum * v + lr * trust * (g + weight_decay * w)
    w     = w - v

Groups with `adapt: False` (BatchNorm parameters and biases) take plain momentum steps,
v = momentum * v + lr * g, with neither trust ratio nor weight decay. The learning rate sits
inside the momentum buffer, unlike torch.optim.SGD, so a changing lr does not rescale the
momentum already gathered.

Three forms of the same arithmetic, as the hybrid optimizer has: fused `torch._foreach_*`
kernels over a group's tensors (the norms stacked, every trust ratio one tensor, all on the
device: no host synchronisation), the default on GPUs; a loop over the tensors with each trust
ratio a Python number, the default on CPUs, where each tensor stays in cache through its few
operations and reading a norm synchronises nothing; and `compiled=True`
(`train.compile_optimizer`), one torch.compile'd pass per tensor after its two norms. The
tests hold all three to a float64 reference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from pipeline.errors import first_line


class LARS(Optimizer):
    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eeta: float = 0.001,
        eps: float = 0.0,
        foreach: bool | None = None,
        compiled: bool = False,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must not be negative, got {lr}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eeta=eeta,
            eps=eps,
            adapt=True,
            foreach=foreach,
        )
        super().__init__(params, defaults)
        self.compiled = compiled
        # lr changes every iteration: the compiled update takes it as a 0-d tensor on the
        # device (filled, never re-created), so that a new value does not recompile it.
        self._lr: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise RuntimeError("LARS does not support sparse gradients")
            buffers = []
            for p in params:
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
                buffers.append(state["momentum_buffer"])
            foreach = group["foreach"]
            if foreach is None:  # like torch's own optimizers: fused kernels pay off on GPUs
                foreach = params[0].is_cuda
            lr, momentum = group["lr"], group["momentum"]
            if not group["adapt"]:
                _momentum_step(params, grads, buffers, lr, momentum, foreach)
            elif self.compiled:
                self._compiled_step(group, params, grads, buffers)
            else:
                update = _foreach_lars if foreach else _plain_lars
                update(params, grads, buffers, lr, momentum, *_constants(group))
        return loss

    def _compiled_step(self, group: dict, params: list, grads: list, buffers: list) -> None:
        key = (params[0].device, params[0].dtype)
        if key not in self._lr:
            self._lr[key] = torch.zeros((), device=key[0], dtype=key[1])
        lr = self._lr[key]
        lr.fill_(group["lr"])
        try:
            _compiled_lars()(params, grads, buffers, lr, group["momentum"], *_constants(group))
        except Exception as error:  # compiler missing or failing: say what to do
            raise RuntimeError(
                f"train.compile_optimizer: torch.compile could not build the LARS update on "
                f"{key[0]} ({type(error).__name__}: {first_line(error)}). Install a C++ compiler "
                "(CPU) or Triton (GPU), or set train.compile_optimizer: false."
            ) from error


def _constants(group: dict) -> tuple[float, float, float]:
    return group["weight_decay"], group["eeta"], group["eps"]


def _momentum_step(params, grads, buffers, lr: float, momentum: float, foreach: bool) -> None:
    """BN parameters and biases: v = momentum v + lr g; w = w - v."""
    if foreach:
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, grads, alpha=lr)
        torch._foreach_sub_(params, buffers)
        return
    for p, g, v in zip(params, grads, buffers, strict=True):
        v.mul_(momentum).add_(g, alpha=lr)
        p.sub_(v)


def _trust(w_norm, g_norm, weight_decay: float, eeta: float, eps: float) -> torch.Tensor:
    return torch.where(
        (w_norm > 0) & (g_norm > 0),
        eeta * w_norm / (g_norm + weight_decay * w_norm + eps),
        torch.ones_like(w_norm),
    )


def _plain_lars(params, grads, buffers, lr, momentum, weight_decay, eeta, eps) -> None:
    """One tensor at a time, its trust ratio a Python number: on a CPU, where reading a norm
    costs no device synchronisation, that spares a handful of tiny kernels per tensor and the
    temporary g + weight_decay * w."""
    for p, g, v in zip(params, grads, buffers, strict=True):
        w_norm, g_norm = float(p.norm()), float(g.norm())
        ok = w_norm > 0 and g_norm > 0
        scale = lr * (eeta * w_norm / (g_norm + weight_decay * w_norm + eps) if ok else 1.0)
        v.mul_(momentum).add_(g, alpha=scale)
        if weight_decay:
            v.add_(p, alpha=scale * weight_decay)
        p.sub_(v)


def _foreach_lars(params, grads, buffers, lr, momentum, weight_decay, eeta, eps) -> None:
    """The same arithmetic as `_plain_lars`, each line one fused kernel over all tensors: the
    norms as two stacked vectors, every trust ratio in one tensor."""
    w_norms = torch.stack(torch._foreach_norm(params))
    g_norms = torch.stack(torch._foreach_norm(grads))
    scales = (_trust(w_norms, g_norms, weight_decay, eeta, eps) * lr).unbind()
    updates = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay else grads
    torch._foreach_mul_(buffers, momentum)
    torch._foreach_addcmul_(buffers, updates, list(scales))
    torch._foreach_sub_(params, buffers)


def _fused_lars(params, grads, buffers, lr, momentum, weight_decay, eeta, eps) -> None:
    """The same arithmetic, written for torch.compile: per tensor the two norms, then one loop
    that reads w, g and v and writes v and w. `lr` is a 0-d tensor; the others are constants
    of a run (a new value compiles a new variant)."""
    for p, g, v in zip(params, grads, buffers, strict=True):
        trust = _trust(p.norm(), g.norm(), weight_decay, eeta, eps)
        step = v * momentum + (lr * trust) * (g + weight_decay * p)
        v.copy_(step)
        p.sub_(step)


@functools.cache
def _compiled_lars() -> Callable[..., None]:
    """Compiled on first use, so that importing this module does not import the compiler."""
    return torch.compile(_fused_lars, fullgraph=True, dynamic=False)

"""What a training run is made of before its first step: the optimizer its recipe names, and
whether its arithmetic must be deterministic."""

from __future__ import annotations

import os

import torch

from pipeline.config import Config
from pipeline.train.lars import LARS
from pipeline.train.model import param_groups
from pipeline.train.optim import HybridRMSpropSGD


def configure_determinism(deterministic: bool) -> None:
    """Deterministic kernels (bit-identical resumes on a CPU), or cuDNN's fastest ones."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def build_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """LARS, or the hybrid (which is also the sgd and rmsprop recipes), on `model`'s parameter
    groups (no weight decay on BN parameters and biases)."""
    o = config.optimizer
    groups = param_groups(model, o.weight_decay)
    if o.name == "lars":
        return LARS(
            groups,
            config.base_lr,
            o.momentum,
            eeta=o.eeta,
            eps=o.lars_eps,
            compiled=config.train.compile_optimizer,
        )
    # sgd and rmsprop are the hybrid with alpha_SGD held at 1 or 0 (the schedule does that)
    return HybridRMSpropSGD(
        groups,
        lr=config.base_lr,
        alpha_sgd=1.0,
        lr_rmsprop=o.lr_rmsprop,
        momentum=o.momentum,
        rms_decay=o.rms_decay,
        eps=o.eps,
        compiled=config.train.compile_optimizer,
    )

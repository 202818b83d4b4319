"""The network: any torchvision classification model by name, set up as the paper trains it."""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import PipelineError


class ModelError(PipelineError, ValueError):
    """An unusable model setting (unknown architecture, unsupported option)."""


def build_model(config: ModelConfig, num_classes: int) -> nn.Module:
    available = torchvision.models.list_models(module=torchvision.models)
    if config.arch not in available:
        raise ModelError(
            f"model.arch = {config.arch!r} is not a torchvision classification model; "
            f"choose one of: {', '.join(sorted(available))}"
        )
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    is_resnet = config.arch.startswith(("resnet", "resnext", "wide_resnet"))
    if is_resnet:
        # Goyal et al.: the last BN gamma of each residual block starts at 0, so every block
        # starts as the identity and very large learning rates are stable early on.
        kwargs["zero_init_residual"] = config.zero_init_residual
    model = torchvision.models.get_model(config.arch, **kwargs)
    if config.small_input:
        if not is_resnet:
            raise ModelError("model.small_input is implemented for the ResNet family only")
        # 32-64 px inputs: a 3x3 stride-1 stem and no max-pool keep enough resolution.
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    if not config.bn_moving_average:
        set_bn_last_batch_statistics(model)
    return model


def set_bn_last_batch_statistics(model: nn.Module) -> None:
    """BatchNorm without moving averages: momentum 1.0 makes running_mean / running_var the last
    minibatch's statistics; `average_bn_stats` averages them over workers before validation."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights of convolutions and linear layers only: not on BN gamma/beta
    and not on biases (every parameter with fewer than 2 dimensions). `adapt` marks the same
    split for LARS, whose trust ratio applies to the decayed weights only."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "adapt": True},
        {"params": no_decay, "weight_decay": 0.0, "adapt": False},
    ]


def to_device(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model

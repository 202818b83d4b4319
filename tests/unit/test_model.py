import pytest
import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.train.model import ModelError, build_model, param_groups


def test_paper_setup_of_resnet50():
    model = build_model(ModelConfig(arch="resnet50"), num_classes=7)
    assert model.fc.out_features == 7
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.momentum == 1.0 for bn in bns)  # no moving averages
    last_gammas = [
        block.bn3.weight
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4)
        for block in layer
    ]
    assert len(last_gammas) == 16 and all(torch.all(g == 0) for g in last_gammas)
    assert torch.any(model.bn1.weight != 0)


def test_moving_averages_can_be_kept():
    model = build_model(ModelConfig(arch="resnet18", bn_moving_average=True), num_classes=3)
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_bn_momentum_one_keeps_exactly_the_last_batch_statistics():
    model = build_model(ModelConfig(arch="resnet18"), num_classes=3)
    model.train()
    torch.manual_seed(0)
    for _ in range(3):
        x = torch.randn(8, 3, 32, 32) * 2 + 1
        model(x)
    bn = model.bn1
    features = model.conv1(x)
    torch.testing.assert_close(bn.running_mean, features.mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_var, features.var((0, 2, 3), unbiased=True))


def test_no_weight_decay_on_bn_parameters_and_biases():
    model = build_model(ModelConfig(arch="resnet18"), num_classes=3)
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(model.bn1.weight) in no_decay_ids and id(model.bn1.bias) in no_decay_ids
    assert id(model.fc.bias) in no_decay_ids and id(model.fc.weight) not in no_decay_ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_small_input_stem():
    model = build_model(ModelConfig(arch="resnet18", small_input=True), num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_any_torchvision_model_and_clear_errors():
    assert build_model(ModelConfig(arch="mobilenet_v3_small"), 4)(
        torch.randn(2, 3, 64, 64)
    ).shape == (2, 4)
    with pytest.raises(ModelError, match=r"model.arch = 'resnet51' is not .* resnet50"):
        build_model(ModelConfig(arch="resnet51"), 4)
    with pytest.raises(ModelError, match="ResNet family only"):
        build_model(ModelConfig(arch="mobilenet_v3_small", small_input=True), 4)

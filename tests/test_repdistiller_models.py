"""RepDistiller's CIFAR-100 architectures: ours against replicas of RepDistiller's models/ built here
(tests/replicas.py): parameter counts, RepDistiller-keyed state dicts through the import's loader,
identical logits and identical stage outputs (the features the pairs' feature methods read)."""

import pytest
import timm
import torch
import torch.nn.functional as F

import harness.models  # noqa: F401  (registers the models)
from harness.models import count_parameters, extract_features, load_weights
from replicas import REPLICAS, ResNet, WideResNet

# our timm name -> RepDistiller's feature taps f1.. (replica submodule, then a function of its output)
RELU = F.relu
TAPS = {
    "cifar_resnet56": ["layer1", "layer2", "layer3"],
    "cifar_resnet110": ["layer1", "layer2", "layer3"],
    "cifar_resnet8x4": ["layer1", "layer2", "layer3"],
    "cifar_resnet32x4": ["layer1", "layer2", "layer3"],
    "cifar_wrn40_2": ["block1", "block2", "block3"],
    "cifar_wrn16_2": ["block1", "block2", "block3"],
    "cifar_wrn40_1": ["block1", "block2", "block3"],
    "cifar_vgg13_bn": [("block1", RELU), ("block2", RELU), ("block3", RELU), ("block4", RELU)],
    "cifar_vgg8_bn": [("block1", RELU), ("block2", RELU), ("block3", RELU), ("block4", RELU)],
    "cifar_mobilenetv2_half": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
    "cifar_resnet50": ["layer1", "layer2", "layer3", "layer4"],
    "cifar_shufflenetv1": ["layer1", "layer2", "layer3"],
    "cifar_shufflenetv2": ["layer1", "layer2", "layer3"],
}


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter and batch-norm statistic drawn at random, so that a key mapped to the wrong place shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif tensor.is_floating_point():
                tensor.normal_(0, 0.1)
    return model.eval()


def captured(model: torch.nn.Module, taps: list, x: torch.Tensor) -> list[torch.Tensor]:
    outputs = {}
    hooks = []
    for tap in taps:
        name, after = tap if isinstance(tap, tuple) else (tap, lambda t: t)
        hooks.append(model.get_submodule(name).register_forward_hook(
            lambda module, inputs, out, name=name, after=after: outputs.__setitem__(name, after(out))))
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return [outputs[tap[0] if isinstance(tap, tuple) else tap] for tap in taps]


@pytest.mark.parametrize("name", sorted(REPLICAS))
def test_parameter_count_at_100_classes_equals_repdistillers(name):
    assert count_parameters(timm.create_model(name, num_classes=100)) == count_parameters(REPLICAS[name]())


def test_the_replicas_have_the_published_sizes():
    """The replicas themselves against the sizes RepDistiller's models are known by (millions)."""
    assert round(count_parameters(WideResNet(40, 2)) / 1e6, 2) == 2.26
    assert round(count_parameters(ResNet(32, [32, 64, 128, 256])) / 1e6, 2) == 7.43


@pytest.mark.parametrize("name", sorted(REPLICAS))
def test_repdistiller_state_dict_loads_and_gives_the_same_logits_and_features(name):
    replica = randomised(REPLICAS[name]())
    ours = timm.create_model(name, num_classes=100).eval()
    load_weights(ours, replica.state_dict(), name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = ours(x)
        features = extract_features(ours, x, frozenset({"logits", "stages"}), list(range(1, len(TAPS[name]) + 1)))
    assert torch.allclose(logits, replica(x), atol=1e-5)
    assert torch.allclose(features["logits"], logits, atol=1e-5)
    for ours_stage, theirs in zip(features["stages"], captured(replica, TAPS[name], x), strict=True):
        assert ours_stage.shape == theirs.shape
        assert torch.allclose(ours_stage, theirs, atol=1e-5)


@pytest.mark.parametrize("name, shapes", [
    ("cifar_wrn40_2", [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    ("cifar_vgg13_bn", [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]),
    ("cifar_mobilenetv2_half", [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)]),
    ("cifar_resnet50", [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)]),
    ("cifar_shufflenetv1", [(240, 16, 16), (480, 8, 8), (960, 4, 4)]),
    ("cifar_shufflenetv2", [(116, 16, 16), (232, 8, 8), (464, 4, 4)]),
])
def test_stage_shapes_are_repdistillers(name, shapes):
    model = timm.create_model(name, num_classes=100).eval()
    _, stages = model.forward_intermediates(torch.randn(1, 3, 32, 32), indices=list(range(1, len(shapes) + 1)))
    assert [tuple(s.shape[1:]) for s in stages] == shapes


def test_imagenet_mobilenetv1_is_mdistillers_size():
    """mdistiller's ImageNet MobileNetV1: 3x3 stem of 32, 13 depthwise-separable blocks, 1024 -> 1000."""
    plan = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)] + \
        [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
    bn = 2  # affine parameters per channel
    expected = 3 * 9 * 32 + bn * 32 + sum(i * 9 + bn * i + i * o + bn * o for i, o, _ in plan) + 1024 * 1000 + 1000
    assert count_parameters(timm.create_model("mobilenetv1_100", num_classes=1000)) == expected

"""Model registration, parameter counts and feature taps."""

import pytest
import timm
import torch

import harness.models  # noqa: F401  (registers the models)
from harness.models import count_parameters, extract_features


def test_registered_without_overwriting_timm():
    for name in ["cifar_resnet8", "cifar_resnet14", "cifar_resnet20", "cifar_resnet26", "cifar_resnet32",
                 "cifar_resnet56", "cifar_resnet110", "cifar_resnet8x4", "cifar_resnet32x4",
                 "mlp_hinton1200", "mlp_hinton800", "maxout_mnist_teacher", "maxout_mnist_student",
                 "maxout_cifar_teacher", "fitnet_cifar_s1", "fitnet_cifar_s2", "fitnet_cifar_s3", "fitnet_cifar_s4",
                 "inception_bn_small", "cifar_preact_resnet164", "cifar_preact_resnet1001", "cifar_vgg19_bn",
                 "cifar_alexnet8", "inception_bn"]:
        assert name in timm.list_models(name)
    # timm's own ImageNet ResNets are still timm's
    assert type(timm.create_model("resnet26")).__module__ == "timm.models.resnet"


@pytest.mark.parametrize("name, classes, paper_millions, tolerance", [
    ("cifar_resnet32", 100, 0.46, 0.05),   # KR Table 2 teacher
    ("cifar_resnet14", 100, 0.19, 0.05),   # KR Table 2 student
    ("cifar_resnet26", 10, 0.36, 0.05),    # KR Table 1 teacher
])
def test_parameter_counts_near_the_kr_paper(name, classes, paper_millions, tolerance):
    params = count_parameters(timm.create_model(name, num_classes=classes)) / 1e6
    assert abs(params - paper_millions) / paper_millions < tolerance, params


@pytest.mark.parametrize("name, kwargs, paper, tolerance", [
    ("maxout_mnist_teacher", {"in_chans": 1, "img_size": 28}, 361e3, 0.05),   # LPL Table III ~361K
    ("maxout_mnist_student", {"in_chans": 1, "img_size": 28}, 30e3, 0.05),    # LPL Table III ~30K
    ("cifar_preact_resnet1001", {}, 10.2e6, 0.02),                             # He et al. 2016: 10.2M
    ("fitnet_cifar_s4", {"img_size": 32}, 2.5e6, 0.05),                        # LPL Table I ~2.5M
    ("fitnet_cifar_s1", {"img_size": 32}, 250e3, 0.30),                        # ~250K: layout approximated
    ("cifar_vgg19_bn", {}, 20.0e6, 0.02),   # the usual CIFAR VGG-19-BN: 16 conv layers (20.0M) + one linear
])
def test_paper_architectures_have_about_the_papers_size(name, kwargs, paper, tolerance):
    params = count_parameters(timm.create_model(name, num_classes=10, **kwargs))
    assert abs(params - paper) / paper < tolerance, params


def test_hinton_mlp_sizes():
    m = timm.create_model("mlp_hinton1200", num_classes=10, img_size=28, in_chans=1)
    assert count_parameters(m) == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10


@pytest.mark.parametrize("name, kwargs, shape", [
    ("cifar_resnet20", {}, (2, 3, 32, 32)),
    ("mlp_hinton800", {"img_size": 8}, (2, 1, 8, 8)),
    ("resnet18", {}, (2, 3, 64, 64)),  # any timm model with forward_intermediates works
    ("cifar_alexnet8", {"img_size": 32}, (2, 3, 32, 32)),  # flattens instead of pooling
    ("resnetv2_101", {}, (2, 3, 64, 64)),  # a 1x1-conv classifier
    ("inception_bn", {}, (2, 3, 64, 64)),
])
def test_features_do_not_change_the_forward_output(name, kwargs, shape):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, in_chans=shape[1], **kwargs).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        plain = model(x)
        features = extract_features(model, x, frozenset({"logits", "pre_logits", "stages"}), [0, 1])
    assert torch.allclose(features["logits"], plain, atol=1e-5)
    assert len(features["stages"]) == 2
    assert features["pre_logits"].shape == (2, model.num_features)


def test_stage_shapes_of_cifar_resnet():
    model = timm.create_model("cifar_resnet8", num_classes=10).eval()
    _, stages = model.forward_intermediates(torch.randn(1, 3, 32, 32), indices=[0, 1, 2, 3])
    assert [tuple(s.shape[1:]) for s in stages] == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]


def test_width_multiplier_shrinks_the_student():
    full = count_parameters(timm.create_model("cifar_resnet14", num_classes=100))
    slim = count_parameters(timm.create_model("cifar_resnet14", num_classes=100, width_mult=0.75))
    assert slim < 0.7 * full


def test_imagenet_pair_taps_match_in_size():
    """NST §5.2 / LPL §V-D pair: ResNet-101 groups 2-4 against Inception-BN's in3b, in4d, in5b at 224 px."""
    from harness.spec.spec import load_spec

    spec = load_spec()
    pair = spec.pairs["resnet101-incbnfull"]
    x = torch.randn(1, 3, 224, 224)
    shapes = {}
    for role, stages in (("teacher", pair.stages.teacher), ("student", pair.stages.student)):
        model = timm.create_model(spec.models[getattr(pair, role)].timm, num_classes=1000).eval()
        with torch.no_grad():
            shapes[role] = [t.shape for t in extract_features(model, x, frozenset({"stages"}), stages)["stages"]]
    assert [s[-1] for s in shapes["teacher"]] == [s[-1] for s in shapes["student"]] == [28, 14, 7]
    assert [s[1] for s in shapes["teacher"]] == [512, 1024, 2048]
    assert [s[1] for s in shapes["student"]] == [320, 608, 1024]
    student = timm.create_model("inception_bn", num_classes=1000)
    assert abs(count_parameters(student) - 11.3e6) / 11.3e6 < 0.01  # Ioffe & Szegedy's ~11.3M (with fc)


def test_maxout_unit_matches_amax_in_value_and_gradient():
    """MaxoutConv takes max(dim).values (its backward scatters to one index) for speed; without ties
    it equals amax (whose backward splits the gradient among ties) in value and gradient."""
    from harness.models.maxout import MaxoutConv

    torch.manual_seed(0)
    unit = MaxoutConv(3, 4, 3, pieces=2)
    x = torch.randn(5, 3, 6, 6, requires_grad=True)
    out = unit(x)
    grad_fast = torch.autograd.grad(out.square().sum(), x)[0]
    y = unit.conv(x)
    reference = y.view(5, 4, 2, 6, 6).amax(dim=2)
    grad_reference = torch.autograd.grad(reference.square().sum(), x)[0]
    assert torch.equal(out, reference)
    assert torch.allclose(grad_fast, grad_reference, atol=1e-6)

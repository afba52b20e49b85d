"""Pre-ReLU taps (`forward_intermediates_pre_relu`, `pre_relu_batchnorms`) of RepDistiller's CIFAR
models (WRN, VGG, MobileNetV2, ShuffleNetV1/V2, ResNet-50) and of timm's ImageNet ResNets and
MobileNetV1: the intermediates are forward_intermediates' own, each tap is the output of the BN
pre_relu_batchnorms names (plus the residual where a sum follows it), and ab, ofd and reviewkd now
list and compute on the field's CIFAR-100 and ImageNet pairs."""

import copy

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d

from harness.spec.cells import Cell
from harness.errors import UserError
from harness.models import build_model, extract_features
from harness.models.shufflenet import channel_shuffle
from harness.models.timm_pre_relu import with_pre_relu_taps
from harness.running.probe import cell_mismatch, shape_probe
from harness.spec.spec import load_spec
from methods import build_objective

SPEC = load_spec()
# model -> (dataset, image size: the ImageNet models at 64 px to stay fast, their maps then 32..2 px)
MODELS = {"wrn40_2": ("cifar100", 32), "wrn16_2": ("cifar100", 32), "wrn40_1": ("cifar100", 32),
          "vgg13": ("cifar100", 32), "vgg8": ("cifar100", 32), "mobilenetv2": ("cifar100", 32),
          "shufflenetv1": ("cifar100", 32), "shufflenetv2": ("cifar100", 32), "resnet50_cifar": ("cifar100", 32),
          "resnet18": ("imagenet", 64), "resnet34": ("imagenet", 64), "resnet50": ("imagenet", 64),
          "mobilenetv1": ("imagenet", 64)}
NO_BATCHNORMS = {"shufflenetv2"}  # half its taps' channels pass through unnormalised (RepDistiller raises too)


def model_and_batch(name, n=2, seed=0):
    dataset, size = MODELS[name]
    torch.manual_seed(seed)
    model = build_model(SPEC.models[name], SPEC.datasets[dataset]).eval()
    with torch.no_grad():  # BNs as trained ones are (timm starts each last one at gamma 0), so that taps differ
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(0, 0.2)
                bn.running_mean.normal_(0, 0.2), bn.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def every_index(model):
    return list(range(len(model.feature_info)))


def last_block(model, name, i):
    """For intermediate i >= 1: the first conv of the block whose output (or sum) it is, which reads the block's
    input, and what the block's shortcut adds to the BN's output before the ReLU (None: nothing, the tap is
    the BN's output)."""
    if name in ("resnet18", "resnet34", "resnet50"):
        block = getattr(model, f"layer{i}")[-1]
        return block.conv1, lambda x: x if block.downsample is None else block.downsample(x)
    if name in ("resnet50_cifar", "shufflenetv1"):
        block = model.stages[i - 1][-1]
        return block.conv1, block.shortcut
    if name == "mobilenetv2":
        block = model.stages[i - 1][-1][-1]
        return block.conv[0], (lambda x: x) if block.residual else None
    return None, None


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_intermediates_beside_the_taps_are_forward_intermediates_own(name):
    model, x = model_and_batch(name)
    with torch.no_grad():
        final, plain = model.forward_intermediates(x, indices=every_index(model))
        final_pre, post, pre = model.forward_intermediates_pre_relu(x, indices=every_index(model))
        _, some_post, some_pre = model.forward_intermediates_pre_relu(x, indices=[1, 3])
    assert torch.equal(final, final_pre)
    assert len(post) == len(plain) == len(pre) == len(model.feature_info)
    for a, b, tap in zip(post, plain, pre):
        assert torch.equal(a, b) and tap.shape == a.shape
    assert all(torch.equal(a, post[i]) and torch.equal(b, pre[i]) for a, b, i in zip(some_post, some_pre, [1, 3]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_tap_is_the_output_of_the_batch_norm_named_for_it(name):
    model, x = model_and_batch(name)
    if name in NO_BATCHNORMS:
        assert not hasattr(model, "pre_relu_batchnorms")
        return
    batchnorms = model.pre_relu_batchnorms()
    assert len(batchnorms) == len(model.feature_info)
    assert all(isinstance(bn, torch.nn.BatchNorm2d) for bn in batchnorms)
    assert [bn.num_features for bn in batchnorms] == [info["num_chs"] for info in model.feature_info]
    seen, handles = {}, []
    for i, bn in enumerate(batchnorms):
        def record(module, args, out, i=i):
            seen.setdefault(i, (args[0].clone(), out.clone()))  # the first call: WRN's head runs it once more
        def record_act(module, args, i=i):  # timm's BatchNormAct2d: its BN's output is its activation's input
            seen[i] = (None, args[0].clone())
        handles.append(bn.act.register_forward_pre_hook(record_act) if isinstance(bn, BatchNormAct2d)
                       else bn.register_forward_hook(record))
    inputs = {}
    for i in range(1, len(batchnorms)):
        conv, _ = last_block(model, name, i)
        if conv is not None:
            handles.append(conv.register_forward_pre_hook(lambda m, args, i=i: inputs.setdefault(i, args[0].clone())))
    with torch.no_grad():  # extract_features: the pre-ReLU pass and the head, which runs WRN's last BN
        features = extract_features(model, x, frozenset({"logits", "stages", "stages_pre_relu", "stages_pre_relu_bn"}),
                                    every_index(model))
    for handle in handles:
        handle.remove()
    assert sorted(seen) == every_index(model)
    for i, (post, pre, bn_feature) in enumerate(zip(features["stages"], features["stages_pre_relu"],
                                                    features["stages_pre_relu_bn"])):
        bn_input, bn_output = seen[i]
        _, shortcut = last_block(model, name, i) if i else (None, None)
        expected = bn_output if shortcut is None else bn_output + shortcut(inputs[i])
        assert torch.allclose(pre, expected, atol=1e-6), (name, i)
        assert torch.equal(bn_feature[0], torch.stack([batchnorms[i].weight, batchnorms[i].bias]))
        if name.startswith("wrn"):  # pre-activation: the BN that follows the raw sum and feeds the next ReLU
            assert torch.equal(bn_input, post) and torch.equal(pre, bn_output)
        elif name == "mobilenetv2" and i > 0:  # a linear bottleneck: no ReLU follows, the tap is the output
            assert torch.equal(pre, post)
        elif name == "mobilenetv1":  # timm's MobileNetV1 closes each block with ReLU6
            assert torch.equal(torch.clamp(pre, 0, 6), post)
        else:
            assert torch.equal(torch.relu(pre), post)
        assert (pre < 0).any()


def test_shufflenetv2_taps_are_the_last_branch_before_its_relu_with_the_kept_half():
    model, x = model_and_batch("shufflenetv2")
    branch_bns, inputs = {}, {}
    handles = []
    for i, stage in enumerate(model.stages, start=1):
        handles.append(stage[-1].bn3.register_forward_hook(lambda m, a, out, i=i: branch_bns.setdefault(i, out.clone())))
        handles.append(stage[-2].register_forward_hook(lambda m, a, out, i=i: inputs.setdefault(i, out.clone())))
    with torch.no_grad():
        _, post, pre = model.forward_intermediates_pre_relu(x, indices=[0, 1, 2, 3])
    for handle in handles:
        handle.remove()
    assert torch.equal(torch.relu(pre[0]), post[0])
    for i in (1, 2, 3):
        kept, branch = channel_shuffle(pre[i], pre[i].shape[1] // 2).chunk(2, dim=1)  # undo the 2-group shuffle
        assert torch.equal(kept, inputs[i].chunk(2, dim=1)[0]) and torch.equal(branch, branch_bns[i])
        assert torch.equal(torch.relu(pre[i]), post[i]) and (branch < 0).any()


@pytest.mark.parametrize("name", ["wrn16_2", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2", "resnet50_cifar",
                                  "resnet18", "mobilenetv1"])  # one of each class
def test_the_taps_in_training_mode_leave_the_batch_norm_statistics_of_a_plain_forward(name):
    model, x = model_and_batch(name)
    twin = copy.deepcopy(model)
    model.train(), twin.train()
    want = frozenset({"logits", "stages"})
    plain = extract_features(model, x, want, every_index(model))
    tapped = extract_features(twin, x, want | {"stages_pre_relu"}, every_index(model))
    assert torch.equal(plain["logits"], tapped["logits"])
    for key, value in model.state_dict().items():
        assert torch.equal(value, twin.state_dict()[key]), key  # each BN ran once: running stats and counts
    tapped["stages_pre_relu"][1].pow(2).mean().backward()  # the taps are differentiable (a shallow one: quick)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in twin.parameters())


def test_timm_models_keep_their_names_parameters_and_forward():
    for name in ("resnet18", "mobilenetv1"):
        model, x = model_and_batch(name)
        plain = timm.create_model(SPEC.models[name].timm, num_classes=1000).eval()
        assert type(model).__bases__[-1] is type(plain) and model.state_dict().keys() == plain.state_dict().keys()
        model.load_state_dict(plain.state_dict())
        with torch.no_grad():
            assert torch.equal(model(x), plain(x))
    for other in ("seresnet18", "resnetv2_50", "mobilenetv2_050"):  # attention, pre-activation, residuals: left alone
        assert not hasattr(with_pre_relu_taps(timm.create_model(other)), "forward_intermediates_pre_relu")


# ---- the pairs: listed cells, finite losses ------------------------------------------------------------
SLOW = pytest.mark.slow  # ResNet-50s and 224-px ImageNet pairs: 10-20 s each on two shared cores
PAIRS = [("cifar100", "wrn40_2-wrn16_2"), ("cifar100", "wrn40_2-wrn40_1"), ("cifar100", "vgg13-vgg8"),
         ("cifar100", "resnet32x4-shufflenetv1"), ("cifar100", "resnet32x4-shufflenetv2"),
         pytest.param("cifar100", "resnet50_cifar-mobilenetv2", marks=SLOW), ("cifar100", "vgg13-mobilenetv2"),
         ("cifar100", "wrn40_2-shufflenetv1"), pytest.param("cifar100", "resnet50_cifar-vgg8", marks=SLOW),
         pytest.param("imagenet", "resnet34-resnet18", marks=SLOW),
         pytest.param("imagenet", "resnet50-mobilenetv1", marks=SLOW)]


@pytest.mark.parametrize("dataset,pair", PAIRS)
def test_ab_ofd_reviewkd_are_listed_and_give_finite_losses(dataset, pair):
    probes = {}
    for method in ("ab", "ofd", "reviewkd"):
        assert cell_mismatch(SPEC, Cell(dataset, pair, method), probes) is None, (pair, method)
    probe = probes[(dataset, pair)]
    data, spec_pair = SPEC.datasets[dataset], SPEC.pairs[pair]
    torch.manual_seed(0)
    teacher = build_model(SPEC.models[spec_pair.teacher], data).eval()
    student = build_model(SPEC.models[spec_pair.student], data).train()
    x = torch.randn(2, data.in_chans, data.img_size, data.img_size)
    y = torch.randint(0, data.num_classes, (2,))
    objectives = {method: build_objective(SPEC, method, {}, probe) for method in ("ab", "ofd", "reviewkd")}
    with torch.no_grad():  # one pass per model, with what all three read
        t = extract_features(teacher, x, frozenset().union(*(o.teacher_features for o in objectives.values())),
                             spec_pair.stages.teacher)
    s = extract_features(student, x, frozenset().union(*(o.student_features for o in objectives.values())),
                         spec_pair.stages.student)
    for method, objective in objectives.items():
        for phase, _ in objective.phases(10):
            losses = objective(s, [t], y, phase)
            assert losses and all(torch.isfinite(v) for v in losses.values()), (pair, method, phase, losses)
    assert torch.isfinite(objectives["ofd"](s, [t], y)["ofd"]) and objectives["ofd"](s, [t], y)["ofd"] > 0


def test_ofd_refuses_a_teacher_without_pre_relu_batch_norms():
    probe = shape_probe(SPEC, "cifar100", "resnet32x4-shufflenetv2")
    swapped = type(probe)(probe.student, probe.teacher, probe.hint, probe.batch_size)  # ShuffleNetV2 teaching
    assert "stages_pre_relu" in swapped.teacher and "stages_pre_relu_bn" not in swapped.teacher
    with pytest.raises(UserError, match="ofd reads its margins from the BN"):
        build_objective(SPEC, "ofd", {}, swapped)
    build_objective(SPEC, "ab", {}, swapped)  # ab and reviewkd need no BN
    build_objective(SPEC, "reviewkd", {}, swapped)


@pytest.mark.slow
def test_an_ofd_smoke_cell_on_wrn(home, cifar_root):
    from harness.cli import main

    assert main(["run", "--cell", "cifar100/wrn40_2-wrn16_2/ofd", "--smoke", "--data-root", str(cifar_root)]) == 0
